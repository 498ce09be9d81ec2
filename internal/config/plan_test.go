package config

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

func TestConfigDiffAndLiveSubset(t *testing.T) {
	testpg.IsolatePG(t)
	runningPath := testpg.WriteYAML(t, `
upstream: `+testURL+`
databases:
  reports:
    url: postgres://rep:pw@127.0.0.1:5433/reporting
    pool: {max_size: 4}
  old:
    url: postgres://old:pw@127.0.0.1:5433/old
`)
	running := mustLoad(t, runningPath)

	nextPath := testpg.WriteYAML(t, `
listen: 127.0.0.1:7777
upstream: postgres://app:new-pw@127.0.0.1:5432/appdb
pool:
  mode: session
  max_size: 20
  acquire_timeout: 3s
  max_client_conn: 50
log:
  level: debug
  format: json
auth:
  method: md5
  users: [{name: alice, password: a}]
databases:
  reports:
    url: postgres://rep:pw@127.0.0.1:6543/reporting
    pool: {max_size: 6}
  fresh:
    url: postgres://f:pw@127.0.0.1:5433/fresh
`)
	next := mustLoad(t, nextPath)

	live, restart := configDiff(running, next)
	wantLive := []string{"auth.method", "auth.users", "databases.reports.pool.max_size",
		"log.level", "pool.acquire_timeout", "pool.max_client_conn", "pool.max_size"}
	wantRestart := []string{"databases.fresh (added)", "databases.old (removed)", "databases.reports.url",
		"listen", "log.format", "pool.mode", "upstream"}
	if !reflect.DeepEqual(live, wantLive) {
		t.Errorf("live = %v\nwant %v", live, wantLive)
	}
	if !reflect.DeepEqual(restart, wantRestart) {
		t.Errorf("restart = %v\nwant %v", restart, wantRestart)
	}
	for _, k := range append(live, restart...) {
		if strings.Contains(k, "pw") {
			t.Errorf("diff exposes a value: %q", k)
		}
	}

	applied := liveSubset(running, next)
	if err := applied.Validate(); err != nil {
		t.Fatal(err)
	}
	// Restart-only options keep their running values...
	if applied.Listen != running.Listen || applied.Upstream != running.Upstream ||
		applied.Pool.Mode != "transaction" || applied.Log.Format != running.Log.Format {
		t.Errorf("restart-only options changed: %+v", applied)
	}
	if _, ok := applied.Databases["fresh"]; ok {
		t.Error("an added database was applied live")
	}
	if _, ok := applied.Databases["old"]; !ok {
		t.Error("a removed database was dropped live")
	}
	if applied.Databases["reports"].URL != running.Databases["reports"].URL {
		t.Error("a database URL changed live")
	}
	// ...and the rest follows the new file.
	if applied.Pool.MaxSize != 20 || applied.Pool.AcquireTimeout != 3*time.Second || applied.Pool.MaxClientConn != 50 ||
		applied.Log.Level != "debug" || applied.Auth.Method != "md5" || applied.Databases["reports"].Pool.MaxSize != 6 {
		t.Errorf("live options not applied: %+v", applied)
	}
	ts, err := applied.Targets()
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 3 || ts[0].Users["alice"] != "a" || ts[0].Users["app"] != "s3cr3t-pw" {
		t.Errorf("targets after reload = %+v", ts)
	}

	// Nothing changed: nothing reported.
	if live, restart := configDiff(running, mustLoad(t, runningPath)); len(live)+len(restart) != 0 {
		t.Errorf("identical configs differ: %v %v", live, restart)
	}
}
