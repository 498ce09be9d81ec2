// Command pgsidecar is a PostgreSQL connection-pooling proxy: clients
// connect to it as to PostgreSQL, and it multiplexes them onto a few
// pooled backend connections per (database, user).
//
// Usage:
//
//	pgsidecar [-config PATH] [-pprof ADDR]   run the proxy (-pprof: Go's
//	                                         /debug/pprof/ on a loopback ADDR, off by default)
//	pgsidecar version                        print the build's version and exit
//	pgsidecar healthcheck [-url URL] [-config PATH] [-timeout D]
//	                                         exit 0 if the health listener answers 200, else 1
//	pgsidecar hash-password                  read a password on stdin, print its SCRAM
//	                                         verifier (for auth.users or a password_file)
//
// Configuration comes from defaults, the YAML file (./config.yaml when it
// exists and -config is not given), PGSIDECAR_* environment variables
// (PGSIDECAR_POOL__MAX_SIZE=5 sets pool.max_size) and DATABASE_URL, in that
// order of precedence. SIGTERM or SIGINT drains and exits; a second one
// closes every client at once. SIGHUP reloads the configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pgsidecar/pgsidecar/internal/buildinfo"
	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/pprofserver"
	"github.com/pgsidecar/pgsidecar/proxy"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Environ(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pgsidecar:", err)
		os.Exit(1)
	}
}

// run is the whole program: it parses args, loads the configuration from
// the file and environ, logs to stdout, and serves until a signal (or ctx)
// ends it. It returns nil after a clean drain, even one whose
// shutdown_timeout forced clients closed (that is logged).
func run(ctx context.Context, args []string, environ []string, stdout io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			if len(args) > 1 {
				return fmt.Errorf("version: unexpected argument %q", args[1])
			}
			printVersion(stdout)
			return nil
		case "healthcheck":
			return healthcheck(ctx, args[1:], environ, stdout)
		case "hash-password":
			if len(args) > 1 {
				// Not quoted: it may be the password itself.
				return errors.New("hash-password takes no argument: the password is read on stdin, never from the command line")
			}
			return hashPassword(os.Stdin, stdout)
		}
	}
	fs := flag.NewFlagSet("pgsidecar", flag.ContinueOnError)
	fs.SetOutput(stdout)
	configFlag := fs.String("config", "", "path of the YAML configuration file (default ./config.yaml if it exists; also "+config.EnvConfigPath+")")
	showVersion := fs.Bool("version", false, "print the version and exit")
	pprofAddr := fs.String("pprof", "", "serve Go's /debug/pprof/ on this loopback address (e.g. 127.0.0.1:6060) for profiling; off when empty")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (commands: version, healthcheck, hash-password; see -h)", fs.Arg(0))
	}
	if *showVersion {
		printVersion(stdout)
		return nil
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })

	path, err := config.Path(*configFlag, explicit, environ)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path, environ)
	if err != nil {
		return err
	}

	if *pprofAddr != "" {
		p, err := pprofserver.Start(*pprofAddr)
		if err != nil {
			return err
		}
		defer p.Close()
	}

	// Subscribe before start builds the pools and listeners, so a signal
	// during start-up is queued rather than killing the process half-built.
	// signal.Notify drops a signal whose channel is full, so SIGHUP has a
	// channel of its own: SIGHUPs sent faster than reloads run fold into
	// the one pending (the next reload reads the latest files anyway) and
	// can never crowd out a SIGTERM (TestReloadSIGHUPBurstThenSIGTERM).
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigc)
	hupc := make(chan os.Signal, 1)
	signal.Notify(hupc, syscall.SIGHUP)
	defer signal.Stop(hupc)

	a, err := start(cfg, path, environ, stdout)
	if err != nil {
		return err
	}
	// Whatever logs through the default logger (a library, or a component
	// built without one) gets the configured format and level too.
	slog.SetDefault(a.log)
	return a.wait(ctx, sigc, hupc)
}

// printVersion prints "pgsidecar VERSION (revision REV, GOVERSION)".
func printVersion(w io.Writer) {
	bi := buildinfo.Get()
	fmt.Fprintf(w, "pgsidecar %s (revision %s, %s)\n", bi.Version, bi.Revision, bi.GoVersion)
}

// maxPasswordInput bounds what hash-password reads: a password, not a file.
const maxPasswordInput = 64 << 10

// hashPassword reads a password from in (the whole input less one trailing
// newline, as a password_file is read; never from argv, which other users
// see in ps) and prints its SCRAM verifier, to put in auth.users, an
// auth.users_file line or a password_file instead of the password.
func hashPassword(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(io.LimitReader(in, maxPasswordInput+1))
	if err != nil {
		return fmt.Errorf("hash-password: reading stdin: %w", err)
	}
	if len(data) > maxPasswordInput {
		return fmt.Errorf("hash-password: stdin holds more than %d bytes; give one password", maxPasswordInput)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	switch {
	case pw == "":
		return errors.New("hash-password: no password on stdin (e.g. `pgsidecar hash-password < password.txt`)")
	case strings.ContainsAny(pw, "\r\n"):
		return errors.New("hash-password: stdin holds more than one line; give one password")
	}
	v, err := proxy.NewSCRAMVerifier(pw)
	if err != nil {
		return fmt.Errorf("hash-password: %w", err)
	}
	_, err = fmt.Fprintln(out, v)
	return err
}
