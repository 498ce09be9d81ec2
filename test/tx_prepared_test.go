package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Named prepared statements at the protocol level, made deterministic: the
// tests pin which backend a client lands on by holding the others in open
// transactions.

// txHold opens a transaction on a new proxy client, so it keeps one backend
// until release, and returns that backend's pid.
func txHold(ctx context.Context, t *testing.T, url string) (pid string, release func()) {
	t.Helper()
	c := txConnect(ctx, t, url, nil)
	txMustExec(ctx, t, c, "BEGIN")
	pid = txMustOne(ctx, t, c, "SELECT pg_backend_pid()")
	return pid, func() { txMustExec(ctx, t, c, "COMMIT") }
}

// TestTxPipelineErrorBeforeFirstUse: a client prepares a statement on one
// backend and then, on the other backend, sends one pipeline whose first
// segment fails before the statement's first use there:
//
//	[failing query, Bind stmt] Sync  [Bind stmt, SELECT pg_backend_pid()] Sync
//
// The server skips the rest of a failed segment, including a Parse the
// proxy may have put in front of the Bind, so the second segment must not
// rely on it.
func TestTxPipelineErrorBeforeFirstUse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	url := txProxyURL(p)
	a := txConnect(ctx, t, url, nil)

	// Backend 1 is held by b, so a prepares on backend 2.
	pid1, releaseB := txHold(ctx, t, url)
	if _, err := a.Prepare(ctx, "tx_pipe_stmt", "SELECT $1::int4 * 7", nil); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	// Backend 2 is now held by c and backend 1 is free: a's pipeline can
	// only run on backend 1, which has never seen the statement.
	pid2, releaseC := txHold(ctx, t, url)
	defer releaseC()
	releaseB()
	if pid1 == pid2 {
		t.Fatalf("two open transactions share backend %s", pid1)
	}

	pipe := a.StartPipeline(ctx)
	param := [][]byte{[]byte("6")}
	pipe.SendQueryParams("SELECT 10 / $1::int4", [][]byte{[]byte("0")}, nil, nil, nil)
	pipe.SendQueryPrepared("tx_pipe_stmt", param, nil, nil)
	pipe.SendPipelineSync()
	pipe.SendQueryPrepared("tx_pipe_stmt", param, nil, nil)
	pipe.SendQueryParams("SELECT pg_backend_pid()", nil, nil, nil, nil)
	pipe.SendPipelineSync()
	if err := pipe.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	defer pipe.Close()

	if _, err := pipe.GetResults(); sqlState(err) != "22012" {
		t.Fatalf("segment 1: want division_by_zero (22012), got %v", err)
	}
	if res, err := pipe.GetResults(); err != nil {
		t.Fatalf("end of segment 1: %v", err)
	} else if _, ok := res.(*pgconn.PipelineSync); !ok {
		t.Fatalf("end of segment 1: got %T, want the Sync", res)
	}
	for _, want := range []string{"42", pid1} {
		res, err := pipe.GetResults()
		if err != nil {
			t.Fatalf("segment 2 (want %s): %v", want, err)
		}
		rr, ok := res.(*pgconn.ResultReader)
		if !ok {
			t.Fatalf("segment 2 (want %s): got %T", want, res)
		}
		r := rr.Read()
		if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != want {
			t.Fatalf("segment 2: got %q (err %v), want %s", r.Rows, r.Err, want)
		}
	}
	if res, err := pipe.GetResults(); err != nil {
		t.Fatalf("end of segment 2: %v", err)
	} else if _, ok := res.(*pgconn.PipelineSync); !ok {
		t.Fatalf("end of segment 2: got %T, want the Sync", res)
	}
}

