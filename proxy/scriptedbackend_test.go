package proxy

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
)

// A scripted fake backend, in the style of pgx's internal pgmock (Script,
// Step, ExpectMessage, SendMessage, WaitForClose), for unit tests that
// drive the whole proxy in process: a client socket in, a backend socket
// out, nothing in between reached into. The pool connects to it through
// pool.Connector (pgconn.Connect to 127.0.0.1), so what the proxy writes to
// a backend is checked byte for byte as decoded messages, and what it
// answers is whatever the script sends.
//
// Each backend connection the pool opens takes the next script queued with
// push, in accept order; a connection with no script left is a test
// failure (the proxy opened more backends than the test expected). After
// the startup (AuthenticationOk, ParameterStatus, BackendKeyData,
// ReadyForQuery) the session runs its steps in order, then insists on
// being closed (Terminate or EOF) with nothing else sent: a script states
// everything the proxy may do with that backend. CancelRequests arrive on
// the same listener, as at a real server, and are recorded.
//
// Every read is bounded by fakeStepTimeout, so a wrong expectation fails
// the test instead of hanging it. Failures are collected and reported by
// the cleanup that closes the listener and waits for every session
// goroutine (goleak checks the rest).

// fakeStepTimeout bounds each step of a script: a read, a hold, a wait for
// a cancel.
const fakeStepTimeout = 5 * time.Second

// beStep is one step of a backend script; it returns an error to fail the
// test (the session then ends and closes its connection).
type beStep func(s *beSession) error

// beScript is one backend connection's life after its startup.
type beScript []beStep

// fakeCancel is one CancelRequest that reached the fake server.
type fakeCancel struct{ pid, secret uint32 }

// fakeBackend is the fake server: one listener for startups and cancels.
type fakeBackend struct {
	t  testing.TB
	ln net.Listener

	mu       sync.Mutex
	scripts  []beScript
	sessions []*beSession
	cancels  []fakeCancel
	changed  chan struct{} // closed and replaced at every new session or cancel
	errs     []error
	nextPID  uint32
	// unscripted counts connections refused for want of a script.
	unscripted int

	wg sync.WaitGroup // the accept loop and every session
}

// beSession is one backend connection as its script sees it.
type beSession struct {
	fb        *fakeBackend
	n         int // 1-based, in accept order
	conn      net.Conn
	be        *pgproto3.Backend
	pid       uint32
	secret    uint32
	log       []string // every frontend message received, as JSON
	dropped   bool     // the script closed the connection (server loss)
	done      chan struct{}
	cancelled int // cancel requests seen by awaitCancel
}

// newFakeBackend starts the fake server on 127.0.0.1. Its cleanup, which
// runs after those registered later (the pool's and the proxy's, which
// close every backend), waits for every session to end and reports the
// scripts' failures.
func newFakeBackend(t testing.TB) *fakeBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBackend{t: t, ln: ln, changed: make(chan struct{}), nextPID: 4000}
	fb.wg.Add(1)
	go fb.acceptLoop() // ends when the cleanup closes ln
	t.Cleanup(func() {
		ln.Close()
		fb.wg.Wait()
		fb.mu.Lock()
		defer fb.mu.Unlock()
		for _, err := range fb.errs {
			t.Error(err)
		}
	})
	return fb
}

// push queues scripts for the next backend connections, in order.
func (fb *fakeBackend) push(scripts ...beScript) {
	fb.mu.Lock()
	fb.scripts = append(fb.scripts, scripts...)
	fb.mu.Unlock()
}

func (fb *fakeBackend) addr() string { return fb.ln.Addr().String() }

func (fb *fakeBackend) fail(err error) {
	fb.mu.Lock()
	fb.errs = append(fb.errs, err)
	fb.mu.Unlock()
}

// notifyLocked wakes whoever waits for a new session or cancel.
func (fb *fakeBackend) notifyLocked() {
	close(fb.changed)
	fb.changed = make(chan struct{})
}

func (fb *fakeBackend) acceptLoop() {
	defer fb.wg.Done()
	for {
		conn, err := fb.ln.Accept()
		if err != nil {
			return // the cleanup closed the listener
		}
		fb.wg.Add(1)
		go func() { // ends when its script is over and the proxy closed the connection
			defer fb.wg.Done()
			defer conn.Close()
			fb.serve(conn)
		}()
	}
}

