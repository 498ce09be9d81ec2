package e2e

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Session state in session mode works as directly. Transaction mode's
// handling of it is tested in tx_sessionstate_test.go.

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
