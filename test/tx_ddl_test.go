package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DDL between executions of a prepared "SELECT * FROM t": after ALTER TABLE
// changes the result's shape, PostgreSQL answers the old statement with
// 0A000 "cached plan must not change result type". Directly, pgx recovers
// by itself (it drops the statement from its cache and prepares it again)
// and a pgconn application recovers by preparing again. Through the proxy
// a client's statement may be prepared on several backends (the proxy
// parses it again where it is missing), so the proxy must make sure the
// client never runs a copy of another result type than it was told. Each scenario runs directly first, and the proxy
// may fail only where direct failed, with the same SQLSTATE.

const (
	txDDLClients = 3 // = the pool size, so overlapping transactions use every backend
	txDDLRounds  = 6 // executions per client after each DDL
)

// txDDLPhase is one shape of the table.
type txDDLPhase struct {
	name  string // for messages
	ddl   string // what turns the previous shape into this one; "" for the first
	cols  int    // columns SELECT * returns
	cType uint32 // type OID of column c
}

var txDDLPhases = []txDDLPhase{
	{name: "int", cols: 2, cType: 23},
	{name: "bigint", ddl: "ALTER TABLE %s ALTER COLUMN c TYPE bigint", cols: 2, cType: 20},
	// Same width as bigint: a client decoding new rows with the old
	// description would read float8 bits as an int8 without any error, so
	// here a "success" with the old shape is silent corruption.
	{name: "float8", ddl: "ALTER TABLE %s ALTER COLUMN c TYPE float8", cols: 2, cType: 701},
	{name: "added column", ddl: "ALTER TABLE %s ADD COLUMN d text NOT NULL DEFAULT 'dee'", cols: 3, cType: 701},
}

// txDDLStep runs client i's SELECT * once inside an open transaction and
// checks the rows against phase.
type txDDLStep func(ctx context.Context, i int, phase txDDLPhase) error

// txDDLDriver is one way of preparing and executing the statement.
type txDDLDriver struct {
	name string
	// open connects the clients to url and returns their step, a function
	// to run between rounds after a failed execution (the application's
	// recovery), and the SQL to begin and end a transaction.
	open func(ctx context.Context, t *testing.T, url, table string) (step txDDLStep, recover func(ctx context.Context, i int) error, exec func(ctx context.Context, i int, sql string) error)
}

func TestTxDDLBetweenExecutions(t *testing.T) {
	for _, d := range []txDDLDriver{txDDLPgx(), txDDLPgconn()} {
		t.Run(d.name, func(t *testing.T) {
			direct, _ := txRunDDLScenario(t, d, txDirectURL(), "tx_ddl_"+strings.ReplaceAll(d.name, " ", "_")+"_direct")
			p := txStartProxy(t, "transaction", txDDLClients)
			proxied, messages := txRunDDLScenario(t, d, txProxyURL(p), "tx_ddl_"+strings.ReplaceAll(d.name, " ", "_")+"_proxy")
			t.Logf("%s directly: %s", d.name, txDDLSummary(direct))
			t.Logf("%s through the proxy: %s", d.name, txDDLSummary(proxied))
			for ph := 1; ph < len(txDDLPhases); ph++ {
				for i := range txDDLClients {
					for r := range txDDLRounds {
						got, want := proxied[ph][i][r], direct[ph][i][r]
						if got == "" {
							continue
						}
						msg := messages[txDDLKey(ph, i, r)]
						if got != want {
							t.Errorf("after %q, client %d execution %d: directly %q, through the proxy: %s", txDDLPhases[ph].name, i, r+1, txOK(want), msg)
						}
						if r > 0 {
							t.Errorf("after %q, client %d execution %d still failed through the proxy (by the second execution it must work): %s", txDDLPhases[ph].name, i, r+1, msg)
						}
					}
				}
			}
		})
	}
}

