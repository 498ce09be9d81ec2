// Cluster, a throwaway PostgreSQL cluster for tests (create, start, stop,
// URLs, server log, TLS); also PostgreSQL's programs found (FindClient) and
// an environment without PG* variables (CleanEnv).

package testpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// pgDefaultBinDir is where Debian's postgresql-15 package puts the server
// binaries; they are not on PATH there.
const pgDefaultBinDir = "/usr/lib/postgresql/15/bin"

// clusterReadyTimeout bounds how long the postmaster may take to accept
// connections after a start.
const clusterReadyTimeout = 30 * time.Second

// clusterStopTimeout bounds a fast shutdown before the postmaster is sent
// SIGQUIT (immediate shutdown).
const clusterStopTimeout = 30 * time.Second

// Cluster is a throwaway PostgreSQL cluster: initdb into a temporary
// directory, listening on 127.0.0.1:Port and on a unix socket inside that
// directory. It has a role "app" (password "app", LOGIN CREATEDB) owning a
// database "app"; the superuser "postgres" can log in over the unix socket
// without a password (AdminURL). TCP logins need SCRAM-SHA-256.
type Cluster struct {
	// Port is the TCP port, kept across Stop and Start.
	Port int
	// Host is the TCP address the cluster listens on (127.0.0.1).
	Host string
	// Dir is the temporary directory: data/ inside it, the unix socket in
	// it, postgres.log beside data/.
	Dir string

	binDir  string
	dataDir string
	logPath string
	cred    *syscall.Credential // nil when not running as root

	mu   sync.Mutex
	proc *postmaster // the running postmaster, nil when stopped
}

// postmaster is one run of the server process.
type postmaster struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	err  error         // cmd.Wait's result, valid after done is closed
}

// Start is StartCluster for a test: the cluster is destroyed at cleanup,
// and a cluster that cannot start (no PostgreSQL binaries, initdb failing)
// fails the test.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	c, err := StartCluster(tb)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// StartCluster creates, configures and starts a new cluster. With a non-nil
// tb it registers a cleanup that stops the cluster and removes its
// directory; from TestMain pass nil and call Destroy yourself.
func StartCluster(tb testing.TB) (*Cluster, error) {
	binDir, err := findPGBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Host: "127.0.0.1", binDir: binDir}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root, so the cluster belongs to the
		// postgres user and every server process is started with its ids.
		c.cred, err = postgresCredential()
		if err != nil {
			return nil, err
		}
	}
	// The unix socket path must stay under 107 bytes, so keep the
	// directory short: /tmp rather than a long TMPDIR.
	base := os.TempDir()
	if len(base) > 40 {
		base = "/tmp"
	}
	c.Dir, err = os.MkdirTemp(base, "pgsc-e2e-")
	if err != nil {
		return nil, fmt.Errorf("cluster: make temp dir: %w", err)
	}
	c.dataDir = filepath.Join(c.Dir, "data")
	c.logPath = filepath.Join(c.Dir, "postgres.log")
	if c.cred != nil {
		if err := os.Chown(c.Dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			_ = os.RemoveAll(c.Dir)
			return nil, fmt.Errorf("cluster: chown %s to postgres: %w", c.Dir, err)
		}
	}
	if err := c.create(); err != nil {
		_ = os.RemoveAll(c.Dir)
		return nil, err
	}
	if tb != nil {
		tb.Cleanup(func() {
			if err := c.Destroy(); err != nil {
				tb.Errorf("cluster: destroy: %v", err)
			}
		})
	}
	return c, nil
}

// create runs initdb, writes the configuration, starts the server and
// creates the app role and database.
func (c *Cluster) create() error {
	port, err := FreePort()
	if err != nil {
		return fmt.Errorf("cluster: pick a port: %w", err)
	}
	c.Port = port

	initdb := exec.Command(filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir, "-U", "postgres", "-E", "UTF8", "--no-locale",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions")
	c.prepare(initdb)
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("cluster: initdb: %w\n%s", err, out)
	}

	conf := fmt.Sprintf(`
# pgsidecar e2e settings
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
log_min_messages = warning
log_connections = off
`, c.Port, c.Dir)
	if err := appendFile(filepath.Join(c.dataDir, "postgresql.conf"), conf); err != nil {
		return fmt.Errorf("cluster: write postgresql.conf: %w", err)
	}
	hba := "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(c.dataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return fmt.Errorf("cluster: write pg_hba.conf: %w", err)
	}
	if c.cred != nil {
		if err := os.Chown(filepath.Join(c.dataDir, "pg_hba.conf"), int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("cluster: chown pg_hba.conf: %w", err)
		}
	}

	if err := c.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.AdminURL())
	if err != nil {
		return fmt.Errorf("cluster: admin connect: %w", err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		`CREATE ROLE app LOGIN CREATEDB PASSWORD 'app'`,
		`CREATE DATABASE app OWNER app`,
	} {
		if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
			return fmt.Errorf("cluster: %s: %w", sql, err)
		}
	}
	return nil
}

