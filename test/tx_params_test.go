package e2e

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Session parameters in transaction mode: each client's startup parameters
// and SETs belong to the client, whichever backend serves it. Every proxy
// client has a direct "twin" connection with the same startup parameters
// that receives the same statements; the proxy client must see exactly
// what its twin sees (SHOW, timestamptz and interval output text, the
// ParameterStatus values the driver holds, errors).

// txParamsChecks are the queries compared after every step. They run with
// the simple protocol, so the values are the server's text output, which
// DateStyle, TimeZone and IntervalStyle shape.
var txParamsChecks = []string{
	"SHOW TimeZone",
	"SHOW DateStyle",
	"SHOW IntervalStyle",
	"SHOW application_name",
	"SHOW search_path",
	"SELECT '2024-01-01 12:00:00+00'::timestamptz::text",
	"SELECT '2024-07-04 15:30:00.25+00'::timestamptz::text",
	"SELECT '2024-03-05'::date::text",
	"SELECT interval '1 day 2 hours 3.5 seconds'::text",
}

// txParamsReported are the ParameterStatus values compared with the twin's.
var txParamsReported = []string{"TimeZone", "DateStyle", "IntervalStyle", "application_name", "client_encoding", "standard_conforming_strings"}

// txTwin is one proxy client and its direct twin.
type txTwin struct {
	name          string
	proxy, direct *pgconn.PgConn
}

// txResult runs sql and returns its rows joined, or the error's SQLSTATE.
func txResult(ctx context.Context, conn *pgconn.PgConn, sql string) string {
	rows, err := txSimple(ctx, conn, sql)
	if err != nil {
		if code := sqlState(err); code != "" {
			return "ERROR " + code
		}
		return "ERROR " + err.Error()
	}
	return strings.Join(rows, "|")
}

// do runs sql on both connections and fails t if they disagree.
func (tw *txTwin) do(ctx context.Context, t *testing.T, sql string) string {
	t.Helper()
	got, want := txResult(ctx, tw.proxy, sql), txResult(ctx, tw.direct, sql)
	if got != want {
		t.Errorf("client %s: %s: through the proxy %q, directly %q", tw.name, sql, got, want)
	}
	return got
}

// check runs every txParamsChecks query and compares the reported
// parameters, on both connections.
func (tw *txTwin) check(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, sql := range txParamsChecks {
		tw.do(ctx, t, sql)
	}
	for _, k := range txParamsReported {
		if got, want := tw.proxy.ParameterStatus(k), tw.direct.ParameterStatus(k); got != want {
			t.Errorf("client %s: ParameterStatus %s: through the proxy %q, directly %q", tw.name, k, got, want)
		}
	}
}

func txNewTwin(ctx context.Context, t *testing.T, p *Proxy, name string, params map[string]string) *txTwin {
	return &txTwin{
		name:   name,
		proxy:  txConnect(ctx, t, txProxyURL(p), params),
		direct: txConnect(ctx, t, txDirectURL(), params),
	}
}

