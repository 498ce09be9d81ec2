package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// pgBinDir is where the PostgreSQL 15 server binaries live here.
const pgBinDir = "/usr/lib/postgresql/15/bin"

// testPostgres starts a throwaway PostgreSQL owned by the test: initdb in
// a temp dir, the postmaster as a child process (run as the postgres user
// when the test runs as root), and role app / database app with password
// appPassword. It returns the upstream URL. Cleanup stops the server and
// removes the directory.
func testPostgres(t *testing.T, appPassword string) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBinDir, "initdb")); err != nil {
		t.Fatalf("PostgreSQL server binaries not found in %s (install postgresql-15): %v", pgBinDir, err)
	}
	dir, err := os.MkdirTemp("", "pgsidecar-main-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs a postgres user to own the cluster: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	prepare := func(cmd *exec.Cmd) {
		cmd.Dir = dir
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(pgBinDir, "initdb"), "-D", data, "-U", "postgres", "-E", "UTF8",
		"--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions", "--no-sync")
	prepare(initdb)
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	pgLog := filepath.Join(dir, "postgres.log")
	logf, err := os.Create(pgLog)
	if err != nil {
		t.Fatal(err)
	}
	postgres := exec.Command(filepath.Join(pgBinDir, "postgres"), "-D", data, "-p", strconv.Itoa(port),
		"-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "password_encryption=scram-sha-256")
	prepare(postgres)
	postgres.Stdout, postgres.Stderr = logf, logf
	if err := postgres.Start(); err != nil {
		logf.Close()
		t.Fatalf("start postgres: %v", err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { _ = postgres.Wait(); close(exited) }() // ends when the postmaster exits (cleanup below)
	t.Cleanup(func() {
		_ = postgres.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = postgres.Process.Kill()
			<-exited
		}
	})

	// Local connections are trusted: the admin connects over the socket.
	admin := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", dir, port)
	deadline := time.Now().Add(30 * time.Second)
	var conn *pgconn.PgConn
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err = pgconn.Connect(ctx, admin)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(pgLog)
			t.Fatalf("postgres not ready: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, sql := range []string{
		"CREATE ROLE app LOGIN PASSWORD '" + strings.ReplaceAll(appPassword, "'", "''") + "'",
		"CREATE DATABASE app OWNER app",
	} {
		if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	return fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/app?sslmode=disable", appPassword, port)
}
