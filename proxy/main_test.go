package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: every
// goroutine the proxy starts has an owner and an end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