// TestTxSessionParamsSharedBackend puts three clients with different
// TimeZone, DateStyle, IntervalStyle and application_name on ONE backend
// (pool max_size 1) and interleaves them many times, through SET, SET
// search_path, SET LOCAL, a rolled-back SET, RESET and RESET ALL.
func TestTxSessionParamsSharedBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, `
		DROP SCHEMA IF EXISTS tx_sp_a CASCADE; DROP SCHEMA IF EXISTS tx_sp_b CASCADE;
		CREATE SCHEMA tx_sp_a; CREATE SCHEMA tx_sp_b;
		CREATE TABLE tx_sp_a.whoami AS SELECT 'schema a'::text AS v;
		CREATE TABLE tx_sp_b.whoami AS SELECT 'schema b'::text AS v`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = admin.Exec(ctx, "DROP SCHEMA IF EXISTS tx_sp_a CASCADE; DROP SCHEMA IF EXISTS tx_sp_b CASCADE").ReadAll()
	})

	p := txStartProxy(t, "transaction", 1)
	a := txNewTwin(ctx, t, p, "a", map[string]string{
		"TimeZone": "America/New_York", "DateStyle": "ISO, MDY", "application_name": "tx-params-a",
	})
	b := txNewTwin(ctx, t, p, "b", map[string]string{
		"TimeZone": "Asia/Tokyo", "DateStyle": "SQL, DMY", "IntervalStyle": "postgres_verbose", "application_name": "tx-params-b",
	})
	c := txNewTwin(ctx, t, p, "c", nil) // the server's defaults
	clients := []*txTwin{a, b, c}

	// round interleaves the clients n times, rotating who goes first, so
	// the one backend switches client before almost every statement. It
	// stops the phase at the first round with a difference.
	round := func(t *testing.T, n int) {
		t.Helper()
		for k := range n {
			for j := range clients {
				clients[(j+k)%len(clients)].check(ctx, t)
			}
			if t.Failed() {
				t.FailNow()
			}
		}
	}

	// Each phase is a subtest, so a phase that fails still lets the later
	// ones show what works.
	t.Run("startup parameters", func(t *testing.T) {
		round(t, 5)
		// The clients really differ, or the comparison proved nothing.
		if txResult(ctx, a.direct, txParamsChecks[5]) == txResult(ctx, b.direct, txParamsChecks[5]) {
			t.Fatalf("clients a and b see the same timestamptz text directly: the setup is wrong")
		}
		// Only one backend served all three.
		pids := map[string]bool{}
		for _, cl := range clients {
			pids[txResult(ctx, cl.proxy, "SELECT pg_backend_pid()")] = true
		}
		if len(pids) != 1 {
			t.Errorf("pool max_size 1, but the clients saw backends %v", pids)
		}
	})

	t.Run("SET", func(t *testing.T) {
		a.do(ctx, t, "SET TimeZone = 'Europe/Berlin'")
		b.do(ctx, t, "SET DateStyle = 'German'")
		b.do(ctx, t, "SET application_name = 'tx-params-b2'")
		c.do(ctx, t, "SET IntervalStyle = 'iso_8601'")
		round(t, 5)
	})

	// search_path is not reported by PostgreSQL < 18, so only the client's
	// SET says what it is.
	t.Run("SET search_path", func(t *testing.T) {
		a.do(ctx, t, "SET search_path = tx_sp_a, public")
		b.do(ctx, t, "SET search_path TO tx_sp_b")
		for range 5 {
			for _, cl := range clients {
				cl.do(ctx, t, "SHOW search_path")
				cl.do(ctx, t, "SELECT v FROM whoami") // c: 42P01, like its twin
			}
			if t.Failed() {
				t.FailNow()
			}
		}
		round(t, 2)
	})

	// SET LOCAL lasts for its transaction only, and a rolled-back SET never
	// happened.
	t.Run("SET LOCAL and rolled-back SET", func(t *testing.T) {
		a.do(ctx, t, "BEGIN")
		a.do(ctx, t, "SET LOCAL TimeZone = 'Asia/Kolkata'")
		a.check(ctx, t)
		a.do(ctx, t, "COMMIT")
		b.do(ctx, t, "BEGIN")
		b.do(ctx, t, "SET TimeZone = 'Australia/Sydney'")
		b.check(ctx, t)
		b.do(ctx, t, "ROLLBACK")
		round(t, 3)
	})

	// RESET goes back to the client's own startup value, not the backend's.
	t.Run("RESET", func(t *testing.T) {
		a.do(ctx, t, "RESET TimeZone")
		b.do(ctx, t, "RESET ALL")
		c.do(ctx, t, "RESET IntervalStyle")
		round(t, 5)
		for _, cl := range clients {
			cl.do(ctx, t, "SELECT v FROM whoami")
		}
	})
}

