package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgx v5 through a transaction-mode proxy whose pool is ten times smaller
// than the number of clients. Each goroutine owns one pgx.Conn, so a
// statement the driver prepared on one backend is executed on whichever
// backend the proxy hands out next: exactly the case that breaks
// "prepared statement does not exist" poolers.

const (
	// txPgxClients is the number of concurrent pgx connections.
	txPgxClients = 50
	// txPgxPoolSize is the proxy's pool: far fewer backends than clients.
	txPgxPoolSize = 5
	// txPgxIterations per client; each iteration runs about ten queries,
	// so a run is several thousand queries.
	txPgxIterations = 40
	// txPgxRunTimeout bounds a whole run.
	txPgxRunTimeout = 3 * time.Minute
)

// TestDriverPgxCacheStatement runs the workload in pgx's default mode:
// every query becomes a named prepared statement (stmtcache_<hash>) that the
// driver prepares once per connection and then only Binds.
func TestDriverPgxCacheStatement(t *testing.T) {
	p := txStartProxy(t, "transaction", txPgxPoolSize)
	txRunPgxConns(t, txProxyURL(p), pgx.QueryExecModeCacheStatement)
}

// TestDriverPgxCacheDescribe runs the workload in QueryExecModeCacheDescribe:
// unnamed statements with cached descriptions, so each Bind relies on the
// backend agreeing with a description learnt on another backend.
func TestDriverPgxCacheDescribe(t *testing.T) {
	p := txStartProxy(t, "transaction", txPgxPoolSize)
	txRunPgxConns(t, txProxyURL(p), pgx.QueryExecModeCacheDescribe)
}

// TestDriverPgxStatementEviction runs the default mode with a per-backend
// statement bound far below the number of distinct statements (every
// client adds one of its own), so backends evict statements all the time
// and the proxy must prepare them again before a Bind.
func TestDriverPgxStatementEviction(t *testing.T) {
	p := txStartProxy(t, "transaction", txPgxPoolSize,
		WithEnv("PGSIDECAR_POOL__MAX_PREPARED_STATEMENTS", "8"))
	txRunPgxConns(t, txProxyURL(p), pgx.QueryExecModeCacheStatement)
}

// txRunPgxConns runs txPgxClients goroutines, each with its own pgx.Conn
// to url in mode, through txPgxIterations of the workload.
func txRunPgxConns(t *testing.T, url string, mode pgx.QueryExecMode) {
	ctx, cancel := context.WithTimeout(context.Background(), txPgxRunTimeout)
	defer cancel()

	errs := newTxErrors()
	var queries atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := range txPgxClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := txDialPgx(ctx, url, mode)
			if err != nil {
				errs.add("client %d: %v", g, err)
				return
			}
			defer txClosePgx(conn)
			if err := txPgxPrepareExplicit(ctx, conn); err != nil {
				errs.add("client %d: %v", g, err)
				return
			}
			failures := 0
			for i := range txPgxIterations {
				n, err := txPgxIteration(ctx, conn, g, i)
				queries.Add(int64(n))
				if err != nil {
					errs.add("client %d iteration %d: %v", g, i, err)
					if failures++; failures >= 3 || ctx.Err() != nil {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	errs.report(t, "pgx "+mode.String())
	n := queries.Load()
	t.Logf("pgx %v: %d clients, %d queries checked in %v", mode, txPgxClients, n, time.Since(start).Round(time.Millisecond))
	if want := int64(txPgxClients * txPgxIterations * txPgxBaseMinQueries); n < want {
		t.Errorf("pgx %v: only %d queries checked, want at least %d", mode, n, want)
	}
}