// serve reads a connection's startup packet: a CancelRequest is recorded,
// a StartupMessage starts a session with the next script.
func (fb *fakeBackend) serve(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(fakeStepTimeout))
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		fb.fail(fmt.Errorf("fake backend: reading a startup packet: %w", err))
		return
	}
	switch m := msg.(type) {
	case *pgproto3.CancelRequest:
		fb.mu.Lock()
		fb.cancels = append(fb.cancels, fakeCancel{m.ProcessID, binary.BigEndian.Uint32(m.SecretKey)})
		fb.notifyLocked()
		fb.mu.Unlock()
		return // a server closes the cancel connection without a word
	case *pgproto3.StartupMessage:
	default:
		fb.fail(fmt.Errorf("fake backend: unexpected startup packet %T", msg))
		return
	}
	fb.mu.Lock()
	if len(fb.scripts) == 0 {
		fb.unscripted++
		first := fb.unscripted == 1
		fb.mu.Unlock()
		if first { // the pool retries: one report is enough
			fb.fail(errors.New("fake backend: the pool opened a backend connection no script was queued for"))
		}
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "53300", Message: "fake backend: no script"})
		be.Flush()
		return
	}
	script := fb.scripts[0]
	fb.scripts = fb.scripts[1:]
	fb.nextPID++
	s := &beSession{fb: fb, n: len(fb.sessions) + 1, conn: conn, be: be, pid: fb.nextPID,
		secret: fb.nextPID*2654435761 + 17, done: make(chan struct{})}
	fb.sessions = append(fb.sessions, s)
	fb.notifyLocked()
	fb.mu.Unlock()
	defer close(s.done)

	be.Send(&pgproto3.AuthenticationOk{})
	for _, p := range fakeServerParams {
		be.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: s.pid, SecretKey: binary.BigEndian.AppendUint32(nil, s.secret)})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		fb.fail(fmt.Errorf("fake backend %d: startup: %w", s.n, err))
		return
	}
	for i, step := range append(script, expectClose()) {
		if s.dropped && i == len(script) {
			break // the script ended the connection itself
		}
		if err := step(s); err != nil {
			fb.fail(fmt.Errorf("fake backend %d (pid %d), step %d: %w\nreceived so far:\n  %s",
				s.n, s.pid, i+1, err, strings.Join(s.log, "\n  ")))
			return
		}
	}
}

// fakeServerParams is what the fake reports at startup, as PostgreSQL 16
// would (application_name empty: the proxy's own backends have none).
var fakeServerParams = [][2]string{
	{"application_name", ""}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"},
	{"integer_datetimes", "on"}, {"IntervalStyle", "postgres"}, {"is_superuser", "off"},
	{"server_encoding", "UTF8"}, {"server_version", "16.4"}, {"session_authorization", "u"},
	{"standard_conforming_strings", "on"}, {"TimeZone", "UTC"},
}

// receive reads the next frontend message within fakeStepTimeout and logs
// it. pgconn's SyncConn may ping a connection the proxy ran a statement
// on (Exec): such a "-- ping" is answered and skipped, as it is pgconn's
// own and says nothing about the proxy.
func (s *beSession) receive() (pgproto3.FrontendMessage, error) {
	for {
		s.conn.SetReadDeadline(time.Now().Add(fakeStepTimeout))
		msg, err := s.be.Receive()
		if err != nil {
			return nil, err
		}
		j, _ := json.Marshal(msg)
		s.log = append(s.log, string(j))
		if q, ok := msg.(*pgproto3.Query); ok && q.String == "-- ping" {
			s.be.Send(&pgproto3.EmptyQueryResponse{})
			s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if err := s.be.Flush(); err != nil {
				return nil, err
			}
			continue
		}
		return msg, nil
	}
}

// closedErr reports whether err is the peer closing the connection.
func closedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}

// expect is pgmock's ExpectMessage: the next message must equal want.
func expect(want pgproto3.FrontendMessage) beStep {
	return func(s *beSession) error {
		msg, err := s.receive()
		if err != nil {
			return fmt.Errorf("waiting for %T: %w", want, err)
		}
		if !reflect.DeepEqual(msg, want) {
			got, _ := json.Marshal(msg)
			exp, _ := json.Marshal(want)
			return fmt.Errorf("got %s, want %s", got, exp)
		}
		return nil
	}
}