// prepare makes cmd run as the cluster's owner, in the cluster directory,
// with an environment free of PG* variables that could redirect it.
func (c *Cluster) prepare(cmd *exec.Cmd) {
	cmd.Dir = c.Dir
	cmd.Env = CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
}

// Start starts the postmaster on the same port and data directory and waits
// until it accepts connections. It is an error to start a running cluster.
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		return errors.New("cluster: already running")
	}
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("cluster: open log: %w", err)
	}
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), "-D", c.dataDir)
	c.prepare(cmd)
	// The postmaster is our child, not a pg_ctl daemon: if the test binary
	// dies, the kernel tells the postmaster to shut down (SIGINT = fast
	// shutdown) instead of leaving a cluster behind.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("cluster: start postgres: %w", err)
	}
	logf.Close() // the child holds its own copy
	proc := &postmaster{cmd: cmd, done: make(chan struct{})}
	c.proc = proc
	// This goroutine is owned by the Cluster: it ends when the postmaster
	// exits, which Stop and Destroy bring about.
	go func() {
		proc.err = cmd.Wait()
		close(proc.done)
	}()

	deadline := time.Now().Add(clusterReadyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-proc.done:
			c.proc = nil
			return fmt.Errorf("cluster: postgres exited during start: %v\n%s", proc.err, c.LogTail(4000))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgconn.Connect(ctx, c.AdminURL())
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("cluster: not ready after %v: %w\n%s", clusterReadyTimeout, lastErr, c.LogTail(4000))
}

// Stop shuts the postmaster down with a fast shutdown (SIGINT: active
// sessions are terminated) and waits for it to exit. Stopping a stopped
// cluster is a no-op.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	proc := c.proc
	if proc == nil {
		return nil
	}
	if err := proc.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("cluster: signal postgres: %w", err)
	}
	var err error
	select {
	case <-proc.done:
	case <-time.After(clusterStopTimeout):
		_ = proc.cmd.Process.Signal(syscall.SIGQUIT)
		<-proc.done
		err = fmt.Errorf("cluster: fast shutdown took longer than %v; sent SIGQUIT", clusterStopTimeout)
	}
	c.proc = nil
	return err
}

// Running reports whether the postmaster is up (started and not exited).
func (c *Cluster) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return false
	}
	select {
	case <-c.proc.done:
		return false
	default:
		return true
	}
}

// Destroy stops the cluster and removes its directory.
func (c *Cluster) Destroy() error {
	err := c.Stop()
	if rmErr := os.RemoveAll(c.Dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("cluster: remove %s: %w", c.Dir, rmErr))
	}
	return err
}

