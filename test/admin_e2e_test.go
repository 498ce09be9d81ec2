package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// consoleURL is the admin console of p for user/password.
func consoleURL(p *Proxy, user, password string) string { return p.URL(user, password, "pgsidecar") }

// consoleRows runs a console command with pgx (simple protocol) and
// returns the column names and every row as Go values.
func consoleRows(ctx context.Context, t *testing.T, conn *pgx.Conn, cmd string) ([]string, [][]any) {
	t.Helper()
	rows, err := conn.Query(ctx, cmd, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer rows.Close()
	var names []string
	for _, f := range rows.FieldDescriptions() {
		names = append(names, f.Name)
	}
	var out [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			t.Fatalf("%s: values: %v", cmd, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return names, out
}

// column is row[i] for the column named name.
func column(t *testing.T, names []string, row []any, name string) any {
	t.Helper()
	i := slices.Index(names, name)
	if i < 0 {
		t.Fatalf("no column %q in %v", name, names)
	}
	return row[i]
}

// consoleExec runs a console command with pgx (simple protocol) and
// returns its error.
func consoleExec(ctx context.Context, conn *pgx.Conn, cmd string) error {
	_, err := conn.Exec(ctx, cmd, pgx.QueryExecModeSimpleProtocol)
	return err
}

// serverPIDs is the pid column of SHOW SERVERS.
func serverPIDs(ctx context.Context, t *testing.T, conn *pgx.Conn) []int64 {
	t.Helper()
	names, rows := consoleRows(ctx, t, conn, "SHOW SERVERS")
	var pids []int64
	for _, r := range rows {
		pids = append(pids, column(t, names, r, "pid").(int64))
	}
	slices.Sort(pids)
	return pids
}

// proxyPID is the pid of the backend serving conn's next statement.
func proxyPID(ctx context.Context, t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	var pid int64
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatalf("pg_backend_pid: %v", err)
	}
	return pid
}

// TestAdminConsoleShow: every SHOW answers psql and pgx with typed rows;
// SHOW SERVERS lists the proxy's real backends (pg_stat_activity agrees),
// their state and counts; passwords never show; unknown commands get
// 42601 with the command list, the extended protocol 0A000, a stats user
// 42501 for anything but SHOW, a wrong password 28P01.
func TestAdminConsoleShow(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_AUTH__USERS", "mon:monpw"),
		WithEnv("PGSIDECAR_ADMIN__STATS_USERS", "mon"),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	app := connect(t, p.AppURL())
	if _, err := app.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Exec(ctx, "SELECT * FROM no_such_table_admin"); sqlState(err) != "42P01" {
		t.Fatalf("want 42P01, got %v", err)
	}
	tx := connect(t, p.AppURL())
	if _, err := tx.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	txPID := proxyPID(ctx, t, tx) // held: inside a transaction

	// psql shows a table.
	out, err := runPsql(t, consoleURL(p, "app", "app"), "-c", "SHOW POOLS")
	if err != nil {
		t.Fatalf("psql SHOW POOLS: %v", err)
	}
	for _, want := range []string{"database", "cl_active", "sv_idle", "app", "HEALTHY", "(1 row)"} {
		if !strings.Contains(out, want) {
			t.Errorf("psql SHOW POOLS: no %q in\n%s", want, out)
		}
	}
	out, err = runPsql(t, consoleURL(p, "app", "app"), "-c", "show servers;")
	if err != nil || !strings.Contains(out, strconv.FormatInt(txPID, 10)) {
		t.Errorf("psql show servers; (lower case, semicolon): want pid %d: %v\n%s", txPID, err, out)
	}

	con := connect(t, consoleURL(p, "app", "app"))

	// SHOW SERVERS: one row per backend, pids real. A hold's counts reach
	// the pool at its release, a moment after the client had its reply.
	var names []string
	var rows [][]any
	waitFor(t, 5*time.Second, "the SQL error counted", func() bool {
		names, rows = consoleRows(ctx, t, con, "SHOW SERVERS")
		n := int64(0)
		for _, r := range rows {
			n += column(t, names, r, "sql_errors").(int64)
		}
		return n == 1
	})
	for _, col := range []string{"pid", "database", "user", "state", "created", "last_used", "transactions", "queries", "errors", "sql_errors", "validated", "validate_ms", "tls"} {
		if !slices.Contains(names, col) {
			t.Errorf("SHOW SERVERS has no column %s: %v", col, names)
		}
	}
	if len(rows) < 2 {
		t.Fatalf("SHOW SERVERS: want at least min_size 2 rows, got %v", rows)
	}
	direct := adminConn(t)
	var pids []int64
	sawActive, sqlErrs, txs := false, int64(0), int64(0)
	for _, r := range rows {
		pid := column(t, names, r, "pid").(int64)
		pids = append(pids, pid)
		var n int
		if err := direct.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND usename = 'app' AND datname = 'app'", pid).Scan(&n); err != nil || n != 1 {
			t.Errorf("SHOW SERVERS pid %d is not an app backend in pg_stat_activity (%d, %v)", pid, n, err)
		}
		if _, ok := column(t, names, r, "created").(time.Time); !ok {
			t.Errorf("created is %T, want time.Time", column(t, names, r, "created"))
		}
		if pid == txPID {
			sawActive = column(t, names, r, "state") == "active"
		}
		sqlErrs += column(t, names, r, "sql_errors").(int64)
		txs += column(t, names, r, "transactions").(int64)
		if tls := column(t, names, r, "tls"); tls != false {
			t.Errorf("tls = %v for a sslmode=disable upstream", tls)
		}
	}
	if !sawActive {
		t.Errorf("the backend of the open transaction (pid %d) is not listed as active: %v", txPID, rows)
	}
	if sqlErrs != 1 || txs < 2 {
		t.Errorf("want 1 SQL error and at least 2 transactions over the backends, got %d and %d", sqlErrs, txs)
	}
	// The proxy's own backends, as PostgreSQL sees them: every one listed.
	var stat []int64
	dr, err := direct.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND datname = 'app' AND pid = ANY($1)", pids)
	if err != nil {
		t.Fatal(err)
	}
	for dr.Next() {
		var pid int64
		_ = dr.Scan(&pid)
		stat = append(stat, pid)
	}
	slices.Sort(stat)
	slices.Sort(pids)
	if !slices.Equal(stat, pids) {
		t.Errorf("SHOW SERVERS pids %v, pg_stat_activity %v", pids, stat)
	}

	names, rows = consoleRows(ctx, t, con, "SHOW CLIENTS")
	active := 0
	for _, r := range rows {
		if column(t, names, r, "state") == "active" {
			active++
		}
		if column(t, names, r, "user") != "app" || column(t, names, r, "database") != "app" {
			t.Errorf("SHOW CLIENTS row %v", r)
		}
	}
	if len(rows) != 2 || active != 1 {
		t.Errorf("SHOW CLIENTS: want 2 clients, 1 active; got %v", rows)
	}
	names, rows = consoleRows(ctx, t, con, "SHOW POOLS")
	if len(rows) != 1 || column(t, names, rows[0], "cl_active").(int64) != 1 || column(t, names, rows[0], "clients").(int64) != 2 {
		t.Errorf("SHOW POOLS: %v %v", names, rows)
	}
	names, rows = consoleRows(ctx, t, con, "SHOW STATS")
	if len(rows) != 1 || column(t, names, rows[0], "queries").(int64) < 2 {
		t.Errorf("SHOW STATS: %v %v", names, rows)
	}
	names, rows = consoleRows(ctx, t, con, "SHOW DATABASES")
	if len(rows) != 1 || column(t, names, rows[0], "name") != "app" || !strings.Contains(column(t, names, rows[0], "upstream").(string), "xxxxx") {
		t.Errorf("SHOW DATABASES: %v %v", names, rows)
	}
	_, rows = consoleRows(ctx, t, con, "SHOW CONFIG")
	cfg := map[string]string{}
	for _, r := range rows {
		cfg[r[0].(string)] = r[1].(string)
	}
	if !strings.Contains(cfg["upstream"], "app:xxxxx@") || strings.Contains(cfg["upstream"], ":app@") ||
		cfg["auth.users"] != "mon" || cfg["admin.database"] != "pgsidecar" || cfg["pool.min_size"] != "2" {
		t.Errorf("SHOW CONFIG: %v", cfg)
	}
	_, rows = consoleRows(ctx, t, con, "SHOW VERSION")
	if len(rows) != 1 || !strings.HasPrefix(rows[0][0].(string), "pgsidecar ") {
		t.Errorf("SHOW VERSION: %v", rows)
	}
	_, rows = consoleRows(ctx, t, con, "SHOW STATE")
	if len(rows) == 0 || rows[0][0] != "state" || rows[0][1] != "running" {
		t.Errorf("SHOW STATE: %v", rows)
	}

	// Errors.
	var pgErr *pgconn.PgError
	err = consoleExec(ctx, con, "SELECT 1")
	if sqlState(err) != "42601" || !errors.As(err, &pgErr) || !strings.Contains(pgErr.Hint, "SHOW POOLS") {
		t.Errorf("unknown command: want 42601 with the command list, got %v", err)
	}
	var v string
	if err := con.QueryRow(ctx, "SHOW VERSION").Scan(&v); sqlState(err) != "0A000" { // pgx's default: extended protocol
		t.Errorf("extended protocol: want 0A000, got %v", err)
	}
	if _, rows := consoleRows(ctx, t, con, "SHOW VERSION"); len(rows) != 1 {
		t.Errorf("the session does not go on after the extended-protocol error: %v", rows)
	}

	mon := connect(t, consoleURL(p, "mon", "monpw"))
	if _, rows := consoleRows(ctx, t, mon, "SHOW POOLS"); len(rows) != 1 {
		t.Errorf("stats user SHOW POOLS: %v", rows)
	}
	for _, cmd := range []string{"PAUSE", "RECONNECT app", "KILL", "SHUTDOWN"} {
		if err := consoleExec(ctx, mon, cmd); sqlState(err) != "42501" {
			t.Errorf("stats user %s: want 42501, got %v", cmd, err)
		}
	}
	if _, err := pgx.Connect(ctx, consoleURL(p, "app", "wrong")); sqlState(err) != "28P01" {
		t.Errorf("wrong console password: want 28P01, got %v", err)
	}
	// mon is a login of the database, but not of admin.users... only
	// stats; a login on neither list is refused like a wrong password.
	if _, err := tx.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
}

// TestAdminConsoleLoginLists: a login on neither admin list cannot enter
// the console even with its right password.
func TestAdminConsoleLoginLists(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_AUTH__USERS", "bob:bobpw"),
		WithEnv("PGSIDECAR_ADMIN__USERS", "bob"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pgx.Connect(ctx, consoleURL(p, "app", "app")); sqlState(err) != "28P01" {
		t.Errorf("app is not in admin.users: want 28P01, got %v", err)
	}
	bob := connect(t, consoleURL(p, "bob", "bobpw"))
	if err := consoleExec(ctx, bob, "RECONNECT"); err != nil {
		t.Errorf("admin.users login RECONNECT: %v", err)
	}
	// bob still reaches the database itself.
	if _, err := connect(t, p.URL("bob", "bobpw", "app")).Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("bob on app: %v", err)
	}
}

// TestAdminPauseResume: PAUSE waits for the transaction in flight, then
// holds pgx and pgbench clients (longer than acquire_timeout) without an
// error until RESUME; they all finish.
func TestAdminPauseResume(t *testing.T) {
	ensurePgbenchTables(t)
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "1s"))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	con := connect(t, consoleURL(p, "app", "app"))

	inflight := connect(t, p.AppURL())
	if _, err := inflight.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := inflight.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	paused := make(chan error, 1)
	go func() { paused <- consoleExec(ctx, con, "PAUSE app") }() // ends when PAUSE returns (the COMMIT below)
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned with a transaction in flight: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := inflight.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatalf("the transaction in flight goes on during PAUSE: %v", err)
	}
	if _, err := inflight.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-paused:
		if err != nil {
			t.Fatalf("PAUSE: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PAUSE did not return after the transaction ended")
	}

	// Held: pgx and pgbench, for twice acquire_timeout.
	var wg sync.WaitGroup
	var pgxErr error
	var pgxDone time.Time
	wg.Add(2)
	go func() { // ends when the query returns (after RESUME) or ctx ends
		defer wg.Done()
		_, pgxErr = inflight.Exec(ctx, "SELECT 3")
		pgxDone = time.Now()
	}()
	var benchOut string
	var benchErr error
	go func() { // ends when pgbench does (bounded by runPgbench)
		defer wg.Done()
		benchOut, benchErr = runPgbench(t, p.AppURL(), "-n", "-c", "2", "-t", "10", "-S")
	}()
	waitFor(t, 10*time.Second, "clients waiting in the paused pool", func() bool {
		names, rows := consoleRows(ctx, t, con, "SHOW POOLS")
		return column(t, names, rows[0], "cl_waiting").(int64) >= 2 && column(t, names, rows[0], "paused") == true
	})
	time.Sleep(2 * time.Second) // twice acquire_timeout: still no error
	resumedAt := time.Now()
	if err := consoleExec(ctx, con, "RESUME"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if pgxErr != nil || pgxDone.Before(resumedAt) {
		t.Errorf("pgx client: err %v, done %v before RESUME at %v", pgxErr, pgxDone, resumedAt)
	}
	if benchErr != nil || !strings.Contains(benchOut, "number of failed transactions: 0") {
		t.Errorf("pgbench through PAUSE: %v\n%s", benchErr, benchOut)
	}
}

