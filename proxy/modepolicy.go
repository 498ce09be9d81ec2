// modePolicy: what each pool mode decides, one row per Mode.

package proxy

// modePolicy is what a pool mode decides, in one place: every question the
// relay asks about the mode is a field here, not a comparison with a Mode
// constant at the place of use. A new mode is a new row in policies.
type modePolicy struct {
	// releaseAtTransactionEnd: the backend goes back to the pool when the
	// client's transaction is over and nothing is in flight
	// (transactionOverLocked), so the client goroutine may relay an
	// exchange inline and give the backend back itself. Otherwise the
	// backend is the client's until it leaves.
	releaseAtTransactionEnd bool
	// rewriteStatements: prepared statements are the client's, named and
	// re-prepared per backend by the proxy (statements.go), so Parse and Bind
	// are read whole, and Parse/Close/Sync alone may be answered without a
	// backend (clientStatements.answerLocally).
	rewriteStatements bool
	// carrySessionState: session state and settings do not survive the
	// backend's release, so the relay tracks them and pins the client to
	// its backend while state exists (sessionstate.go), and LISTEN goes
	// through the shared listener (notify.go). Without it the backend
	// carries the session as it is.
	carrySessionState bool
	// backendAtLogin: the client takes its backend at login when one is
	// free, and takes its pid (pg_backend_pid, cancel) - bindSession.
	backendAtLogin bool
	// readerPerHold: a backend reader reads the backend for as long as it
	// is held, so notifications and notices reach an idle client at once;
	// the pool's leak detector is told when a transaction is open.
	readerPerHold bool
	// leaveReset is what cleans a backend whose client left with state on
	// it (an open transaction rolled back, or session state): DISCARD ALL
	// also drops prepared statements, temp tables, LISTEN, advisory locks,
	// cursors; RESET ALL only settings. leaveResetQuery: the configured
	// reset_query runs too.
	leaveReset      string
	leaveResetQuery bool
}

// policies is the behaviour of each Mode.
var policies = map[Mode]*modePolicy{
	ModeTransaction: {
		releaseAtTransactionEnd: true,
		rewriteStatements:       true,
		carrySessionState:       true,
		leaveReset:              "DISCARD ALL",
	},
	ModeSession: {
		backendAtLogin:  true,
		readerPerHold:   true,
		leaveReset:      "RESET ALL",
		leaveResetQuery: true,
	},
}

// policy returns m's policy. New accepts only the modes listed in Modes,
// each of which has one (TestEveryModeHasAPolicy).
func (m Mode) policy() *modePolicy {
	p := policies[m]
	if p == nil {
		panic("proxy: no policy for pool mode " + string(m))
	}
	return p
}