// expectQuery is expect of a simple-protocol Query.
func expectQuery(sql string) beStep { return expect(&pgproto3.Query{String: sql}) }

// expectAny is pgmock's ExpectAnyMessage: the next message must be of
// want's type.
func expectAny(want pgproto3.FrontendMessage) beStep {
	return func(s *beSession) error {
		msg, err := s.receive()
		if err != nil {
			return fmt.Errorf("waiting for %T: %w", want, err)
		}
		if reflect.TypeOf(msg) != reflect.TypeOf(want) {
			return fmt.Errorf("got %T, want %T", msg, want)
		}
		return nil
	}
}

// send is pgmock's SendMessage, for any number of messages in one write.
func send(msgs ...pgproto3.BackendMessage) beStep {
	return func(s *beSession) error {
		for _, m := range msgs {
			s.be.Send(m)
		}
		return s.be.Flush()
	}
}

// result is the reply to a simple Query: one text column named "?column?"
// with a row per value (none: a command without rows), the command tag,
// and ReadyForQuery with the transaction status that follows.
func result(tag string, status byte, rows ...string) beStep {
	var msgs []pgproto3.BackendMessage
	if len(rows) > 0 {
		msgs = append(msgs, &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte("?column?"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
		}})
		for _, r := range rows {
			msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte(r)}})
		}
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte(tag)},
		&pgproto3.ReadyForQuery{TxStatus: status})
	return send(msgs...)
}

// queryResult is the usual exchange: expect sql, answer it with rows.
func queryResult(sql, tag string, status byte, rows ...string) beStep {
	return steps(expectQuery(sql), result(tag, status, rows...))
}

// steps runs several steps as one (pgmock's Script is itself a Step).
func steps(ss ...beStep) beStep {
	return func(s *beSession) error {
		for _, st := range ss {
			if err := st(s); err != nil {
				return err
			}
		}
		return nil
	}
}

// reached closes ch: the test learns that the script got here.
func reached(ch chan struct{}) beStep {
	return func(*beSession) error { close(ch); return nil }
}

// hold waits until the test closes ch (a reply held back: a query that
// runs long).
func hold(ch <-chan struct{}) beStep {
	return func(*beSession) error {
		select {
		case <-ch:
			return nil
		case <-time.After(fakeStepTimeout):
			return errors.New("hold: the test never let the reply go")
		}
	}
}

// drop closes the connection without a word: the server is lost (a crash,
// a network cut). Later steps may still signal the test.
func drop() beStep {
	return func(s *beSession) error {
		s.dropped = true
		return s.conn.Close()
	}
}

// awaitCancel waits until a CancelRequest with this session's own pid and
// secret reached the server, as PostgreSQL's backend notices its signal.
func awaitCancel() beStep {
	return func(s *beSession) error {
		deadline := time.After(fakeStepTimeout)
		for {
			s.fb.mu.Lock()
			n := 0
			for _, c := range s.fb.cancels {
				if c == (fakeCancel{s.pid, s.secret}) {
					n++
				}
			}
			changed := s.fb.changed
			s.fb.mu.Unlock()
			if n > s.cancelled {
				s.cancelled = n
				return nil
			}
			select {
			case <-changed:
			case <-deadline:
				return errors.New("awaitCancel: no cancel request with this backend's key arrived")
			}
		}
	}
}

// expectClose is the end of every script: the connection must be closed
// (Terminate, or EOF) with no other message before it. (pgmock's
// WaitForClose, which skips whatever comes first, is left out on purpose:
// a stray message to a backend is exactly what these tests look for.)
func expectClose() beStep {
	return func(s *beSession) error {
		s.conn.SetReadDeadline(time.Now().Add(fakeStepTimeout))
		msg, err := s.receive()
		switch {
		case err != nil && closedErr(err):
			return nil
		case err != nil:
			return fmt.Errorf("waiting for the connection to be closed: %w", err)
		}
		if _, ok := msg.(*pgproto3.Terminate); ok {
			return nil
		}
		j, _ := json.Marshal(msg)
		return fmt.Errorf("expected the connection to be closed, got %s", j)
	}
}

