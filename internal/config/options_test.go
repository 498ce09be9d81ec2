package config

import (
	"bufio"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestOptionTableCoversConfig: every field of Config is exactly one
// option, and every option names a field.
func TestOptionTableCoversConfig(t *testing.T) {
	d := Defaults()
	fields := slices.Sorted(maps.Keys(flatten(&d)))
	var keys []string
	seen := map[string]bool{}
	for _, o := range Options {
		if seen[o.Key] {
			t.Errorf("option %s is listed twice", o.Key)
		}
		seen[o.Key] = true
		keys = append(keys, o.Key)
		if o.PerDatabase && !strings.HasPrefix(o.Key, "pool.") {
			t.Errorf("option %s: only pool.* options can be per database", o.Key)
		}
		if o.PerDatabase && o.Reload == Restart {
			t.Errorf("option %s: a per-database option a reload cannot change", o.Key)
		}
		if o.Doc == "" || !strings.HasSuffix(o.Doc, ".") {
			t.Errorf("option %s: doc line %q must be a sentence", o.Key, o.Doc)
		}
		field(reflect.ValueOf(&d).Elem(), o.Key) // panics on a key that names no field
	}
	slices.Sort(keys)
	if !slices.Equal(fields, keys) {
		t.Fatalf("Config fields and Options differ:\n fields  %v\n options %v", fields, keys)
	}
}

// readmeRow is the README option table's row for o.
func readmeRow(o Option) string {
	when := map[OnReload]string{Live: "live", Restart: "restart", PerEntry: "entries: restart; their users and pool overrides: live"}[o.Reload]
	doc := strings.TrimSuffix(o.Doc, ".") + " (" + when + ")."
	return "| `" + o.Key + "` | `" + o.Default + "` | " + doc + " |"
}

// TestREADMEOptionTable: the README's option table is the option table,
// row for row.
func TestREADMEOptionTable(t *testing.T) {
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []string
	in := false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case line == "| option | default | meaning |":
			in = true
		case in && strings.HasPrefix(line, "|---"):
		case in && strings.HasPrefix(line, "|"):
			rows = append(rows, line)
		case in:
			in = false
		}
	}
	want := make([]string, len(Options))
	for i, o := range Options {
		want[i] = readmeRow(o)
	}
	if !slices.Equal(rows, want) {
		t.Errorf("README option table differs from Options; it should read:\n%s", strings.Join(want, "\n"))
	}
}

// TestRepoConfigYAMLRestartMarks: config.yaml marks "(restart)" exactly
// the options a reload cannot change, in the comment above each key.
func TestRepoConfigYAMLRestartMarks(t *testing.T) {
	b, err := os.ReadFile(repoConfigYAML)
	if err != nil {
		t.Fatal(err)
	}
	var comment []string
	section := ""
	found := map[string]bool{}
	for line := range strings.SplitSeq(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			comment = append(comment, trimmed)
			continue
		}
		name, _, ok := strings.Cut(trimmed, ":")
		if !ok || strings.Contains(name, " ") {
			comment = nil
			continue
		}
		key := name
		if strings.HasPrefix(line, " ") {
			key = section + "." + name
		} else {
			section = name
		}
		if o, ok := option(key); ok {
			found[key] = true
			text := strings.Join(comment, " ")
			switch o.Reload {
			case Restart:
				if !strings.Contains(text, "(restart)") {
					t.Errorf("config.yaml: %s needs a restart but its comment does not say (restart)", key)
				}
			case Live:
				if strings.Contains(text, "(restart)") {
					t.Errorf("config.yaml: %s is applied live but its comment says (restart)", key)
				}
			case PerEntry:
				if !strings.Contains(text, "needs a restart") || !strings.Contains(text, "change live") {
					t.Errorf("config.yaml: %s: its comment must say which changes need a restart and which apply live", key)
				}
			}
		}
		comment = nil
	}
	for _, o := range Options {
		if !found[o.Key] {
			t.Errorf("config.yaml does not write out %s", o.Key)
		}
	}
}
