// Package testpg holds the helpers tests share: an isolated libpq
// environment, temporary config files, a throwaway PostgreSQL cluster,
// polling and log capture. Only _test.go files import it.
package testpg

import (
	"os"
	"path/filepath"
	"testing"
)

// IsolatePG keeps the machine's libpq environment (PGPASSWORD, ~/.pgpass,
// ...) out of pgconn.ParseConfig, so results depend on the test alone.
func IsolatePG(t testing.TB) {
	t.Helper()
	for _, k := range []string{"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE",
		"PGAPPNAME", "PGCONNECT_TIMEOUT", "PGSERVICE", "PGOPTIONS", "PGTARGETSESSIONATTRS"} {
		t.Setenv(k, "")
	}
	t.Setenv("PGPASSFILE", filepath.Join(t.TempDir(), "no-pgpass"))
	t.Setenv("PGSERVICEFILE", filepath.Join(t.TempDir(), "no-service"))
}

// WriteYAML writes body to a config file in a temporary directory and
// returns its path.
func WriteYAML(t testing.TB, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
