package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// TestLogRedaction: no password reaches the log, whoever logs it.
func TestLogRedaction(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(&buf, "json", new(slog.LevelVar))
	log.Info("x", "user", config.UserConfig{Name: "alice", Password: "wonderland"}, "password", "hunter2", "db_password", "hunter3")
	if out := buf.String(); strings.Contains(out, "wonderland") || strings.Contains(out, "hunter2") ||
		strings.Contains(out, "hunter3") || !strings.Contains(out, "alice") {
		t.Errorf("log line leaks or loses data: %s", out)
	}
}

func TestLogging(t *testing.T) {
	var buf bytes.Buffer
	level := new(slog.LevelVar)
	level.Set(config.LogLevel("info").Slog())
	log := newLogger(&buf, "auto", level) // a buffer is no terminal: JSON
	log.Debug("hidden")
	log.Info("shown", "k", 1)
	level.Set(config.LogLevel("debug").Slog()) // what SIGHUP does
	log.Debug("now shown")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &m); err != nil || m["msg"] != "now shown" || m["level"] != "DEBUG" {
		t.Fatalf("second line %q: %v", lines[1], err)
	}

	buf.Reset()
	newLogger(&buf, "text", level).Warn("plain", "k", "v")
	if out := buf.String(); strings.HasPrefix(out, "{") || !strings.Contains(out, "plain") || strings.Contains(out, "\x1b[") {
		t.Fatalf("text format on a non-terminal = %q, want uncoloured text", out)
	}
}

// JSON logs carry durations as Go duration strings, at the top level, in
// groups and in With attributes; other kinds keep their JSON type.
func TestJSONLogDurationsAreStrings(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(&buf, "json", new(slog.LevelVar))
	log.With("took", 7*time.Millisecond).Info("msg",
		"wait", 1500*time.Millisecond,
		slog.Group("g", "d", 2*time.Minute+3*time.Second),
		"n", 42,
		"password", "secret")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("decode %q: %v", buf.String(), err)
	}
	g, _ := m["g"].(map[string]any)
	for _, c := range []struct {
		got  any
		want any
	}{
		{m["took"], "7ms"},
		{m["wait"], "1.5s"},
		{g["d"], "2m3s"},
		{m["n"], 42.0},
		{m["password"], config.Redacted},
	} {
		if c.got != c.want {
			t.Errorf("got %#v, want %#v in %s", c.got, c.want, buf.String())
		}
	}
	// Text logs (tint) already print durations as text.
	buf.Reset()
	newLogger(&buf, "text", new(slog.LevelVar)).Info("msg", "wait", 1500*time.Millisecond)
	if !strings.Contains(buf.String(), "wait=1.5s") {
		t.Errorf("text log: %q", buf.String())
	}
}
