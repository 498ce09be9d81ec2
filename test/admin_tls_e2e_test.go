package e2e

import (
	"context"
	"net/url"
	"testing"
	"time"
)

// Console result columns and the type OIDs psql and drivers decode them
// by (PostgreSQL's pg_type).
const (
	oidBool        = 16
	oidInt8        = 20
	oidText        = 25
	oidFloat8      = 701
	oidTimestamptz = 1184
)

// TestAdminServersTLSUpstream: SHOW SERVERS says which backends use TLS
// to the database, and PostgreSQL's pg_stat_ssl agrees for each pid; the
// columns the issue lists are there, each with its type in the
// RowDescription (int8 counts, timestamptz times, bool flags), as psql
// and every driver decode them.
func TestAdminServersTLSUpstream(t *testing.T) {
	s := newTLSSetup(t)
	c, _ := startSSLCluster(t, s)
	u, _ := url.Parse(c.URL("app", "app", "app"))
	q := u.Query()
	q.Set("sslmode", "require")
	u.RawQuery = q.Encode()
	p := StartProxy(t, WithEnv("DATABASE_URL", u.String()), WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := connect(t, p.AppURL())
	pid := proxyPID(ctx, t, app)

	con := connect(t, consoleURL(p, "app", "app"))
	var rows [][]any
	var names []string
	waitFor(t, 10*time.Second, "min_size 2 backends in SHOW SERVERS", func() bool {
		names, rows = consoleRows(ctx, t, con, "SHOW SERVERS")
		return len(rows) >= 2
	})
	direct := connect(t, c.AdminURL())
	seen := false
	for _, r := range rows {
		bpid := column(t, names, r, "pid").(int64)
		seen = seen || bpid == pid
		var ssl bool
		if err := direct.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = $1", bpid).Scan(&ssl); err != nil {
			t.Fatalf("pg_stat_ssl for pid %d: %v", bpid, err)
		}
		if got := column(t, names, r, "tls"); got != ssl || !ssl {
			t.Errorf("pid %d: SHOW SERVERS tls %v, pg_stat_ssl %v; want both true (sslmode=require)", bpid, got, ssl)
		}
	}
	if !seen {
		t.Errorf("SHOW SERVERS has no row for the backend that served the client (pid %d): %v", pid, rows)
	}

	// The RowDescription, read raw: every column typed.
	want := map[string]uint32{
		"pid": oidInt8, "database": oidText, "user": oidText, "state": oidText,
		"created": oidTimestamptz, "last_used": oidTimestamptz, "transactions": oidInt8, "queries": oidInt8,
		"errors": oidInt8, "sql_errors": oidInt8, "validated": oidTimestamptz, "validate_ms": oidFloat8,
		"tls": oidBool, "recycle": oidBool,
	}
	res, err := con.PgConn().Exec(ctx, "SHOW SERVERS").ReadAll()
	if err != nil || len(res) != 1 {
		t.Fatalf("SHOW SERVERS over pgconn: %v", err)
	}
	got := map[string]uint32{}
	for _, f := range res[0].FieldDescriptions {
		got[f.Name] = f.DataTypeOID
	}
	for name, oid := range want {
		if got[name] != oid {
			t.Errorf("SHOW SERVERS column %s: type OID %d, want %d", name, got[name], oid)
		}
	}
}
