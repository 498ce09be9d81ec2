package main

import (
	"os"
	"os/exec"
	"path/filepath"
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
