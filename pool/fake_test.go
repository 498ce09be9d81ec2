package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeDB is the upstream for unit tests: it counts connects and open
// servers (with the peak), can be taken down, and can hold connects.
type fakeDB struct {
	mu        sync.Mutex
	down      error         // connects fail with it when set
	gate      chan struct{} // connects wait for it to close when set
	nextPID   uint32
	open      int
	peakOpen  int
	attempts  int
	inflight  int
	peakConns int // peak of concurrent connect attempts
	servers   []*fakeServer
	failExec  func(*fakeServer) error // validation hook
	// sockets gives every new server a real socket (one end of a Unix
	// socketpair), so peekSocket has something to peek; the test plays
	// the database on the other end (fakeServer.peer).
	sockets bool
	// limit, when > 0, refuses a connect while that many servers are
	// open with 53300, as a role's CONNECTION LIMIT or max_connections
	// does.
	limit int
	// hang makes Exec wait for its ctx to end, as on a database that
	// stopped answering (a partition, a frozen host).
	hang atomic.Bool
}

func newFakeDB() *fakeDB { return &fakeDB{nextPID: 1000} }

func (db *fakeDB) setDown(err error) {
	db.mu.Lock()
	db.down = err
	db.mu.Unlock()
}

func (db *fakeDB) setLimit(n int) {
	db.mu.Lock()
	db.limit = n
	db.mu.Unlock()
}

func (db *fakeDB) setGate(g chan struct{}) {
	db.mu.Lock()
	db.gate = g
	db.mu.Unlock()
}

func (db *fakeDB) connect(ctx context.Context) (Server, error) {
	db.mu.Lock()
	db.attempts++
	db.inflight++
	db.peakConns = max(db.peakConns, db.inflight)
	gate := db.gate
	db.mu.Unlock()
	defer func() {
		db.mu.Lock()
		db.inflight--
		db.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.down != nil {
		return nil, db.down
	}
	if db.limit > 0 && db.open >= db.limit {
		return nil, &pgconn.PgError{Severity: "FATAL", Code: pgwire.CodeTooManyConnections,
			Message: fmt.Sprintf("too many connections for role %q", "u")}
	}
	db.nextPID++
	s := &fakeServer{db: db, pid: db.nextPID}
	if db.sockets {
		var err error
		if s.conn, s.peer, err = socketPair(); err != nil {
			return nil, err
		}
	}
	db.servers = append(db.servers, s)
	db.open++
	db.peakOpen = max(db.peakOpen, db.open)
	return s, nil
}

func (db *fakeDB) stats() (open, peakOpen, attempts, peakConns int) {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.open, db.peakOpen, db.attempts, db.peakConns
}

// fakeServer is one backend of a fakeDB.
type fakeServer struct {
	db       *fakeDB
	pid      uint32
	closed   atomic.Bool
	execs    atomic.Int64
	execFail atomic.Bool
	// conn and peer are the two ends of the socket when db.sockets is set.
	conn, peer net.Conn
}

// socketPair returns two connected Unix stream sockets. Made without a
// listener, so nothing blocks in accept (it also works in a synctest
// bubble).
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "fake-backend")
		c, err := net.FileConn(f) // dups the fd
		f.Close()
		if err != nil {
			if i == 1 {
				conns[0].Close()
			} else {
				syscall.Close(fds[1])
			}
			return nil, nil, err
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}

// fatalTerminated is the ErrorResponse PostgreSQL sends to a backend
// ended by pg_terminate_backend, as the bytes on the wire.
func fatalTerminated() []byte {
	msg := &pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	b, err := msg.Encode(nil)
	if err != nil {
		panic(err)
	}
	return b
}

// terminate plays pg_terminate_backend on s: the FATAL arrives, and the
// socket is closed by the server unless keepOpen (the FIN still on its
// way).
func (s *fakeServer) terminate(t *testing.T, keepOpen bool) {
	t.Helper()
	if _, err := s.peer.Write(fatalTerminated()); err != nil {
		t.Fatalf("fake: write FATAL to pid %d: %v", s.pid, err)
	}
	if !keepOpen {
		s.peer.Close()
	}
}

func (s *fakeServer) NetConn() net.Conn {
	if s.conn == nil {
		return nil // a nil interface, not a typed nil
	}
	return s.conn
}

func (s *fakeServer) Exec(ctx context.Context, sql string) error {
	s.execs.Add(1)
	if s.closed.Load() {
		return errors.New("fake: exec on a closed connection")
	}
	if s.db.hang.Load() {
		<-ctx.Done()
		return fmt.Errorf("fake: no answer to %q: %w", sql, ctx.Err())
	}
	if s.execFail.Load() {
		return fmt.Errorf("fake: %q failed on pid %d", sql, s.pid)
	}
	s.db.mu.Lock()
	hook := s.db.failExec
	s.db.mu.Unlock()
	if hook != nil {
		return hook(s)
	}
	return ctx.Err()
}