// txRunDDLScenario creates table, runs every phase through d against url
// and returns, per phase, client and round, "" for a correct result or the
// SQLSTATE (or message) of the failure; and each failure's full message,
// keyed by txDDLKey.
func txRunDDLScenario(t *testing.T, d txDDLDriver, url, table string) ([][][]string, map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, fmt.Sprintf(
		"DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id int PRIMARY KEY, c int NOT NULL); INSERT INTO %[1]s VALUES (1, 10), (2, 20), (3, 30)", table))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = admin.Exec(ctx, "DROP TABLE IF EXISTS "+table).ReadAll()
	})

	step, recoverFn, exec := d.open(ctx, t, url, table)
	out := make([][][]string, len(txDDLPhases))
	messages := map[string]string{}
	for ph, phase := range txDDLPhases {
		if phase.ddl != "" {
			txMustExec(ctx, t, admin, fmt.Sprintf(phase.ddl, table))
		}
		rounds := txDDLRounds
		if ph == 0 {
			rounds = 2 // enough to prepare the statement on every backend
		}
		out[ph] = make([][]string, txDDLClients)
		for r := range rounds {
			errs := txOverlapping(ctx, txDDLClients, func(i int, together func() error) error {
				if err := exec(ctx, i, "BEGIN"); err != nil {
					return fmt.Errorf("begin: %w", err)
				}
				stepErr := step(ctx, i, phase)
				// Every client holds its transaction (so its backend) until
				// all have run: each execution is on a different backend.
				if err := together(); err != nil && stepErr == nil {
					stepErr = err
				}
				end := "COMMIT"
				if stepErr != nil {
					end = "ROLLBACK"
				}
				if err := exec(ctx, i, end); err != nil && stepErr == nil {
					stepErr = fmt.Errorf("%s: %w", strings.ToLower(end), err)
				}
				return stepErr
			})
			for i, err := range errs {
				res := ""
				if err != nil {
					if res = sqlState(err); res == "" {
						res = "error: " + err.Error()
					}
					messages[txDDLKey(ph, i, r)] = err.Error()
					if ph == 0 {
						t.Fatalf("%s before any DDL, client %d round %d: %v", url, i, r, err)
					}
					if rerr := recoverFn(ctx, i); rerr != nil {
						t.Fatalf("client %d: recovering after %v: %v", i, err, rerr)
					}
				}
				out[ph][i] = append(out[ph][i], res)
			}
		}
	}
	return out, messages
}

// txOK shows "" (success) as ok.
func txOK(res string) string {
	if res == "" {
		return "ok"
	}
	return res
}

// txDDLKey names one execution: phase, client, round.
func txDDLKey(ph, i, r int) string { return fmt.Sprintf("%d/%d/%d", ph, i, r) }

// txDDLSummary formats a scenario's outcome: per phase, per client, the
// result of each execution ("ok" or the SQLSTATE).
func txDDLSummary(out [][][]string) string {
	var b strings.Builder
	for ph, clients := range out {
		fmt.Fprintf(&b, "\n  %-14s", txDDLPhases[ph].name+":")
		for i, rounds := range clients {
			res := make([]string, len(rounds))
			for r, v := range rounds {
				res[r] = txOK(v)
			}
			fmt.Fprintf(&b, " client %d [%s]", i, strings.Join(res, " "))
		}
	}
	return b.String()
}

// txOverlapping runs body for clients 0..n-1 concurrently and returns their
// errors. together blocks until every client has called it (or returned),
// so the work before it overlaps in time.
func txOverlapping(ctx context.Context, n int, body func(i int, together func() error) error) []error {
	var arrived sync.WaitGroup
	arrived.Add(n)
	all := make(chan struct{})
	go func() { // owned here: ends once every client has arrived or returned
		arrived.Wait()
		close(all)
	}()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			defer once.Do(arrived.Done)
			errs[i] = body(i, func() error {
				once.Do(arrived.Done)
				select {
				case <-all:
					return nil
				case <-time.After(20 * time.Second):
					return errors.New("other clients did not reach the same point within 20s (no backend for them?)")
				case <-ctx.Done():
					return ctx.Err()
				}
			})
		}()
	}
	wg.Wait()
	<-all
	return errs
}

