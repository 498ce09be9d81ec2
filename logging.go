// The process logger: JSON or text by log.format, passwords redacted,
// durations written as text in JSON.

package main

import (
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/lmittmann/tint"
	"github.com/mattn/go-isatty"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// newLogger builds the process logger for log.format. The level lives in
// level so a SIGHUP can change it without rebuilding the handler.
func newLogger(w io.Writer, format config.LogFormat, level *slog.LevelVar) *slog.Logger {
	terminal := isTerminal(w)
	if format == config.LogJSON || (format == config.LogAuto && !terminal) {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
			Level:       level,
			ReplaceAttr: jsonAttr,
		}))
	}
	return slog.New(tint.NewTextHandler(w, &tint.Options{
		Level:       level,
		ReplaceAttr: redactAttr,
		TimeFormat:  time.DateTime + ".000",
		NoColor:     !terminal,
	}))
}

// isTerminal reports whether w is a terminal (colours and human-readable
// text make sense there, JSON elsewhere).
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
}

// redactAttr is the last line of defence against a password in the log: any
// attribute whose key mentions a password is replaced, whoever logged it.
func redactAttr(_ []string, a slog.Attr) slog.Attr {
	if strings.Contains(strings.ToLower(a.Key), "password") && a.Value.Kind() != slog.KindGroup {
		return slog.String(a.Key, config.Redacted)
	}
	return a
}

// jsonAttr is redactAttr plus durations as text: slog's JSON handler writes
// a time.Duration as integer nanoseconds ("took":7000000), which a person
// misreads and a log pipeline cannot tell from a count; "7ms" is both
// readable and parseable (time.ParseDuration, or any Go-style parser).
func jsonAttr(groups []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return redactAttr(groups, a)
}