// TestAdminReconnectKill: RECONNECT replaces every backend (new pids, the
// old ones gone from pg_stat_activity); KILL disconnects the database's
// clients with 57P01; an unknown database is 3D000.
func TestAdminReconnectKill(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	con := connect(t, consoleURL(p, "app", "app"))
	app := connect(t, p.AppURL())
	if _, err := app.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "min_size backends", func() bool { return len(serverPIDs(ctx, t, con)) >= 2 })
	old := serverPIDs(ctx, t, con)
	if err := consoleExec(ctx, con, "RECONNECT app"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if pid := proxyPID(ctx, t, app); slices.Contains(old, pid) {
			t.Fatalf("after RECONNECT a statement ran on old backend %d (old %v)", pid, old)
		}
	}
	direct := adminConn(t)
	waitFor(t, 10*time.Second, "old backends gone from pg_stat_activity", func() bool {
		var n int
		_ = direct.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", old).Scan(&n)
		return n == 0
	})
	for _, pid := range serverPIDs(ctx, t, con) {
		if slices.Contains(old, pid) {
			t.Errorf("SHOW SERVERS still lists old pid %d", pid)
		}
	}

	if err := consoleExec(ctx, con, "KILL nosuchdb"); sqlState(err) != "3D000" {
		t.Errorf("KILL nosuchdb: want 3D000, got %v", err)
	}
	if err := consoleExec(ctx, con, "KILL app"); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Exec(ctx, "SELECT 1"); sqlState(err) != "57P01" {
		t.Errorf("client of a KILLed database: want 57P01, got %v", err)
	}
	// The client is told 57P01 before its goroutine gives back its place
	// in the list, a moment later (as pg_stat_activity lags a
	// pg_terminate_backend): seen under a race-enabled proxy.
	waitFor(t, 5*time.Second, "SHOW CLIENTS empty after KILL", func() bool {
		_, rows := consoleRows(ctx, t, con, "SHOW CLIENTS")
		return len(rows) == 0
	})
	// The database still serves new clients, and the console survived.
	if _, err := connect(t, p.AppURL()).Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("new client after KILL: %v", err)
	}
}