// txDDLPgx uses pgx's default exec mode: the statement cache prepares
// stmtcache_<hash> and, after an error, drops and prepares it again.
func txDDLPgx() txDDLDriver {
	return txDDLDriver{name: "pgx cache statement", open: func(ctx context.Context, t *testing.T, url, table string) (txDDLStep, func(context.Context, int) error, func(context.Context, int, string) error) {
		conns := make([]*pgx.Conn, txDDLClients)
		for i := range conns {
			conns[i] = txConnectPgx(ctx, t, url, pgx.QueryExecModeCacheStatement)
		}
		sql := "SELECT * FROM " + table + " ORDER BY id"
		step := func(ctx context.Context, i int, phase txDDLPhase) error {
			rows, err := conns[i].Query(ctx, sql)
			if err != nil {
				return err
			}
			fields := rows.FieldDescriptions()
			all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
			if err != nil {
				return err
			}
			return txCheckDDLRows(phase, fields, func(k int) []string {
				vals := make([]string, len(all[k]))
				for j, v := range all[k] {
					vals[j] = fmt.Sprint(v)
				}
				return vals
			}, len(all))
		}
		// pgx recovers by itself on its next query.
		recover := func(context.Context, int) error { return nil }
		exec := func(ctx context.Context, i int, sql string) error {
			_, err := conns[i].Exec(ctx, sql)
			return err
		}
		return step, recover, exec
	}}
}

// txDDLPgconn prepares a named statement explicitly with pgconn and, after
// an error, deallocates it and prepares it again, as an application would.
func txDDLPgconn() txDDLDriver {
	return txDDLDriver{name: "pgconn prepare", open: func(ctx context.Context, t *testing.T, url, table string) (txDDLStep, func(context.Context, int) error, func(context.Context, int, string) error) {
		const name = "tx_ddl_select"
		sql := "SELECT * FROM " + table + " ORDER BY id"
		conns := make([]*pgconn.PgConn, txDDLClients)
		for i := range conns {
			conns[i] = txConnect(ctx, t, url, nil)
			if _, err := conns[i].Prepare(ctx, name, sql, nil); err != nil {
				t.Fatalf("prepare: %v", err)
			}
		}
		step := func(ctx context.Context, i int, phase txDDLPhase) error {
			res := conns[i].ExecPrepared(ctx, name, nil, nil, nil).Read()
			if res.Err != nil {
				return res.Err
			}
			return txCheckDDLRows(phase, res.FieldDescriptions, func(k int) []string {
				vals := make([]string, len(res.Rows[k]))
				for j, v := range res.Rows[k] {
					vals[j] = string(v)
				}
				return vals
			}, len(res.Rows))
		}
		recover := func(ctx context.Context, i int) error {
			if err := conns[i].Deallocate(ctx, name); err != nil {
				return fmt.Errorf("deallocate: %w", err)
			}
			if _, err := conns[i].Prepare(ctx, name, sql, nil); err != nil {
				return fmt.Errorf("prepare again: %w", err)
			}
			return nil
		}
		exec := func(ctx context.Context, i int, sql string) error {
			_, err := conns[i].Exec(ctx, sql).ReadAll()
			return err
		}
		return step, recover, exec
	}}
}

// txCheckDDLRows checks SELECT * of the three rows against phase.
func txCheckDDLRows(phase txDDLPhase, fields []pgconn.FieldDescription, row func(int) []string, n int) error {
	if len(fields) != phase.cols {
		return fmt.Errorf("%s: %d columns described, want %d", phase.name, len(fields), phase.cols)
	}
	if n != 3 {
		return fmt.Errorf("%s: %d rows, want 3", phase.name, n)
	}
	if fields[1].Name != "c" || fields[1].DataTypeOID != phase.cType {
		return fmt.Errorf("%s: column 2 is %s of type %d, want c of type %d (first row read as %q)", phase.name, fields[1].Name, fields[1].DataTypeOID, phase.cType, row(0))
	}
	for k := range n {
		vals := row(k)
		want := []string{fmt.Sprint(k + 1), fmt.Sprint(10 * (k + 1))}
		if phase.cols == 3 {
			want = append(want, "dee")
		}
		if strings.Join(vals, ",") != strings.Join(want, ",") {
			return fmt.Errorf("%s: row %d is %q, want %q", phase.name, k+1, vals, want)
		}
	}
	return nil
}
