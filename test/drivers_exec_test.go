package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Running the non-Go driver programs (node-postgres, JDBC) from the Go
// tests: each program prints one JSON line summarising what it checked.

// txDriverReport is the summary line the driver programs print.
type txDriverReport struct {
	Clients        int      `json:"clients"`
	Threads        int      `json:"threads"`
	Queries        int64    `json:"queries"`
	ExpectedErrors int64    `json:"expectedErrors"`
	ServerPrepared int      `json:"serverPrepared"`
	Failures       []string `json:"failures"`
	// Steps are the outcomes of a scenario (MODE=ddl) that the test
	// compares with the same run against PostgreSQL directly.
	Steps []string `json:"steps"`
}

// txRequireTool fails the test with an install hint when a program the
// driver tests need is missing. It never skips: CI installs these.
func txRequireTool(t *testing.T, name, install string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (%v): install it with %q (.ci/run does this)", name, err, install)
	}
	return path
}

// txRunDriver runs cmd (bounded by timeout), and returns the JSON report it
// printed last on stdout. A non-zero exit with a report is returned as the
// report (its failures say what went wrong); without one it fails the test.
func txRunDriver(t *testing.T, timeout time.Duration, dir string, env []string, name string, args ...string) txDriverReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start).Round(time.Millisecond)

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	last := lines[len(lines)-1]
	var rep txDriverReport
	if err := json.Unmarshal([]byte(last), &rep); err != nil {
		t.Fatalf("%s %s: no report after %v (exit: %v, parse: %v)\nstdout:\n%s\nstderr:\n%s",
			name, strings.Join(args, " "), elapsed, runErr, err, txTail(stdout.String()), txTail(stderr.String()))
	}
	var exitErr *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exitErr) {
		t.Fatalf("%s: %v after %v\nstderr:\n%s", name, runErr, elapsed, txTail(stderr.String()))
	}
	if ctx.Err() != nil {
		t.Fatalf("%s: killed after %v\nstderr:\n%s", name, timeout, txTail(stderr.String()))
	}
	if runErr != nil && len(rep.Failures) == 0 {
		t.Fatalf("%s exited with %v but reported no failure\nstderr:\n%s", name, runErr, txTail(stderr.String()))
	}
	t.Logf("%s: %d queries checked in %v", name, rep.Queries, elapsed)
	return rep
}

// txCheckReport fails t if rep has failures or checked fewer than
// minQueries queries or a different number of expected errors.
func txCheckReport(t *testing.T, what string, rep txDriverReport, minQueries, wantExpectedErrors int64) {
	t.Helper()
	if len(rep.Failures) > 0 {
		t.Errorf("%s: %d failure(s) reported:\n%s", what, len(rep.Failures), strings.Join(rep.Failures, "\n"))
	}
	if rep.Queries < minQueries {
		t.Errorf("%s: checked %d queries, want at least %d", what, rep.Queries, minQueries)
	}
	if rep.ExpectedErrors != wantExpectedErrors {
		t.Errorf("%s: saw %d of the %d deliberate errors", what, rep.ExpectedErrors, wantExpectedErrors)
	}
}

// txTail keeps the end of a long output for a failure message.
func txTail(s string) string {
	const max = 4000
	if len(s) > max {
		return fmt.Sprintf("...(%d bytes cut)...\n%s", len(s)-max, s[len(s)-max:])
	}
	return s
}
