package e2e

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// What cannot work in transaction mode (the session state would stay on a
// backend other clients get next) must be reported: a NOTICE to the client
// and a log line naming it. Session mode keeps all of it working.

// txNoticeClient is a proxy client that records the notices it receives.
type txNoticeClient struct {
	conn *pgconn.PgConn
	app  string

	mu            sync.Mutex
	notices       []string
	notifications []string // "channel: payload"
}

func txNewNoticeClient(ctx context.Context, t *testing.T, url, app string) *txNoticeClient {
	c := &txNoticeClient{app: app}
	c.conn = txConnectConfig(ctx, t, url, func(cfg *pgconn.Config) {
		cfg.RuntimeParams["application_name"] = app
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.notices = append(c.notices, n.Severity+" "+n.Code+": "+n.Message+" (hint: "+n.Hint+")")
		}
		cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.notifications = append(c.notifications, n.Channel+": "+n.Payload)
		}
	})
	return c
}

// take returns and forgets the notices received so far.
func (c *txNoticeClient) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.notices
	c.notices = nil
	return n
}

// txHazard is one session-level feature and how to undo it.
type txHazard struct {
	name    string
	keyword string   // the notice and the log line must mention it (any case)
	do      []string // each a separate Query message
	undo    []string
}

var txHazards = []txHazard{
	{name: "listen", keyword: "LISTEN",
		do:   []string{"LISTEN tx_hazard_channel"},
		undo: []string{"UNLISTEN tx_hazard_channel"}},
	{name: "advisory-lock", keyword: "advisory",
		do:   []string{"SELECT pg_advisory_lock(424242)"},
		undo: []string{"SELECT pg_advisory_unlock(424242)"}},
	{name: "with-hold-cursor", keyword: "HOLD",
		do:   []string{"BEGIN", "DECLARE tx_hazard_cursor CURSOR WITH HOLD FOR SELECT generate_series(1, 3)", "COMMIT"},
		undo: []string{"CLOSE tx_hazard_cursor"}},
	{name: "temp-table", keyword: "temp",
		do:   []string{"CREATE TEMP TABLE tx_hazard_temp (x int)"},
		undo: []string{"DROP TABLE tx_hazard_temp"}},
}

// TestTxHazardNotices: in transaction mode, LISTEN, a session advisory
// lock, a WITH HOLD cursor and CREATE TEMP TABLE outside a transaction each
// give the client a NOTICE and the proxy a log line naming the client,
// while transaction-scoped equivalents give neither. The pool has one
// backend so the undo statements reach the backend that holds the state.
func TestTxHazardNotices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// info: the line must be a real report, not a debug trace of every query.
	p := txStartProxy(t, "transaction", 1, WithEnv("PGSIDECAR_LOG__LEVEL", "info"))

	safe := txNewNoticeClient(ctx, t, txProxyURL(p), "tx-hazard-safe")
	for _, sql := range []string{
		"SELECT 1",
		"BEGIN", "SELECT pg_advisory_xact_lock(424243)", "COMMIT",
		"BEGIN", "DECLARE tx_safe_cursor CURSOR FOR SELECT 1", "FETCH ALL FROM tx_safe_cursor", "COMMIT",
	} {
		txMustExec(ctx, t, safe.conn, sql)
	}
	if n := safe.take(); len(n) > 0 {
		t.Errorf("transaction-scoped statements got notices: %q", n)
	}

	for _, h := range txHazards {
		t.Run(h.name, func(t *testing.T) {
			app := "tx-hazard-" + h.name
			c := txNewNoticeClient(ctx, t, txProxyURL(p), app)
			local := c.conn.Conn().LocalAddr().String()
			for _, sql := range h.do {
				txMustExec(ctx, t, c.conn, sql)
			}
			notices := c.take()
			found := false
			for _, n := range notices {
				if strings.Contains(strings.ToLower(n), strings.ToLower(h.keyword)) {
					found = true
				}
			}
			if !found {
				t.Errorf("%s in transaction mode: want a NOTICE mentioning %q, got %q", h.do, h.keyword, notices)
			}
			for _, sql := range h.undo {
				txMustExec(ctx, t, c.conn, sql)
			}
			// The log line comes from the proxy's relay; give it a moment.
			var line string
			deadline := time.Now().Add(2 * time.Second)
			for line == "" && time.Now().Before(deadline) {
				line = txFindLogLine(p, h.keyword, app, local)
				if line == "" {
					time.Sleep(50 * time.Millisecond)
				}
			}
			if line == "" {
				t.Errorf("no proxy log line mentions %q and the client (application_name %s or address %s)", h.keyword, app, local)
			} else {
				t.Logf("notice %q; log %s", notices, line)
			}
		})
	}
	if v := txMustOne(ctx, t, safe.conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"); v != "0" {
		t.Errorf("%s advisory locks left after the undo statements", v)
	}
}

