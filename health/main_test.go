package health

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind (a
// server that was not shut down, a keep-alive connection left open).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
