package proxy

import "testing"

// Every mode configuration accepts has a policy, and the two differ in
// what they are for: transaction mode gives backends back and tracks what
// the client would otherwise lose; session mode keeps one backend.
func TestEveryModeHasAPolicy(t *testing.T) {
	for _, m := range Modes {
		if policies[m] == nil {
			t.Errorf("mode %q has no policy", m)
		}
	}
	tx, sess := ModeTransaction.policy(), ModeSession.policy()
	if !tx.releaseAtTransactionEnd || !tx.rewriteStatements || !tx.carrySessionState || tx.readerPerHold || tx.leaveReset != "DISCARD ALL" {
		t.Errorf("transaction mode: %+v", *tx)
	}
	if sess.releaseAtTransactionEnd || sess.rewriteStatements || sess.carrySessionState || !sess.readerPerHold || !sess.backendAtLogin ||
		sess.leaveReset != "RESET ALL" || !sess.leaveResetQuery {
		t.Errorf("session mode: %+v", *sess)
	}
	defer func() {
		if recover() == nil {
			t.Error("an unknown mode has a policy")
		}
	}()
	Mode("statement").policy()
}