// Addr is the cluster's TCP address, host:port, for a test that speaks
// the protocol itself.
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// URL is a TCP connection URL (SCRAM over 127.0.0.1) for user to db.
func (c *Cluster) URL(user, password, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     c.Addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// AdminURL is the superuser's URL over the unix socket (trust), to database
// postgres. pgx and libpq (psql, pgbench) both accept it.
func (c *Cluster) AdminURL() string {
	q := url.Values{}
	q.Set("host", c.Dir)
	q.Set("port", strconv.Itoa(c.Port))
	q.Set("sslmode", "disable")
	return "postgres://postgres@/postgres?" + q.Encode()
}

// AdminURLDB is AdminURL for another database.
func (c *Cluster) AdminURLDB(db string) string {
	return strings.Replace(c.AdminURL(), "@/postgres?", "@/"+url.PathEscape(db)+"?", 1)
}

// LogTail returns the last n bytes of the server log, for failure messages.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// findPGBinDir finds initdb and postgres: the Debian PostgreSQL 15 path,
// then pg_config --bindir, then PATH. Missing binaries are an error, never
// a skip, for every package's tests alike: CI installs them, and a test
// that silently skips proves nothing.
func findPGBinDir() (string, error) {
	candidates := []string{pgDefaultBinDir}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if IsExecutable(filepath.Join(dir, "initdb")) && IsExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("cluster: PostgreSQL server binaries (initdb, postgres) not found in %v: install postgresql-15", candidates)
}

// FindClient finds a client program (psql, pgbench) on PATH or beside the
// server binaries.
func FindClient(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p := filepath.Join(pgDefaultBinDir, name); IsExecutable(p) {
		return p, nil
	}
	return "", fmt.Errorf("%s not found on PATH or in %s: install postgresql-client", name, pgDefaultBinDir)
}

// IsExecutable reports whether path is an executable file.
func IsExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// postgresCredential returns the uid and gid of the postgres user.
func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("cluster: running as root needs a postgres user to own the cluster: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("cluster: postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("cluster: postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// CleanEnv is the environment without PG* and PGSIDECAR_* variables and
// DATABASE_URL, so the machine's settings cannot leak into a test.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "DATABASE_URL=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// sslReloadTimeout bounds how long EnableSSL waits for the
// postmaster to act on a reload.
const sslReloadTimeout = 10 * time.Second

// EnableSSL turns TLS on in a running cluster: it copies the server
// certificate and key (PEM files) into the cluster directory, owned by the
// server's user with mode 0600 as PostgreSQL demands of a key, sets
// ssl = on, trusts the client certificates caFile signs (ssl_ca_file, for
// pg_hba's clientcert and cert methods) unless caFile is empty, replaces
// pg_hba.conf with hba unless hba is empty, and reloads. It returns once a
// new session sees ssl = on, which also means the postmaster has read the
// new pg_hba.conf (one SIGHUP reloads both).
func (c *Cluster) EnableSSL(certFile, keyFile, caFile, hba string) error {
	files := map[string]string{}
	srcs := map[string]string{"server.crt": certFile, "server.key": keyFile}
	if caFile != "" {
		srcs["client-ca.crt"] = caFile
	}
	for name, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("cluster: ssl: %w", err)
		}
		dst := filepath.Join(c.Dir, name)
		if err := c.writeOwned(dst, b); err != nil {
			return err
		}
		files[name] = dst
	}
	conf := fmt.Sprintf("\n# EnableSSL\nssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n", files["server.crt"], files["server.key"])
	if caFile != "" {
		conf += fmt.Sprintf("ssl_ca_file = '%s'\n", files["client-ca.crt"])
	}
	if err := appendFile(filepath.Join(c.dataDir, "postgresql.conf"), conf); err != nil {
		return fmt.Errorf("cluster: ssl: write postgresql.conf: %w", err)
	}
	if hba != "" {
		if err := c.writeOwned(c.HBAFile(), []byte(hba)); err != nil {
			return err
		}
	}
	return c.reloadUntil(func(conn *pgconn.PgConn) bool {
		res, err := conn.Exec(context.Background(), "SHOW ssl").ReadAll()
		return err == nil && len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == "on"
	})
}

// HBAFile is the path of the cluster's pg_hba.conf.
func (c *Cluster) HBAFile() string { return filepath.Join(c.dataDir, "pg_hba.conf") }

// writeOwned writes a file only the server's user may read.
func (c *Cluster) writeOwned(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("cluster: write %s: %w", path, err)
	}
	if c.cred != nil {
		if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("cluster: chown %s: %w", path, err)
		}
	}
	return nil
}

// reloadUntil sends SIGHUP (pg_reload_conf) and polls new admin sessions
// until loaded reports the new configuration in force, for at most
// sslReloadTimeout: the reload is asynchronous, and a backend takes the
// configuration the postmaster had when it forked it.
func (c *Cluster) reloadUntil(loaded func(*pgconn.PgConn) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), sslReloadTimeout)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.AdminURL())
	if err != nil {
		return fmt.Errorf("cluster: reload: %w", err)
	}
	_, err = conn.Exec(ctx, "SELECT pg_reload_conf()").ReadAll()
	conn.Close(context.Background())
	if err != nil {
		return fmt.Errorf("cluster: reload: %w", err)
	}
	for ctx.Err() == nil {
		conn, err := pgconn.Connect(ctx, c.AdminURL())
		if err == nil {
			ok := loaded(conn)
			conn.Close(context.Background())
			if ok {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("cluster: the reload did not take effect within %v; server log:\n%s", sslReloadTimeout, c.LogTail(4000))
}