// sessionCount is how many backend connections the pool opened.
func (fb *fakeBackend) sessionCount() int {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return len(fb.sessions)
}

// session returns the n-th backend connection (1-based), waiting for it.
func (fb *fakeBackend) session(t testing.TB, n int) *beSession {
	t.Helper()
	deadline := time.After(fakeStepTimeout)
	for {
		fb.mu.Lock()
		if len(fb.sessions) >= n {
			s := fb.sessions[n-1]
			fb.mu.Unlock()
			return s
		}
		changed := fb.changed
		fb.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("backend connection %d never opened", n)
		}
	}
}

// cancelList copies the cancel requests received so far.
func (fb *fakeBackend) cancelList() []fakeCancel {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return append([]fakeCancel(nil), fb.cancels...)
}

// waitDone waits until session s ended (its script ran and the
// connection closed).
func (s *beSession) waitDone(t testing.TB) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(2 * fakeStepTimeout):
		t.Fatalf("backend connection %d still open", s.n)
	}
}

// fakeEnv is a proxy.Server on a pool on the fake backend, listening on
// 127.0.0.1.
type fakeEnv struct {
	fb   *fakeBackend
	pool *pool.Pool
	srv  *Server
	addr string
}

// fakeOpts are the settings the tests vary.
type fakeOpts struct {
	mode           Mode          // default transaction
	maxSize        int           // default 1
	acquireTimeout time.Duration // default 2s
	resetQuery     string
	peekAfterIdle  time.Duration // pool.Config.PeekAfterIdle (default 0: every acquire)
	config         func(*Config) // anything else, set before New
	poolConfig     func(*pool.Config)
}