// TestTxDeallocateKeepsClientState: a client's statement names follow
// PREPARE-by-protocol, protocol Close, DEALLOCATE, DEALLOCATE ALL and
// DISCARD ALL exactly as they do directly (a name in use is refused, a
// released name is gone and free again), while another client moves it
// between the two backends. Every step is run on a direct twin and the
// outcomes compared.
func TestTxDeallocateKeepsClientState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	url := txProxyURL(p)
	proxied := txConnect(ctx, t, url, nil)
	direct := txConnect(ctx, t, txDirectURL(), nil)

	type op struct {
		kind string // prepare, exec, sql, close
		name string
		sql  string
	}
	steps := []op{
		{"prepare", "s1", "SELECT 1"},
		{"exec", "s1", ""},
		{"prepare", "s1", "SELECT 2"}, // in use: 42P05
		{"exec", "s1", ""},            // still the first one
		{"sql", "", "DEALLOCATE s1"},
		{"exec", "s1", ""}, // gone: 26000
		{"prepare", "s1", "SELECT 2"},
		{"exec", "s1", ""},
		{"prepare", "s2", "SELECT 3"},
		{"sql", "", "DEALLOCATE ALL"},
		{"exec", "s1", ""},
		{"exec", "s2", ""},
		{"prepare", "s1", "SELECT 4"},
		{"exec", "s1", ""},
		{"sql", "", "DISCARD ALL"},
		{"exec", "s1", ""},
		{"prepare", "s1", "SELECT 5"},
		{"exec", "s1", ""},
		{"close", "s1", ""},
		{"exec", "s1", ""},
		{"prepare", "s1", "SELECT 6"},
		{"exec", "s1", ""},
		{"sql", "", "DEALLOCATE PREPARE s1"},
		{"prepare", "s1", "SELECT 7"},
		{"exec", "s1", ""},
	}
	run := func(c *pgconn.PgConn, s op) string {
		switch s.kind {
		case "prepare":
			if _, err := c.Prepare(ctx, s.name, s.sql, nil); err != nil {
				return "ERROR " + sqlState(err)
			}
			return "ok"
		case "exec":
			r := c.ExecPrepared(ctx, s.name, nil, nil, nil).Read()
			if r.Err != nil {
				return "ERROR " + sqlState(r.Err)
			}
			var vals []string
			for _, row := range r.Rows {
				vals = append(vals, string(row[0]))
			}
			return strings.Join(vals, ",")
		case "close":
			if err := c.Deallocate(ctx, s.name); err != nil {
				return "ERROR " + sqlState(err)
			}
			return "ok"
		default:
			return txResult(ctx, c, s.sql)
		}
	}

	var release func()
	for k, s := range steps {
		// Every other step, another client holds a backend, so the
		// proxied client alternates between "only one free" and "either".
		if k%2 == 0 {
			_, release = txHold(ctx, t, url)
		}
		got, want := run(proxied, s), run(direct, s)
		if k%2 == 0 {
			release()
		}
		desc := fmt.Sprintf("step %d: %s %s %s", k+1, s.kind, s.name, s.sql)
		if got != want {
			t.Errorf("%s: through the proxy %q, directly %q", desc, got, want)
		} else {
			t.Logf("%s: %s", desc, got)
		}
	}
}

// TestTxEvictionAfterPipelineError: with room for two statements per
// backend, a client's third statement evicts one; when that happens inside
// a pipeline segment that has already failed, the server skips whatever
// the proxy sent there (the new statement's Parse and the evicted one's
// Close alike), and every statement must still work afterwards.
func TestTxEvictionAfterPipelineError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_POOL__MAX_PREPARED_STATEMENTS", "2"))
	url := txProxyURL(p)
	a := txConnect(ctx, t, url, nil)

	// Everything below runs on one backend: the other is held.
	_, release := txHold(ctx, t, url)
	defer release()
	names := []string{"tx_ev_1", "tx_ev_2", "tx_ev_3"}
	for k, name := range names {
		if _, err := a.Prepare(ctx, name, fmt.Sprintf("SELECT $1::int4 + %d", 100*(k+1)), nil); err != nil {
			t.Fatalf("prepare %s: %v", name, err)
		}
	}
	exec := func(name string) (string, error) {
		r := a.ExecPrepared(ctx, name, [][]byte{[]byte("1")}, nil, nil).Read()
		if r.Err != nil {
			return "", r.Err
		}
		if len(r.Rows) != 1 {
			return "", fmt.Errorf("%d rows", len(r.Rows))
		}
		return string(r.Rows[0][0]), nil
	}
	want := map[string]string{"tx_ev_1": "101", "tx_ev_2": "201", "tx_ev_3": "301"}
	for _, name := range names {
		if got, err := exec(name); err != nil || got != want[name] {
			t.Fatalf("%s before the pipeline: got %q, %v", name, got, err)
		}
	}

	// For each statement: a segment that fails before it is used, then, in
	// the same flush, a segment that uses all three.
	for _, name := range names {
		pipe := a.StartPipeline(ctx)
		pipe.SendQueryParams("SELECT 10 / $1::int4", [][]byte{[]byte("0")}, nil, nil, nil)
		pipe.SendQueryPrepared(name, [][]byte{[]byte("1")}, nil, nil)
		pipe.SendPipelineSync()
		for _, n := range names {
			pipe.SendQueryPrepared(n, [][]byte{[]byte("1")}, nil, nil)
		}
		pipe.SendPipelineSync()
		if err := pipe.Flush(); err != nil {
			t.Fatalf("flush: %v", err)
		}
		if _, err := pipe.GetResults(); sqlState(err) != "22012" {
			t.Fatalf("failing query before %s: want 22012, got %v", name, err)
		}
		if res, err := pipe.GetResults(); err != nil {
			t.Fatalf("Sync after the failure before %s: %v", name, err)
		} else if _, ok := res.(*pgconn.PipelineSync); !ok {
			t.Fatalf("Sync after the failure before %s: got %T", name, res)
		}
		for _, n := range names {
			res, err := pipe.GetResults()
			if err != nil {
				t.Errorf("in the segment after the failure before %s, %s: %v", name, n, err)
				break
			}
			rr, ok := res.(*pgconn.ResultReader)
			if !ok {
				t.Fatalf("in the segment after the failure before %s, %s: got %T", name, n, res)
			}
			if r := rr.Read(); r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != want[n] {
				t.Errorf("in the segment after the failure before %s, %s: got %q, %v", name, n, r.Rows, r.Err)
			}
		}
		if err := pipe.Close(); err != nil {
			t.Fatalf("pipeline close: %v", err)
		}
		for _, n := range names {
			if got, err := exec(n); err != nil || got != want[n] {
				t.Errorf("after a failed segment that named %s, %s gave %q, %v", name, n, got, err)
			}
		}
	}
}
