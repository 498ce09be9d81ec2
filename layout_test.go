package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestRootIsTheCompositionRoot keeps the repository root to the few files
// that wire the packages together (ARCHITECTURE.md): a new subsystem gets
// a package, not a seventh root file.
func TestRootIsTheCompositionRoot(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var code []string
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			code = append(code, f)
		}
	}
	if len(code) > 6 {
		t.Errorf("the root holds %d non-test .go files %v; at most 6: move a subsystem into a package", len(code), code)
	}
}

// TestImportRules checks the "must never import" column of ARCHITECTURE.md
// against the packages' real imports.
func TestImportRules(t *testing.T) {
	const mod = "github.com/pgsidecar/pgsidecar"
	never := map[string][]string{
		"internal/pgwire":    {"pool", "proxy", "health", "internal/config"},
		"pool":               {"proxy", "health", "internal/config"},
		"proxy":              {"health", "internal/config"},
		"health":             {"proxy", "internal/config"},
		"internal/config":    {"pool", "health"},
		"internal/buildinfo": {"pool", "proxy", "health", "internal/config"},
		"internal/sockpeek":  {"pool", "proxy", "health", "internal/config"},
	}
	for pkg, banned := range never {
		out, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, "./"+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		for _, b := range banned {
			if slices.Contains(deps, mod+"/"+b) {
				t.Errorf("%s imports %s; ARCHITECTURE.md says it must not", pkg, b)
			}
		}
	}
	if _, err := os.Stat("ARCHITECTURE.md"); err != nil {
		t.Errorf("ARCHITECTURE.md: %v", err)
	}
}

// sqlstateLiteral matches a string literal shaped as a SQLSTATE of one of
// PostgreSQL's classes (errcodes.txt), such as "57P01".
var sqlstateLiteral = regexp.MustCompile(`"(0[0-9ABFLPZ]|2[0-9BDF]|3[489BDF]|4[024]|5[3-8]|72|F0|HV|P0|XX)[0-9A-Z]{3}"`)

// TestSQLStatesHaveOneHome keeps every SQLSTATE the code names in
// internal/pgwire/sqlstate.go: elsewhere, non-test code uses its constants.
func TestSQLStatesHaveOneHome(t *testing.T) {
	home := filepath.Join("internal", "pgwire", "sqlstate.go")
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || path == home {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(src), "\n") {
			if m := sqlstateLiteral.FindString(line); m != "" && !strings.HasPrefix(strings.TrimSpace(line), "//") {
				t.Errorf("%s:%d: SQLSTATE %s as a literal; use (or add) its constant in %s", path, i+1, m, home)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
