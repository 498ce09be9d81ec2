package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Helpers shared by the issue-3 tests (tx_*_test.go, drivers_*_test.go).
// They are prefixed with tx so they cannot collide with the harness's own.

// txAppUser, txAppPassword and txAppDB are the role and database the shared
// cluster creates for applications.
const (
	txAppUser     = "app"
	txAppPassword = "app"
	txAppDB       = "app"
)

// txStartProxy starts a proxy in mode ("transaction" or "session") whose
// pool has at most maxSize backends. min_size is kept at or below maxSize so
// the configuration stays valid for a pool of one.
func txStartProxy(t *testing.T, mode string, maxSize int, opts ...ProxyOption) *Proxy {
	t.Helper()
	all := []ProxyOption{
		WithEnv("PGSIDECAR_POOL__MODE", mode),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", strconv.Itoa(maxSize)),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", strconv.Itoa(min(maxSize, 2))),
	}
	return StartProxy(t, append(all, opts...)...)
}

// txProxyURL is the application's URL through p.
func txProxyURL(p *Proxy) string { return p.URL(txAppUser, txAppPassword, txAppDB) }

// txDirectURL is the application's URL straight to the cluster, the
// reference every proxy result is compared with.
func txDirectURL() string { return pg.URL(txAppUser, txAppPassword, txAppDB) }

// txConnect opens a pgconn connection to url with extra startup parameters
// and closes it when the test ends.
func txConnect(ctx context.Context, t *testing.T, url string, params map[string]string) *pgconn.PgConn {
	t.Helper()
	return txConnectConfig(ctx, t, url, func(cfg *pgconn.Config) {
		for k, v := range params {
			cfg.RuntimeParams[k] = v
		}
	})
}

// txConnectConfig opens a pgconn connection to url after configure has
// adjusted its config (notice handlers, parameters), and closes it when the
// test ends.
func txConnectConfig(ctx context.Context, t *testing.T, url string, configure func(*pgconn.Config)) *pgconn.PgConn {
	t.Helper()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatalf("parse %s: %v", redact(url), err)
	}
	cfg.ConnectTimeout = 10 * time.Second
	configure(cfg)
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect %s: %v", redact(url), err)
	}
	t.Cleanup(func() { txClosePgconn(conn) })
	return conn
}

// txConnectPgx opens a pgx connection to url in the given exec mode and
// closes it when the test ends.
func txConnectPgx(ctx context.Context, t testing.TB, url string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	conn, err := txDialPgx(ctx, url, mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { txClosePgx(conn) })
	return conn
}

// txDialPgx opens a pgx connection without registering a cleanup, for
// goroutines that own their connection.
func txDialPgx(ctx context.Context, url string, mode pgx.QueryExecMode) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", redact(url), err)
	}
	cfg.ConnectTimeout = 10 * time.Second
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect %s (%v): %w", redact(url), mode, err)
	}
	return conn, nil
}

func txClosePgconn(conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

func txClosePgx(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// txSimple runs sql with the simple query protocol and returns the first
// column of every row of the last result, as the text the server sent.
func txSimple(ctx context.Context, conn *pgconn.PgConn, sql string) ([]string, error) {
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) == 0 {
		return nil, nil
	}
	last := results[len(results)-1]
	if last.Err != nil {
		return nil, last.Err
	}
	out := make([]string, 0, len(last.Rows))
	for _, row := range last.Rows {
		if len(row) == 0 || row[0] == nil {
			out = append(out, "<NULL>")
			continue
		}
		out = append(out, string(row[0]))
	}
	return out, nil
}

// txOne is txSimple for a query that returns exactly one value.
func txOne(ctx context.Context, conn *pgconn.PgConn, sql string) (string, error) {
	rows, err := txSimple(ctx, conn, sql)
	if err != nil {
		return "", err
	}
	if len(rows) != 1 {
		return "", fmt.Errorf("%s: want 1 row, got %d: %q", sql, len(rows), rows)
	}
	return rows[0], nil
}

// txMustOne is txOne that fails the test on error.
func txMustOne(ctx context.Context, t testing.TB, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	v, err := txOne(ctx, conn, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// txMustExec runs sql (simple protocol, may hold several statements) and
// fails the test on error.
func txMustExec(ctx context.Context, t testing.TB, conn *pgconn.PgConn, sql string) {
	t.Helper()
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// txErrors collects failures from many goroutines and reports the first
// few, so a broken proxy gives a readable failure instead of thousands of
// lines.
type txErrors struct {
	ch chan string
}

func newTxErrors() *txErrors { return &txErrors{ch: make(chan string, 64)} }

// add records a failure; past the buffer only the count matters.
func (e *txErrors) add(format string, args ...any) {
	select {
	case e.ch <- fmt.Sprintf(format, args...):
	default:
	}
}

// report fails t with what was collected. Call it after every writer is done.
func (e *txErrors) report(t testing.TB, what string) {
	t.Helper()
	close(e.ch)
	var msgs []string
	for m := range e.ch {
		msgs = append(msgs, m)
	}
	if len(msgs) > 0 {
		t.Errorf("%s: %d failure(s) (at most 64 kept):\n%s", what, len(msgs), strings.Join(msgs, "\n"))
	}
}
