// Package buildinfo says which build of pgsidecar is running: the version
// and revision that `pgsidecar version`, the ready log line, /health and
// the pgsidecar_build_info metric report.
//
// The Makefile and the Dockerfile stamp both with
//
//	-ldflags "-X github.com/pgsidecar/pgsidecar/internal/buildinfo.version=$(git describe --tags --always --dirty)
//	          -X github.com/pgsidecar/pgsidecar/internal/buildinfo.revision=$(git rev-parse HEAD)"
//
// A plain `go build` or `go install` falls back to what the Go toolchain
// recorded: the module version, else the VCS revision. Never "(devel)":
// that says nothing about which code runs.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// Stamped by the linker (see the package comment); empty otherwise.
var (
	version  string
	revision string
)

// Unknown is reported when neither the linker nor the toolchain recorded
// anything (a build outside any VCS checkout, with -buildvcs=false).
const Unknown = "unknown"

// Info is what the running binary knows about its build.
type Info struct {
	Version   string // e.g. v1.2.0, v1.2.0-3-gabc1234-dirty, or abc1234def56
	Revision  string // full commit hash; the toolchain's adds "-dirty" for a modified tree (the Makefile's stamp, git rev-parse HEAD, does not)
	GoVersion string // e.g. go1.26.8
}

var get = sync.OnceValue(func() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return resolve(version, revision, bi)
})

// Get returns the running binary's build information.
func Get() Info { return get() }

// Version is Get().Version.
func Version() string { return get().Version }

// resolve picks the version and revision: the linker's values first, then
// the module version the toolchain stamped (a tagged `go install
// module@v1.2.0`, or the pseudo-version Go 1.24+ derives from the VCS),
// then the VCS revision itself.
func resolve(ldVersion, ldRevision string, bi *debug.BuildInfo) Info {
	info := Info{Version: ldVersion, Revision: ldRevision, GoVersion: runtime.Version()}
	var vcsRev string
	var modified bool
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				vcsRev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	dirty := ""
	if modified {
		dirty = "-dirty"
	}
	if info.Revision == "" && vcsRev != "" {
		info.Revision = vcsRev + dirty
	}
	if info.Version == "" && bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		info.Version = bi.Main.Version
	}
	if info.Version == "" && vcsRev != "" {
		info.Version = vcsRev[:min(12, len(vcsRev))] + dirty
	}
	if info.Version == "" {
		info.Version = Unknown
	}
	if info.Revision == "" {
		info.Revision = Unknown
	}
	return info
}
