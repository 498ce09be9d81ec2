package e2e

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"
)

const (
	txPgbenchClients      = 50
	txPgbenchPool         = 5
	txPgbenchTransactions = 100 // per client
)

// TestTxPgbenchPrepared runs pgbench -M prepared (named statements P_0,
// P_1, ... prepared once per client connection and then only Bound) with
// 50 clients on a transaction-mode pool of 5, on freshly initialised
// tables: every transaction must succeed, the pool must stay within 5
// backends, and the TPC-B invariants must hold afterwards (every history
// row's delta is in exactly one account, teller and branch balance).
func TestTxPgbenchPrepared(t *testing.T) {
	// A fresh schema, made directly, so the checks below count only this run.
	if out, err := runPgbench(t, txDirectURL(), "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	p := txStartProxy(t, "transaction", txPgbenchPool,
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "120s"),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))

	poll := startStatsPoller(p, 100*time.Millisecond)
	out, err := runPgbench(t, txProxyURL(p), "-n", "-M", "prepared",
		"-c", strconv.Itoa(txPgbenchClients), "-j", "2", "-t", strconv.Itoa(txPgbenchTransactions))
	seen := poll.stop()
	if err != nil {
		t.Fatalf("pgbench -M prepared: %v\n%s", err, out)
	}
	total := txPgbenchClients * txPgbenchTransactions
	checkPgbenchOutput(t, out, total)
	t.Logf("pgbench -M prepared, %d clients, pool %d: %s; /stats max total %v, active %v, waiting %v",
		txPgbenchClients, txPgbenchPool, tps(out), seen.maxTotal, seen.maxActive, seen.maxWaiting)
	if seen.samples < 3 {
		t.Errorf("/stats answered only %d polls during the run (%d errors, last %v)", seen.samples, seen.errors, seen.lastErr)
	}
	if seen.maxTotal > txPgbenchPool || seen.maxActive > txPgbenchPool {
		t.Errorf("/stats showed total %v, active %v backends; max_size is %d", seen.maxTotal, seen.maxActive, txPgbenchPool)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := txConnect(ctx, t, txDirectURL(), nil)
	history := txMustOne(ctx, t, conn, "SELECT count(*) FROM pgbench_history")
	if history != strconv.Itoa(total) {
		t.Errorf("pgbench_history has %s rows, want %d (one per transaction)", history, total)
	}
	sums := txMustOne(ctx, t, conn, `SELECT format('%s %s %s %s',
		(SELECT coalesce(sum(delta), 0) FROM pgbench_history),
		(SELECT sum(abalance) FROM pgbench_accounts),
		(SELECT sum(tbalance) FROM pgbench_tellers),
		(SELECT sum(bbalance) FROM pgbench_branches))`)
	var h, a, tl, b int64
	if _, err := fmt.Sscan(sums, &h, &a, &tl, &b); err != nil {
		t.Fatalf("parse sums %q: %v", sums, err)
	}
	if h != a || h != tl || h != b {
		t.Errorf("TPC-B balances disagree (a transaction was lost or split): history %d, accounts %d, tellers %d, branches %d", h, a, tl, b)
	}
}