// TestMaxBackendErrors: SQL errors are counted but never retire a
// backend; pool.max_backend_errors server errors of class XX do, at the
// release after the last one.
func TestMaxBackendErrors(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MAX_BACKEND_ERRORS", "2"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	con := connect(t, consoleURL(p, "app", "app"))
	app := connect(t, p.AppURL())
	pid := proxyPID(ctx, t, app)
	for range 3 {
		if _, err := app.Exec(ctx, "SELECT 1/0"); sqlState(err) != "22012" {
			t.Fatalf("want 22012, got %v", err)
		}
	}
	if got := proxyPID(ctx, t, app); got != pid {
		t.Fatalf("SQL errors retired the backend (%d -> %d)", pid, got)
	}
	raise := "DO $$BEGIN RAISE EXCEPTION 'simulated internal error' USING ERRCODE = 'XX000'; END$$"
	if _, err := app.Exec(ctx, raise); sqlState(err) != "XX000" {
		t.Fatalf("want XX000, got %v", err)
	}
	// The counts reach the pool when the backend is released, which may
	// be a moment after the client has its reply.
	var names []string
	var rows [][]any
	waitFor(t, 5*time.Second, "SHOW SERVERS: errors 1, sql_errors 4 after 3 SQL errors and 1 XX000", func() bool {
		names, rows = consoleRows(ctx, t, con, "SHOW SERVERS")
		return len(rows) == 1 && column(t, names, rows[0], "errors").(int64) == 1 && column(t, names, rows[0], "sql_errors").(int64) == 4
	})
	if got := proxyPID(ctx, t, app); got != pid {
		t.Fatalf("one error retired the backend with max_backend_errors 2 (%d -> %d)", pid, got)
	}
	if _, err := app.Exec(ctx, raise); sqlState(err) != "XX000" {
		t.Fatalf("want XX000, got %v", err)
	}
	waitFor(t, 5*time.Second, "the backend retired after its second error", func() bool {
		return !slices.Contains(serverPIDs(ctx, t, con), pid)
	})
	if got := proxyPID(ctx, t, app); got == pid {
		t.Errorf("the backend (pid %d) survived max_backend_errors 2", pid)
	}
	pools := statsPools(p.Stats(t))
	if r, _ := pools[0]["retired"].(map[string]any); r == nil || r["error"] != float64(1) {
		t.Errorf("/stats retired: %v", pools[0]["retired"])
	}
}

