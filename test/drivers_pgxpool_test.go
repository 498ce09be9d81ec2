package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TestDriverPgxPool runs the pgx workload the way most Go services do: a
// pgxpool of many connections (one per worker) in front of a transaction-mode
// proxy with a pool of five. pgxpool hands a worker whichever of its
// connections is free, and the proxy hands that connection whichever
// backend is free, so statements prepared through one path are executed
// through another.
func TestDriverPgxPool(t *testing.T) {
	p := txStartProxy(t, "transaction", txPgxPoolSize)
	ctx, cancel := context.WithTimeout(context.Background(), txPgxRunTimeout)
	defer cancel()

	cfg, err := pgxpool.ParseConfig(txProxyURL(p))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = txPgxClients
	cfg.MinConns = 0
	cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	// Every pooled connection prepares the statement the pipeline step
	// Binds by name, as an application's AfterConnect would.
	cfg.AfterConnect = txPgxPrepareExplicit
	dbpool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dbpool.Close()

	errs := newTxErrors()
	var queries atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := range txPgxClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			failures := 0
			for i := range txPgxIterations {
				err := dbpool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
					n, err := txPgxIteration(ctx, c.Conn(), g, i)
					queries.Add(int64(n))
					return err
				})
				if err != nil {
					errs.add("worker %d iteration %d: %v", g, i, err)
					if failures++; failures >= 3 || ctx.Err() != nil {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	errs.report(t, "pgxpool")
	n := queries.Load()
	t.Logf("pgxpool: %d workers over %d pooled connections, %d queries checked in %v (pool stats: %d conns created)",
		txPgxClients, dbpool.Stat().TotalConns(), n, time.Since(start).Round(time.Millisecond), dbpool.Stat().NewConnsCount())
	if want := int64(txPgxClients * txPgxIterations * txPgxBaseMinQueries); n < want {
		t.Errorf("pgxpool: only %d queries checked, want at least %d", n, want)
	}
}
