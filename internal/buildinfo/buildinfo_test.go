package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestResolve(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		name         string
		ldV, ldR     string
		bi           *debug.BuildInfo
		wantV, wantR string
	}{
		{"linker wins", "v1.2.0-3-gabc1234", "abc", &debug.BuildInfo{Main: debug.Module{Version: "v9"}, Settings: vcs(rev, "false")},
			"v1.2.0-3-gabc1234", "abc"},
		{"module version", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.3.0"}, Settings: vcs(rev, "false")},
			"v1.3.0", rev},
		{"devel falls back to the VCS revision", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "true")},
			"0123456789ab-dirty", rev + "-dirty"},
		{"no build info", "", "", nil, Unknown, Unknown},
		{"devel without VCS", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, Unknown, Unknown},
		{"linker version, VCS revision", "v2.0.0", "", &debug.BuildInfo{Settings: vcs(rev, "false")}, "v2.0.0", rev},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := resolve(tc.ldV, tc.ldR, tc.bi)
			if got.Version != tc.wantV || got.Revision != tc.wantR {
				t.Errorf("resolve = %q, %q; want %q, %q", got.Version, got.Revision, tc.wantV, tc.wantR)
			}
			if got.GoVersion == "" {
				t.Error("no Go version")
			}
		})
	}
}

// The test binary itself is a build without ldflags: whatever it reports,
// it is never the toolchain's placeholder.
func TestGetNeverDevel(t *testing.T) {
	if v := Version(); v == "" || v == "(devel)" {
		t.Errorf("Version() = %q", v)
	}
}