func (s *fakeServer) CancelRequest(context.Context) error { return nil }
func (s *fakeServer) PID() uint32                         { return s.pid }
func (s *fakeServer) Params() map[string]string           { return map[string]string{"server_version": "15.0"} }

func (s *fakeServer) Close(context.Context) error {
	if s.closed.Swap(true) {
		return errors.New("fake: closed twice")
	}
	if s.conn != nil {
		s.conn.Close()
		s.peer.Close()
	}
	s.db.mu.Lock()
	s.db.open--
	s.db.mu.Unlock()
	return nil
}

// logRecorder is a slog.Handler that keeps every record for assertions.
type logRecorder struct {
	mu      *sync.Mutex
	records *[]logRecord
	attrs   []slog.Attr
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newLogRecorder() *logRecorder {
	return &logRecorder{mu: &sync.Mutex{}, records: &[]logRecord{}}
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	*h.records = append(*h.records, rec)
	h.mu.Unlock()
	return nil
}

func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &logRecorder{mu: h.mu, records: h.records, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *logRecorder) WithGroup(string) slog.Handler { return h }

// find returns the records whose message contains msg.
func (h *logRecorder) find(msg string) []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logRecord
	for _, r := range *h.records {
		if strings.Contains(r.msg, msg) {
			out = append(out, r)
		}
	}
	return out
}

// transitions lists the "to" states of the logged state changes.
func (h *logRecorder) transitions() []string {
	var out []string
	for _, r := range h.find("pool state changed") {
		out = append(out, r.attrs["to"])
	}
	return out
}

// testConfig is a fast Config: nothing kept warm, no recycling, no leak
// detection, short backoff; tests turn on what they exercise.
func testConfig(db *fakeDB, log *logRecorder) Config {
	return Config{
		Name:              "db/u",
		Database:          "db",
		User:              "u",
		Connect:           db.connect,
		MinSize:           0,
		MaxSize:           2,
		AcquireTimeout:    5 * time.Second,
		ValidationQuery:   "SELECT 1",
		ValidateAfterIdle: time.Hour,
		MaxLifetime:       0,
		LifetimeJitter:    0.1,
		MaxIdle:           0,
		MaxQueries:        0,
		LeakTimeout:       0,
		ConnectTimeout:    2 * time.Second,
		BackoffInitial:    10 * time.Millisecond,
		BackoffMax:        40 * time.Millisecond,
		Logger:            slog.New(log),
	}
}

// startPool builds a pool with a short degrade window, waits until its
// first connect finished, and closes it at cleanup.
func startPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	p, err := newPool(cfg, options{degradeWindow: 100 * time.Millisecond, closeTimeout: time.Second})
	if err != nil {
		t.Fatalf("newPool: %v", err)
	}
	t.Cleanup(p.Close)
	waitFor(t, "first connect attempt", func() bool { return p.State() != StateInitializing })
	return p
}

// waitFor is testpg.Eventually with the pool tests' 5 s bound (fake time
// inside a synctest bubble).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testpg.Eventually(t, 5*time.Second, what, cond)
}

func mustAcquire(t *testing.T, p *Pool) Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return c
}

func asAcquireError(t *testing.T, err error, code string) *AcquireError {
	t.Helper()
	var ae *AcquireError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *AcquireError", err, err)
	}
	if ae.Code != code {
		t.Fatalf("code %s, want %s (message %q)", ae.Code, code, ae.Message)
	}
	return ae
}

func fake(c Conn) *fakeServer { return c.Server().(*fakeServer) }

// acquireAsync starts an Acquire in a goroutine; the result arrives on
// the returned channel.
type acquireResult struct {
	c   Conn
	err error
}

func acquireAsync(ctx context.Context, p *Pool) <-chan acquireResult {
	ch := make(chan acquireResult, 1)
	go func() {
		c, err := p.Acquire(ctx)
		ch <- acquireResult{c, err}
	}()
	return ch
}

func waiting(p *Pool, n int) func() bool {
	return func() bool { return p.Stats().Waiting == n }
}

// queueWaiters starts n Acquires that must each queue (inside a synctest
// bubble): after each, the pool counts one more waiter; why says what a
// failure means.
func queueWaiters(t *testing.T, p *Pool, n int, why string) []<-chan acquireResult {
	t.Helper()
	var ws []<-chan acquireResult
	for i := range n {
		ws = append(ws, acquireAsync(context.Background(), p))
		synctest.Wait()
		if got := p.Stats().Waiting; got != i+1 {
			t.Fatalf("waiter %d: %d waiting, want %d (%s)", i, got, i+1, why)
		}
	}
	return ws
}

// checkServedInOrder checks that the n waiters numbered in arrival order
// were served 0, 1, ... n-1, as read from the closed channel order;
// unordered says what a mismatch means.
func checkServedInOrder(t *testing.T, order <-chan int, n int, unordered string) {
	t.Helper()
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d served in position %d: %s", got, want, unordered)
		}
		want++
	}
	if want != n {
		t.Fatalf("%d waiters served, want %d", want, n)
	}
}
