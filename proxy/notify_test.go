package proxy

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// TestNotifyHubLifecycle: the shared listener's goroutine starts with the
// first LISTEN, delivers a NOTIFY (channel, payload, the sender's real PID)
// to the listening client, ends by itself when nobody has listened for
// hubLinger (shortened here), and ends
// with stopHubs otherwise; TestMain's goleak check proves neither is left.
func TestNotifyHubLifecycle(t *testing.T) {
	cl := testpg.Start(t)
	defer func(d time.Duration) { hubLinger = d }(hubLinger)
	hubLinger = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(cl.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: Config{Mode: ModeTransaction}, log: slog.Default(), hubs: map[string]*notifyHub{}}
	s.hubCtx, s.hubCancel = context.WithCancel(context.Background())
	db := &Database{Name: "postgres", Listen: cfg}
	h := s.hubFor(db)
	if h == nil {
		t.Fatal("no hub in transaction mode with a Listen config")
	}
	client, peer := net.Pipe()
	defer client.Close()
	defer peer.Close()
	c := &clientConn{srv: s, conn: client, log: slog.Default()}
	c.ctx, c.cancel = context.WithCancel(ctx)
	defer c.cancel()

	h.listen(c, "hub chan")
	sender, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(context.Background())
	if _, err := sender.Exec(ctx, `NOTIFY "hub chan", 'hello'`).ReadAll(); err != nil {
		t.Fatal(err)
	}
	var note []byte
	for deadline := time.Now().Add(5 * time.Second); note == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		c.mu.Lock()
		if len(c.listen.notes) > 0 {
			note = c.listen.notes[0]
		}
		c.mu.Unlock()
	}
	want := appendNotification(nil, sender.PID(), "hub chan", "hello")
	if string(note) != string(want) {
		t.Fatalf("queued %q, want %q", note, want)
	}
	if pid := binary.BigEndian.Uint32(note[5:]); pid != sender.PID() {
		t.Errorf("sender PID %d, want %d", pid, sender.PID())
	}

	// Nobody listens: the goroutine ends by itself.
	h.unlisten(c, "", true)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		h.mu.Lock()
		running := h.running
		h.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the listener goroutine still runs with no channel")
		}
	}
	// Listening again, then the server stops: stopHubs ends it.
	h.listen(c, "hub chan")
	s.stopHubs()
	h.mu.Lock()
	running := h.running
	h.mu.Unlock()
	if running {
		t.Error("listener still running after stopHubs")
	}
}
