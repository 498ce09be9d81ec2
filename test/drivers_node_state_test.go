package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestDriverNodePostgresSessionState runs drivers/node/session_state.js
// (issue 6, points 4-6: LISTEN/NOTIFY through the shared listener, a temp
// table and a session advisory lock that pin their client, SETs in a
// multi-statement query, set_config and ROLLBACK [TO SAVEPOINT]) through
// the proxy in transaction mode (4 node-postgres clients, a pool of 2) and
// directly, and requires the same observations.
func TestDriverNodePostgresSessionState(t *testing.T) {
	txRequireTool(t, "node", "apt-get install -y nodejs npm")
	txNodeInstall(t)
	p := txStartProxy(t, "transaction", 2)
	run := func(url string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "node", "session_state.js")
		cmd.Dir = txNodeDir
		cmd.Env = append(os.Environ(), "PG_URL="+url)
		cmd.WaitDelay = 5 * time.Second
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("node session_state.js against %s: %v\nstdout: %s\nstderr: %s", redact(url), err, stdout.String(), txTail(stderr.String()))
		}
		return string(bytes.TrimSpace(stdout.Bytes()))
	}
	direct := run(txDirectURL())
	proxied := run(txProxyURL(p))
	if proxied != direct {
		t.Errorf("node-postgres through the proxy:\n%s\ndirectly:\n%s", proxied, direct)
	}
	t.Logf("observations: %s", direct)
}