// startFake queues scripts for the backend connections in order (the first
// is the pool's connect at start, which stays idle and serves the first
// client: a pool reuses its most recent backend), then starts the pool and
// the proxy. Everything is closed at cleanup.
func startFake(t testing.TB, o fakeOpts, scripts ...beScript) *fakeEnv {
	t.Helper()
	if o.mode == "" {
		o.mode = ModeTransaction
	}
	if o.maxSize == 0 {
		o.maxSize = 1
	}
	if o.acquireTimeout == 0 {
		o.acquireTimeout = 2 * time.Second
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("FAKEBE_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	fb := newFakeBackend(t)
	fb.push(scripts...)
	pcfg, err := pgconn.ParseConfig("postgres://u@" + fb.addr() + "/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	pcfg.RuntimeParams = map[string]string{} // no PG* environment leaks in
	pc := pool.Config{
		Database: "db", User: "u",
		Connect:        pool.Connector(pcfg),
		MaxSize:        o.maxSize,
		AcquireTimeout: o.acquireTimeout,
		ConnectTimeout: fakeStepTimeout,
		BackoffInitial: 50 * time.Millisecond,
		BackoffMax:     time.Second,
		PeekAfterIdle:  o.peekAfterIdle,
		Logger:         logger,
	}
	if o.poolConfig != nil {
		o.poolConfig(&pc)
	}
	p, err := pool.New(pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	// The pool's first connect is under way: let it finish, so the first
	// client does not race it for a second one.
	waitFor(t, "the pool's first backend", func() bool { return p.Stats().Idle == 1 })
	cfg := Config{
		Mode: o.mode, MaxClientConn: 50, MaxStartupConn: 50, AuthMethod: AuthTrust,
		Databases:             map[string]*Database{"db": {Name: "db", Pool: p, Users: map[string]string{"u": ""}}},
		ResetQuery:            o.resetQuery,
		MaxPreparedStatements: 100,
		SessionState:          SessionStatePin,
		MaxMessageSize:        1 << 20,
		MaxClientBuffer:       1 << 20,
		Logger:                logger,
	}
	if o.config != nil {
		o.config(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // ends at Close below
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return &fakeEnv{fb: fb, pool: p, srv: srv, addr: ln.Addr().String()}
}

// waitFor polls cond for up to fakeStepTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(fakeStepTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// connect logs a pgconn client in through the proxy, with params as its
// startup parameters.
func (e *fakeEnv) connect(t testing.TB, params map[string]string) *pgconn.PgConn {
	t.Helper()
	cfg, err := pgconn.ParseConfig("postgres://u@" + e.addr + "/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams = map[string]string{}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	return pc
}

// runSQL runs sql on pc and returns its rows (first column) or the error.
func runSQL(t testing.TB, pc *pgconn.PgConn, sql string) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	results, err := pc.Exec(ctx, sql).ReadAll()
	var rows []string
	for _, r := range results {
		for _, row := range r.Rows {
			rows = append(rows, string(row[0]))
		}
		if r.Err != nil && err == nil {
			err = r.Err
		}
	}
	return rows, err
}

// mustExec is runSQL that fails the test on an error and checks the rows.
func mustExec(t testing.TB, pc *pgconn.PgConn, sql string, want ...string) {
	t.Helper()
	rows, err := runSQL(t, pc, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if !reflect.DeepEqual(rows, want) && (len(rows) > 0 || len(want) > 0) {
		t.Fatalf("%s: rows %q, want %q", sql, rows, want)
	}
}

// wantPgError checks that err is a server error with code and severity.
func wantPgError(t testing.TB, err error, severity, code string) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a %s %s", err, severity, code)
	}
	if pe.Code != code || pe.Severity != severity {
		t.Fatalf("got %s %s (%s), want %s %s", pe.Severity, pe.Code, pe.Message, severity, code)
	}
	return pe
}

// rawClient is a client spoken by hand (pgproto3.Frontend on a socket),
// for what pgconn will not do: leave mid-COPY, pipeline without reading.
type rawClient struct {
	conn        net.Conn
	fe          *pgproto3.Frontend
	pid, secret uint32
}

// dialRaw logs a raw client in (trust) and reads up to its ReadyForQuery.
func (e *fakeEnv) dialRaw(t testing.TB) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rc := &rawClient{conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	rc.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "db"}})
	rc.flush(t)
	for {
		switch m := rc.receive(t).(type) {
		case *pgproto3.BackendKeyData:
			rc.pid, rc.secret = m.ProcessID, binary.BigEndian.Uint32(m.SecretKey)
		case *pgproto3.ErrorResponse:
			t.Fatalf("login: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return rc
		}
	}
}

func (rc *rawClient) flush(t testing.TB) {
	t.Helper()
	if err := rc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (rc *rawClient) receive(t testing.TB) pgproto3.BackendMessage {
	t.Helper()
	rc.conn.SetReadDeadline(time.Now().Add(fakeStepTimeout))
	m, err := rc.fe.Receive()
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return m
}

// query sends a simple Query without waiting for the reply.
func (rc *rawClient) query(t testing.TB, sql string) {
	t.Helper()
	rc.fe.Send(&pgproto3.Query{String: sql})
	rc.flush(t)
}

// mustQuery sends a simple Query and fails the test unless its reply has
// exactly the rows want (first column) and no error.
func (rc *rawClient) mustQuery(t testing.TB, sql string, want ...string) {
	t.Helper()
	rc.query(t, sql)
	rows, errResp, _ := rc.readResult(t)
	if errResp != nil || fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Fatalf("%s: rows %v error %v, want %v", sql, rows, errResp, want)
	}
}

// readResult reads one Query's reply up to ReadyForQuery: the rows' first
// column, the error if any, and the transaction status.
func (rc *rawClient) readResult(t testing.TB) (rows []string, errResp *pgproto3.ErrorResponse, status byte) {
	t.Helper()
	for {
		switch m := rc.receive(t).(type) {
		case *pgproto3.DataRow:
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			cp := *m
			errResp = &cp
		case *pgproto3.ReadyForQuery:
			return rows, errResp, m.TxStatus
		}
	}
}

// sendCancel sends a CancelRequest to the proxy with (pid, secret) and
// waits until the proxy has handled it (it closes the connection then).
func (e *fakeEnv) sendCancel(t testing.TB, pid, secret uint32) {
	t.Helper()
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 16)
	binary.BigEndian.PutUint32(buf[0:], 16)
	binary.BigEndian.PutUint32(buf[4:], startupCodeCancel)
	binary.BigEndian.PutUint32(buf[8:], pid)
	binary.BigEndian.PutUint32(buf[12:], secret)
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(fakeStepTimeout))
	if n, err := conn.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("cancel connection: read %d bytes, %v; want the proxy to close it without a word", n, err)
	}
}
