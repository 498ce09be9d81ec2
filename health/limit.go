// The health listener's bound on open connections (limitListener).

package health

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/lograte"
)

// MaxConns bounds the connections the health listener holds open at once.
// The proxy's descriptor budget (fdsNeeded in package main) counts health
// requests in a fixed overhead, and anyone who can reach health.listen
// (0.0.0.0 in Kubernetes, where the client listener is loopback only) can
// open connections: unbounded, idle keep-alive or slow connections would
// take the descriptors promised to clients and backends, and clients would
// be refused with 53300. Probes, a scraper and an operator need a few.
const MaxConns = 32

// maxRefusing bounds the connections being refused at once (each answered
// 503 once its request is read, for at most refuseTimeout); while that
// many are, Accept waits, leaving the next connections in the listen
// backlog, so a flood's refusals hold at most this many more descriptors.
const maxRefusing = 4

// refuseTimeout bounds the time a refused connection is held.
const refuseTimeout = time.Second

// tooManyConns is the answer to a connection past MaxConns.
var tooManyConns = func() string {
	body := "too many connections to the health listener (at most " + strconv.Itoa(MaxConns) + "); try again\n"
	return "HTTP/1.1 503 Service Unavailable\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Cache-Control: no-store\r\n" +
		"Retry-After: 1\r\n" +
		"Connection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}()

// limitListener accepts at most MaxConns connections open at once and
// answers the others 503, instead of leaving them in the listen backlog
// where a probe would only time out.
type limitListener struct {
	net.Listener
	log      *slog.Logger
	slots    chan struct{} // one per open connection
	refusing chan struct{} // one per connection being refused

	refusedLog lograte.Limiter
}

func newLimitListener(ln net.Listener, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, log: log,
		slots: make(chan struct{}, MaxConns), refusing: make(chan struct{}, maxRefusing),
		refusedLog: lograte.Limiter{Interval: lograte.Interval}}
}

// Accept returns the next connection that gets a slot; it refuses the
// others itself.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, slots: l.slots}, nil
		default:
		}
		l.logRefusal()
		// Each refusal ends within refuseTimeout, so this wait does too.
		select {
		case l.slots <- struct{}{}: // one was closed meanwhile
			return &limitConn{Conn: c, slots: l.slots}, nil
		case l.refusing <- struct{}{}:
			go l.refuse(c)
		}
	}
}

// refuse answers c 503 and closes it. It ends within refuseTimeout.
func (l *limitListener) refuse(c net.Conn) {
	defer func() { <-l.refusing }()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(refuseTimeout))
	if _, err := io.WriteString(c, tooManyConns); err != nil {
		return
	}
	// Read the request's header before closing: a close with unread
	// bytes sends a reset, which can destroy the answer before the client
	// reads it.
	_, _ = http.ReadRequest(bufio.NewReader(io.LimitReader(c, maxHeaderBytes)))
}

// logRefusal logs a refusal at most once per lograte.Interval, with the
// number not logged since: anyone who can reach the listener can repeat
// them.
func (l *limitListener) logRefusal() {
	if ok, unlogged := l.refusedLog.Allow(time.Now()); ok {
		l.log.Warn("health listener: too many connections; refusing with 503",
			"max_conns", MaxConns, "unlogged", unlogged, "log_interval", l.refusedLog.Interval)
	}
}

// limitConn gives its slot back when closed (once, however often Close is
// called).
type limitConn struct {
	net.Conn
	slots chan struct{}
	once  sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.slots })
	return err
}
