package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// drainingControl's Shutdown ends every console session at once, as the
// app's drain does when no client is left (Shutdown: closeListeners,
// closeAdminsLocked): the drain winning the race with the session that
// asked for it.
type drainingControl struct{ s *Server }

func (c *drainingControl) Reload() error { return nil }

func (c *drainingControl) Shutdown() {
	c.s.mu.Lock()
	c.s.closeAdminsLocked()
	c.s.mu.Unlock()
}

func (c *drainingControl) ShowConfig() [][2]string { return nil }

// TestConsoleShutdownAnswersFirst: the console session that runs SHUTDOWN
// gets its answer (CommandComplete SHUTDOWN, ReadyForQuery) before the
// drain ends it, however soon the drain does: psql -c SHUTDOWN exits 0.
// Before, the drain began before the reply was written, and the client
// could get FATAL 57P01 instead (TestAdminReloadShutdown failed so, once
// in the e2e suite).
func TestConsoleShutdownAnswersFirst(t *testing.T) {
	ctl := &drainingControl{}
	e := startFake(t, fakeOpts{config: func(c *Config) {
		c.Admin = &AdminConfig{Database: "pgsidecar", Users: map[string]string{"u": ""}, Control: ctl}
	}}, beScript{})
	ctl.s = e.srv
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	con, err := pgconn.Connect(ctx, "postgres://u@"+e.addr+"/pgsidecar?sslmode=disable")
	if err != nil {
		t.Fatalf("console login: %v", err)
	}
	defer con.Close(context.Background())
	res, err := con.Exec(ctx, "SHUTDOWN").ReadAll()
	if err != nil {
		t.Fatalf("SHUTDOWN: %v; want its answer before the drain ends the session", err)
	}
	if len(res) != 1 || res[0].CommandTag.String() != "SHUTDOWN" {
		t.Fatalf("SHUTDOWN answered %+v", res)
	}
}
