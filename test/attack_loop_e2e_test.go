package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Attacks on the event loop (proxy/loop.go) and parking (proxy/park.go)
// by hostile and faulty clients: raw sockets that split, lie, pile up,
// close or reset at the edges of what the loop decides to relay itself.
// Every client sends from parked (it ran a query and idled), so the loop
// reads what it sends next.

// alServed is a raw client through p that ran a query and is parked (with
// the want other clients parked beside it), so that the event loop reads
// what it sends next.
func alServed(t *testing.T, p *Proxy, n int) []*rawClient {
	t.Helper()
	rs := make([]*rawClient, n)
	for i := range rs {
		rs[i] = dialRaw(t, txProxyURL(p))
		rs[i].query(t, "SELECT 1")
	}
	lgParkAll(t, p, n, lgRawNudge(t, rs...))
	return rs
}

// alClientsGone waits until the proxy lists no client and holds no backend.
func alClientsGone(t *testing.T, p *Proxy, within time.Duration) {
	t.Helper()
	waitFor(t, within, "no client left and no backend held", func() bool {
		return clientsStat(t, p, "clients_total") == 0 && lgPoolActive(t, p) == 0
	})
}

// alReadToEnd reads r's messages until the connection ends or within
// passes: what came, and whether it ended (false: still open).
func alReadToEnd(r *rawClient, within time.Duration) (got []string, ended bool) {
	_ = r.conn.SetReadDeadline(time.Now().Add(within))
	defer r.conn.SetReadDeadline(time.Time{})
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return got, !isTimeout(err)
		}
		b, _ := msg.Encode(nil)
		got = append(got, lgMsgString(b))
	}
}

// TestAttackLoopRequestThenHalfClose: a parked client sends a quick
// request and at once half-closes its socket (shutdown(SHUT_WR): FIN),
// then reads. PostgreSQL answers the request, then sees the end of the
// stream and closes the session: the client reads the reply and then the
// end. Through the proxy it must get the same, and the proxy must forget
// it. The FIN comes right behind the request, often in the same epoll
// event the loop reads the request on.
func TestAttackLoopRequestThenHalfClose(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	const rounds = 20
	req := lgEncode(t, &pgproto3.Query{String: "SELECT 'half', 1"})
	run := func(r *rawClient) ([]string, bool) {
		r.write(t, req)
		if err := r.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		return alReadToEnd(r, 3*time.Second)
	}
	for i := range rounds {
		direct, dended := run(dialRaw(t, txDirectURL()))
		if !dended {
			t.Fatalf("PostgreSQL kept the half-closed session open")
		}
		r := alServed(t, p, 1)[0]
		proxied, pended := run(r)
		lgCompare(t, "request then FIN", proxied, direct)
		if !pended {
			t.Fatalf("round %d: the proxy answered %d messages and then kept the half-closed client's connection open (clients listed: %d, parked: %d)",
				i, len(proxied), clientsStat(t, p, "clients_total"), parkedClients(t, p))
		}
		alClientsGone(t, p, 5*time.Second)
	}
	lgCleanBackends(t.Context(), t, p, 2)
}