// adminPost sends POST path with token (none when "") and returns the
// status and body.
func adminPost(t *testing.T, p *Proxy, path, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.HealthAddr+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminHTTP: /pools, /clients, /servers read as JSON; the writes are
// 401 without the token (and when none is configured), 200 with it;
// POST /admin/resume resets an open circuit breaker (a connect happens at
// once instead of after the 30 s backoff).
func TestAdminHTTP(t *testing.T) {
	down, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	p := StartProxy(t,
		WithEnv("PGSIDECAR_ADMIN__HTTP_TOKEN", "s3cret"),
		WithEnv("PGSIDECAR_DATABASES__DOWN__URL", "postgres://app:app@127.0.0.1:"+strconv.Itoa(down)+"/app?sslmode=disable"),
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF", "30s"),
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF_MAX", "30s"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app := connect(t, p.AppURL())
	if _, err := app.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	pid := proxyPID(ctx, t, app)

	get := func(path string, v any) { getJSONInto(t, p, path, v) }
	var servers []map[string]any
	get("/servers", &servers)
	found := false
	for _, s := range servers {
		if s["pid"] == float64(pid) && s["state"] == "active" {
			found = true
		}
	}
	if !found {
		t.Errorf("/servers has no active pid %d: %v", pid, servers)
	}
	var clients []map[string]any
	get("/clients", &clients)
	if len(clients) != 1 || clients[0]["state"] != "active" || clients[0]["database"] != "app" {
		t.Errorf("/clients: %v", clients)
	}
	var pools []map[string]any
	get("/pools", &pools)
	if len(pools) != 2 {
		t.Errorf("/pools: %v", pools)
	}
	if _, err := app.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}

	for _, path := range []string{"/admin/reload", "/admin/pause", "/admin/resume", "/admin/reconnect"} {
		if code, body := adminPost(t, p, path, ""); code != http.StatusUnauthorized {
			t.Errorf("POST %s without token: %d %s", path, code, body)
		}
		if code, body := adminPost(t, p, path, "wrong"); code != http.StatusUnauthorized {
			t.Errorf("POST %s with a wrong token: %d %s", path, code, body)
		}
	}
	if code, body := adminPost(t, p, "/admin/pause?db=nosuch", "s3cret"); code != http.StatusBadRequest {
		t.Errorf("pause of an unknown database: %d %s", code, body)
	}
	if code, body := adminPost(t, p, "/admin/pause?db=app", "s3cret"); code != http.StatusOK || !strings.Contains(body, `"held":0`) {
		t.Errorf("POST /admin/pause: %d %s", code, body)
	}
	get("/pools", &pools)
	if pools[0]["database"] != "app" || pools[0]["paused"] != true {
		t.Errorf("/pools after pause: %v", pools[0])
	}

	// The down database's circuit is open; its next reconnect attempt is 30 s away.
	connectErrors := func() float64 {
		for _, pl := range statsPools(p.Stats(t)) {
			if pl["database"] == "down" {
				v, _ := num(pl, "connect_errors")
				return v
			}
		}
		t.Fatal("no pool for database down")
		return 0
	}
	waitFor(t, 10*time.Second, "database down UNHEALTHY", func() bool { return connectErrors() >= 1 })
	before := connectErrors()
	time.Sleep(300 * time.Millisecond)
	if connectErrors() != before {
		t.Fatalf("connects not backing off: %v -> %v", before, connectErrors())
	}
	if code, body := adminPost(t, p, "/admin/resume", "s3cret"); code != http.StatusOK {
		t.Errorf("POST /admin/resume: %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "a connect right after the circuit breaker reset", func() bool { return connectErrors() > before })
	get("/pools", &pools)
	if pools[0]["paused"] != false {
		t.Errorf("/pools after resume: %v", pools[0])
	}
	if _, err := app.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("query after HTTP resume: %v", err)
	}
	if code, body := adminPost(t, p, "/admin/reconnect", "s3cret"); code != http.StatusOK {
		t.Errorf("POST /admin/reconnect: %d %s", code, body)
	}
	if got := proxyPID(ctx, t, app); got == pid {
		t.Errorf("after /admin/reconnect a statement ran on the old backend %d", pid)
	}
	if code, body := adminPost(t, p, "/admin/reload", "s3cret"); code != http.StatusOK {
		t.Errorf("POST /admin/reload: %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "reload logged", func() bool { return p.Logs.Contains("configuration reloaded") })
}

// TestAdminHTTPNoToken: without admin.http_token every write is 401.
func TestAdminHTTPNoToken(t *testing.T) {
	p := StartProxy(t)
	for _, tok := range []string{"", "anything"} {
		if code, body := adminPost(t, p, "/admin/pause", tok); code != http.StatusUnauthorized {
			t.Errorf("POST /admin/pause (token %q) without admin.http_token: %d %s", tok, code, body)
		}
	}
}

// TestAdminReloadShutdown: RELOAD re-reads the configuration; SHUTDOWN
// drains and the process exits 0.
func TestAdminReloadShutdown(t *testing.T) {
	p := StartProxy(t)
	out, err := runPsql(t, consoleURL(p, "app", "app"), "-c", "RELOAD")
	if err != nil || !strings.Contains(out, "RELOAD") {
		t.Fatalf("RELOAD: %v %s", err, out)
	}
	waitFor(t, 5*time.Second, "reload logged", func() bool { return p.Logs.Contains("configuration reloaded") })
	if _, err := runPsql(t, consoleURL(p, "app", "app"), "-c", "SHUTDOWN"); err != nil {
		t.Fatalf("SHUTDOWN: %v", err)
	}
	code, err := p.Wait(15 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("after SHUTDOWN: exit %d, %v", code, err)
	}
}

// TestAdminConsoleWildcard: databases opened by a "*" entry are in SHOW
// POOLS and SHOW SERVERS and take PAUSE, RESUME and RECONNECT by name.
func TestAdminConsoleWildcard(t *testing.T) {
	p := wildcardProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connect(t, p.URL("app", "app", "postgres")) // opens the pool of "postgres"
	pid := proxyPID(ctx, t, c)
	con := connect(t, consoleURL(p, "app", "app"))
	names, rows := consoleRows(ctx, t, con, "SHOW POOLS")
	var dbs []string
	for _, r := range rows {
		dbs = append(dbs, column(t, names, r, "database").(string))
	}
	if !slices.Contains(dbs, "postgres") {
		t.Errorf("SHOW POOLS lists %v, not the \"*\" database postgres", dbs)
	}
	names, rows = consoleRows(ctx, t, con, "SHOW SERVERS")
	found := false
	for _, r := range rows {
		if column(t, names, r, "pid").(int64) == pid && column(t, names, r, "database") == "postgres" {
			found = true
		}
	}
	if !found {
		t.Errorf("SHOW SERVERS has no postgres backend %d: %v", pid, rows)
	}
	for _, cmd := range []string{"PAUSE postgres", "RESUME postgres", "RECONNECT postgres"} {
		if err := consoleExec(ctx, con, cmd); err != nil {
			t.Errorf("%s: %v", cmd, err)
		}
	}
	if got := proxyPID(ctx, t, c); got == pid {
		t.Errorf("after RECONNECT postgres a statement ran on the old backend %d", pid)
	}
}

// TestAdminClientsApplicationName: SHOW CLIENTS and /clients show a
// client's application_name as it is now, as pg_stat_activity does for a
// direct connection: the startup value, then what the client SETs, a SET
// LOCAL until its transaction ends, and the startup value again after a
// RESET. The same steps run on a direct connection in the same test, in
// both pool modes.
func TestAdminClientsApplicationName(t *testing.T) {
	steps := []string{
		"",
		"SET application_name = 'app_set'",
		"BEGIN; SET LOCAL application_name = 'app_local'",
		"COMMIT",
		"RESET application_name",
		"SET application_name TO DEFAULT",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// What PostgreSQL shows after each step, straight.
	direct := connect(t, txDirectURL()+"&application_name=app_start")
	var directPID int64
	if err := direct.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&directPID); err != nil {
		t.Fatal(err)
	}
	watcher := adminConn(t)
	var want []string
	for _, step := range steps {
		if step != "" {
			if _, err := direct.Exec(ctx, step, pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatalf("direct %q: %v", step, err)
			}
		}
		var name string
		if err := watcher.QueryRow(ctx, "SELECT application_name FROM pg_stat_activity WHERE pid = $1", directPID).Scan(&name); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	if !slices.Equal(want, []string{"app_start", "app_set", "app_local", "app_set", "app_start", "app_start"}) {
		t.Fatalf("direct: pg_stat_activity showed %v; the test's expectation of PostgreSQL is wrong", want)
	}

	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MODE", mode))
			con := connect(t, consoleURL(p, "app", "app"))
			app := connect(t, p.AppURL()+"&application_name=app_start")
			for i, step := range steps {
				if step != "" {
					if _, err := app.Exec(ctx, step, pgx.QueryExecModeSimpleProtocol); err != nil {
						t.Fatalf("%q: %v", step, err)
					}
				}
				names, rows := consoleRows(ctx, t, con, "SHOW CLIENTS")
				if len(rows) != 1 {
					t.Fatalf("after %q: SHOW CLIENTS want the one client, got %v", step, rows)
				}
				if got := column(t, names, rows[0], "application_name"); got != want[i] {
					t.Errorf("after %q: SHOW CLIENTS application_name %q, directly %q", step, got, want[i])
				}
				if got := clientsAppNames(t, p); !slices.Equal(got, []string{want[i]}) {
					t.Errorf("after %q: /clients application_name %v, directly %q", step, got, want[i])
				}
			}
		})
	}
}

// clientsAppNames is the application_name of every client GET /clients
// lists.
func clientsAppNames(t *testing.T, p *Proxy) []string {
	t.Helper()
	var clients []struct {
		ApplicationName string `json:"application_name"`
	}
	getJSONInto(t, p, "/clients", &clients)
	var names []string
	for _, c := range clients {
		names = append(names, c.ApplicationName)
	}
	return names
}

// getJSONInto decodes GET path of p's health listener into v; anything
// but a 200 with JSON fails t.
func getJSONInto(t *testing.T, p *Proxy, path string, v any) {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.HealthAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", path, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// TestAdminConsoleLeavesStartupCount: a console session that has logged in
// is no longer "logging in": it leaves clients_logging_in and frees its
// pool.max_startup_conn slot, as a client's login does, so a few
// monitoring sessions held open cannot get applications refused with 53300.
func TestAdminConsoleLeavesStartupCount(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_STARTUP_CONN", "2"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	loggingIn := func() float64 {
		clients, _ := p.Stats(t)["clients"].(map[string]any)
		n, _ := num(clients, "clients_logging_in")
		return n
	}
	consoles := []*pgx.Conn{connect(t, consoleURL(p, "app", "app")), connect(t, consoleURL(p, "app", "app"))}
	for _, c := range consoles {
		consoleRows(ctx, t, c, "SHOW STATE")
	}
	deadline := time.Now().Add(5 * time.Second)
	for loggingIn() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("two console sessions logged in: clients_logging_in %v, want 0", loggingIn())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Both max_startup_conn slots are free: two clients log in at once.
	for i := 0; i < 2; i++ {
		c, err := pgx.Connect(ctx, p.URL("app", "app", "app"))
		if err != nil {
			t.Fatalf("client %d with two console sessions open: %v", i, err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
}
