package proxy

import "testing"

// TestConfigCheckNormalizesNames: New and Reload take Mode, SessionState
// and AuthMethod as their Parse functions do (any case, spaces around) and
// keep them as the constants the relay compares with. Before, "TRUST"
// passed the check and then authenticate's default case refused every
// login.
func TestConfigCheckNormalizesNames(t *testing.T) {
	e := startFake(t, fakeOpts{mode: " Transaction", config: func(c *Config) {
		c.AuthMethod, c.SessionState = "TRUST", "PIN"
	}}, beScript{
		queryResult("SELECT 'in'", "SELECT 1", 'I', "in"),
	})
	cfg := e.srv.live.Load()
	if e.srv.cfg.Mode != ModeTransaction || cfg.SessionState != SessionStatePin || cfg.AuthMethod != AuthTrust {
		t.Fatalf("after New: Mode %q, SessionState %q, AuthMethod %q; want %q, %q, %q",
			e.srv.cfg.Mode, cfg.SessionState, cfg.AuthMethod, ModeTransaction, SessionStatePin, AuthTrust)
	}
	mustExec(t, e.connect(t, nil), "SELECT 'in'", "in")

	next := *cfg
	next.AuthMethod = " Trust "
	if err := e.srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	if got := e.srv.live.Load().AuthMethod; got != AuthTrust {
		t.Fatalf("after Reload: AuthMethod %q, want %q", got, AuthTrust)
	}
	next.AuthMethod = "kerberos"
	if err := e.srv.Reload(next); err == nil {
		t.Fatal("Reload accepted AuthMethod kerberos")
	}
}