// TestTxSetFollowsClient: eight clients SET their own TimeZone and
// application_name over a pool of 3. Then each client is walked over all
// three backends in turn (the other two held by open transactions, so the
// proxy has no choice) and must see its own values on each; then all run
// transactions concurrently, and every one sees the client's own values.
func TestTxSetFollowsClient(t *testing.T) {
	const clients, transactions = 8, 30
	zones := []string{"America/New_York", "Asia/Tokyo", "Europe/Berlin", "Australia/Sydney",
		"America/Sao_Paulo", "Africa/Nairobi", "Asia/Kolkata", "Pacific/Auckland"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 3)

	conns := make([]*pgconn.PgConn, clients)
	for i := range conns {
		conns[i] = txConnect(ctx, t, txProxyURL(p), nil)
		txMustExec(ctx, t, conns[i], fmt.Sprintf("SET TimeZone = '%s'", zones[i]))
		txMustExec(ctx, t, conns[i], fmt.Sprintf("SET application_name = 'tx-follow-%d'", i))
	}
	// Three holders occupy the three backends; freeing one at a time
	// leaves the client exactly one backend to run on.
	holders := make([]*pgconn.PgConn, 3)
	holderPids := make([]string, 3)
	for k := range holders {
		holders[k] = txConnect(ctx, t, txProxyURL(p), nil)
		txMustExec(ctx, t, holders[k], "BEGIN")
		holderPids[k] = txMustOne(ctx, t, holders[k], "SELECT pg_backend_pid()")
	}
	if holderPids[0] == holderPids[1] || holderPids[1] == holderPids[2] || holderPids[0] == holderPids[2] {
		t.Fatalf("three open transactions share backends: %v", holderPids)
	}
	for i, conn := range conns {
		for k, h := range holders {
			txMustExec(ctx, t, h, "COMMIT")
			res, err := conn.Exec(ctx, "SHOW TimeZone; SHOW application_name; SELECT pg_backend_pid()").ReadAll()
			if err != nil {
				t.Fatalf("client %d on backend %s: %v", i, holderPids[k], err)
			}
			zone, app, pid := string(res[0].Rows[0][0]), string(res[1].Rows[0][0]), string(res[2].Rows[0][0])
			if pid != holderPids[k] {
				t.Fatalf("client %d ran on backend %s, but only %s was free", i, pid, holderPids[k])
			}
			if zone != zones[i] || app != fmt.Sprintf("tx-follow-%d", i) {
				t.Errorf("client %d on backend %s: TimeZone %q application_name %q, want %q and tx-follow-%d", i, pid, zone, app, zones[i], i)
			}
			txMustExec(ctx, t, h, "BEGIN")
			if got := txMustOne(ctx, t, h, "SELECT pg_backend_pid()"); got != holderPids[k] {
				t.Fatalf("holder %d came back on backend %s, want %s", k, got, holderPids[k])
			}
		}
	}
	for _, h := range holders {
		txMustExec(ctx, t, h, "COMMIT")
	}

	errs := newTxErrors()
	backends := make([]map[string]bool, clients)
	var wg sync.WaitGroup
	for i := range clients {
		backends[i] = map[string]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := conns[i]
			for k := range transactions {
				// One transaction: a Query message with several statements.
				res, err := conn.Exec(ctx, "BEGIN; SHOW TimeZone; SHOW application_name; SELECT pg_backend_pid(); COMMIT").ReadAll()
				if err != nil {
					errs.add("client %d transaction %d: %v", i, k, err)
					return
				}
				if len(res) != 5 {
					errs.add("client %d transaction %d: %d results, want 5", i, k, len(res))
					return
				}
				zone, app := string(res[1].Rows[0][0]), string(res[2].Rows[0][0])
				backends[i][string(res[3].Rows[0][0])] = true
				if zone != zones[i] || app != fmt.Sprintf("tx-follow-%d", i) {
					errs.add("client %d transaction %d: TimeZone %q application_name %q, want %q and tx-follow-%d", i, k, zone, app, zones[i], i)
				}
				if ps := conn.ParameterStatus("TimeZone"); ps != zones[i] {
					errs.add("client %d transaction %d: ParameterStatus TimeZone %q, want %q", i, k, ps, zones[i])
				}
			}
		}()
	}
	wg.Wait()
	errs.report(t, "SET follows the client")
	moved := 0
	for i := range clients {
		if len(backends[i]) > 1 {
			moved++
		}
	}
	// The walk above already moved every client; this only describes the
	// concurrent phase.
	t.Logf("concurrent phase: %d of %d clients ran on more than one backend", moved, clients)
}

