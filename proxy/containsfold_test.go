package proxy

import (
	"math/rand"
	"strings"
	"testing"
)

// TestContainsFold compares containsFold with strings.Contains on lowered
// text, over random texts made of the letters that matter.
func TestContainsFold(t *testing.T) {
	naive := func(b []byte, lower string) bool {
		return strings.Contains(strings.ToLower(string(b)), lower)
	}
	r := rand.New(rand.NewSource(1))
	alphabet := "lLiIsStTeEnN _x"
	for range 20000 {
		b := make([]byte, r.Intn(24))
		for i := range b {
			b[i] = alphabet[r.Intn(len(alphabet))]
		}
		for _, w := range []string{"listen", "l", "set_config", "ten", ""} {
			if got, want := containsFold(b, w), naive(b, w); got != want {
				t.Fatalf("containsFold(%q, %q) = %v, want %v", b, w, got, want)
			}
		}
	}
}

func BenchmarkContainsFold(b *testing.B) {
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 12345 -- no keyword here at all")
	for b.Loop() {
		if containsFold(q, "listen") {
			b.Fatal("found")
		}
	}
}
