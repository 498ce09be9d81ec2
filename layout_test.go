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

// TestImportRules checks the "must never import" column of ARCHITECTURE.md's
// package table against the packages' real imports. The table is the one
// home of the rules: a row whose package is one backquoted name and whose
// column names backquoted packages is checked; what the column says in
// parentheses (internal/config's exceptions) is prose, not a rule. Every
// package of the module must have a row, so a new one cannot skip it.
func TestImportRules(t *testing.T) {
	const mod = "github.com/pgsidecar/pgsidecar"
	doc, err := os.ReadFile("ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	never, rows := importRules(string(doc))
	for _, want := range []string{"pool", "proxy", "health", "internal/pgwire", "internal/lograte"} {
		if len(never[want]) == 0 {
			t.Errorf("ARCHITECTURE.md's package table gives no rule for %s (or the table no longer parses)", want)
		}
	}
	out, err := exec.Command("go", "list", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p, mod), "/")
		if rel != "" && rel != "test" && !strings.HasPrefix(rel, "test/") && !rows[rel] {
			t.Errorf("package %s has no row in ARCHITECTURE.md's package table", rel)
		}
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
}

// backquoted finds the `names` in a table cell.
var backquoted = regexp.MustCompile("`([^`]+)`")

// importRules reads the package table of ARCHITECTURE.md (the one under
// "## Packages"): rows holds every package with a row of its own, never
// the packages each must not import, by the backquoted names of the last
// column before any parenthesis.
func importRules(doc string) (never map[string][]string, rows map[string]bool) {
	never, rows = map[string][]string{}, map[string]bool{}
	_, table, _ := strings.Cut(doc, "## Packages\n")
	table, _, _ = strings.Cut(table, "\n## ")
	for line := range strings.SplitSeq(table, "\n") {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) < 3 {
			continue
		}
		name := strings.TrimSpace(cells[0])
		m := backquoted.FindStringSubmatch(name)
		if m == nil || m[0] != name {
			continue // the root, the header and its rule
		}
		rows[m[1]] = true
		rule, _, _ := strings.Cut(cells[len(cells)-1], "(")
		for _, b := range backquoted.FindAllStringSubmatch(rule, -1) {
			never[m[1]] = append(never[m[1]], b[1])
		}
	}
	return never, rows
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