// TestTxParamSyncOnce: a backend is brought to a client's parameters once,
// not before every transaction, whatever the client before it did to
// application_name (a value PostgreSQL reports, empty by default). One
// backend (pool max_size 1); client a sets application_name, at startup
// and with SET, then RESETs it; client b, which sends none, then runs
// several transactions: the proxy logs its parameter sync at debug level,
// and b's transactions may take at most one.
func TestTxParamSyncOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const syncLog = "bringing the server connection to the client's parameters"
	for _, steps := range [][]string{
		{"SELECT 1"},
		{"SET application_name = 'a_set'"},
		{"SET application_name = 'a_set'", "RESET application_name"},
		{"RESET application_name"},
	} {
		t.Run(strings.Join(steps, "; "), func(t *testing.T) {
			p := txStartProxy(t, "transaction", 1)
			a := txNewTwin(ctx, t, p, "a", map[string]string{"application_name": "a_start"})
			for _, sql := range steps {
				a.do(ctx, t, sql)
			}
			a.check(ctx, t)
			b := txNewTwin(ctx, t, p, "b", nil)
			before := p.Logs.Count(syncLog)
			for range 5 {
				b.do(ctx, t, "SELECT 1")
			}
			b.check(ctx, t)
			for range 5 {
				a.do(ctx, t, "SELECT 1")
				b.do(ctx, t, "SELECT 1")
			}
			a.check(ctx, t)
			b.check(ctx, t)
			// b's first transaction syncs the backend from a's
			// parameters to b's, and each switch between a and b
			// after that syncs once: 1 + 10 + the checks' switches.
			if got := p.Logs.Count(syncLog) - before; got > 13 {
				t.Errorf("%d parameter syncs for 10 switches between clients and 2 checks; want at most 13 (a sync before every transaction?)", got)
			}
		})
	}
}

// TestTxStartupParameterStatus: the ParameterStatus messages a client
// gets at login, every name and value (drivers read them: pgx and JDBC
// the encoding and standard_conforming_strings, many the server version),
// are those PostgreSQL sends a direct connection with the same startup
// parameters, application_name included when it is empty.
func TestTxStartupParameterStatus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	statuses := func(url string, params map[string]string) map[string]string {
		t.Helper()
		conn := txConnectConfig(ctx, t, url, func(cfg *pgconn.Config) {
			for k, v := range params {
				cfg.RuntimeParams[k] = v
			}
		})
		hc, err := conn.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		hc.Conn.Close()
		return hc.ParameterStatuses
	}
	for _, mode := range []string{"transaction", "session"} {
		p := txStartProxy(t, mode, 2)
		for _, params := range []map[string]string{
			nil,
			{"application_name": "startup_app"},
			{"TimeZone": "America/New_York", "DateStyle": "SQL, DMY", "IntervalStyle": "iso_8601", "client_encoding": "LATIN1"},
		} {
			got, want := statuses(txProxyURL(p), params), statuses(txDirectURL(), params)
			if !maps.Equal(got, want) {
				t.Errorf("%s mode, startup %v: ParameterStatus through the proxy %v, directly %v", mode, params, got, want)
			}
		}
	}
}