// txFindLogLine returns the first proxy log line that mentions keyword (any
// case) and names the client by application_name or address.
func txFindLogLine(p *Proxy, keyword, app, addr string) string {
	for _, line := range strings.Split(p.Logs.String(), "\n") {
		if !strings.Contains(strings.ToLower(line), strings.ToLower(keyword)) {
			continue
		}
		if strings.Contains(line, app) || strings.Contains(line, addr) {
			return line
		}
	}
	return ""
}

// TestTxSessionModeListenTemp: in session mode LISTEN/NOTIFY, temporary
// tables across transactions, session advisory locks and WITH HOLD cursors
// work as they do directly, with no hazard notice.
func TestTxSessionModeListenTemp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "session", 2)
	listener := txNewNoticeClient(ctx, t, txProxyURL(p), "tx-session-listener")
	notifier := txConnect(ctx, t, txProxyURL(p), nil)

	txMustExec(ctx, t, listener.conn, "LISTEN tx_session_channel")
	txMustExec(ctx, t, notifier, "NOTIFY tx_session_channel, 'hello from the other client'")
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	err := listener.conn.WaitForNotification(wctx)
	wcancel()
	if err != nil {
		t.Fatalf("LISTEN in session mode: no notification within 5s: %v", err)
	}
	listener.mu.Lock()
	got := listener.notifications
	listener.mu.Unlock()
	if want := "tx_session_channel: hello from the other client"; len(got) != 1 || got[0] != want {
		t.Errorf("LISTEN in session mode: notifications %q, want [%q]", got, want)
	}

	// Temp table across transactions.
	txMustExec(ctx, t, listener.conn, "CREATE TEMP TABLE tx_session_temp (x int)")
	txMustExec(ctx, t, listener.conn, "INSERT INTO tx_session_temp VALUES (1), (2), (3)")
	if v := txMustOne(ctx, t, listener.conn, "SELECT sum(x) FROM tx_session_temp"); v != "6" {
		t.Errorf("temp table in session mode: sum %q, want 6", v)
	}
	// Session advisory lock and WITH HOLD cursor.
	txMustExec(ctx, t, listener.conn, "SELECT pg_advisory_lock(434343)")
	if v := txMustOne(ctx, t, listener.conn, "SELECT pg_advisory_unlock(434343)"); v != "t" {
		t.Errorf("session advisory unlock in session mode: %q, want t", v)
	}
	txMustExec(ctx, t, listener.conn, "BEGIN")
	txMustExec(ctx, t, listener.conn, "DECLARE tx_session_cursor CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
	txMustExec(ctx, t, listener.conn, "COMMIT")
	if v := txMustOne(ctx, t, listener.conn, "FETCH 1 FROM tx_session_cursor"); v != "1" {
		t.Errorf("WITH HOLD cursor in session mode: %q, want 1", v)
	}
	if n := listener.take(); len(n) > 0 {
		t.Errorf("session mode gave hazard notices: %q", n)
	}
}
