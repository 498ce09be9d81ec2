// The sidecar trap: an upstream that is pgsidecar's own listen address is
// refused (CheckSelfLoop).

package config

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// hostnameLookupTimeout bounds resolving this machine's own hostname when
// an upstream names it; /etc/hosts answers at once, and a slow DNS must not
// hold the start-up.
const hostnameLookupTimeout = time.Second

// CheckSelfLoop refuses an upstream that is pgsidecar's own client
// listener: the sidecar trap, when the application's container and
// pgsidecar's share one DATABASE_URL rewritten to point at pgsidecar.
// Started anyway, every client would be relayed to pgsidecar itself, each
// backend connect opening another client, until the file descriptors ran
// out. An upstream loops when its port is listen's and its host is an
// address listen accepts on: the same IP, or for a wildcard listen (0.0.0.0,
// ::, empty) any address of this machine. Hosts are compared as literal IPs,
// "localhost" and this machine's hostname; other names are not resolved
// here (a DNS alias of this host is not caught).
func CheckSelfLoop(listen string, targets []Target) error {
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return nil // listen itself will fail with a clearer error
	}
	accepts := listenerAccepts(lhost)
	for _, t := range targets {
		if t.Conn == nil {
			continue
		}
		hosts := []struct {
			host string
			port uint16
		}{{t.Conn.Host, t.Conn.Port}}
		for _, fb := range t.Conn.Fallbacks {
			hosts = append(hosts, struct {
				host string
				port uint16
			}{fb.Host, fb.Port})
		}
		for _, h := range hosts {
			if strconv.Itoa(int(h.port)) != lport || strings.HasPrefix(h.host, "/") {
				continue // another port, or a unix socket
			}
			for _, ip := range hostIPs(h.host) {
				if accepts(ip) {
					key := t.Key
					if key == "upstream" {
						key = "upstream (DATABASE_URL)"
					}
					return fmt.Errorf("%s %s points at pgsidecar's own listen address %s: pgsidecar would connect to itself. "+
						"Give pgsidecar the real database's address (in a sidecar, the application's DATABASE_URL points at "+
						"pgsidecar, and pgsidecar's must not be the same variable)",
						key, t.Redacted(), listen)
				}
			}
		}
	}
	return nil
}

// listenerAccepts returns whether a listener on host accepts connections
// addressed to ip.
func listenerAccepts(host string) func(net.IP) bool {
	ip := net.ParseIP(host)
	switch {
	case host == "" || ip != nil && ip.IsUnspecified():
		local := localIPs()
		return func(x net.IP) bool {
			if x.IsLoopback() || x.IsUnspecified() {
				return true
			}
			for _, l := range local {
				if l.Equal(x) {
					return true
				}
			}
			return false
		}
	case ip != nil:
		return ip.Equal
	default: // a name, e.g. localhost: whatever it is
		ips := hostIPs(host)
		return func(x net.IP) bool {
			for _, l := range ips {
				if l.Equal(x) {
					return true
				}
			}
			return false
		}
	}
}

// hostIPs are the addresses host names, as far as they can be known
// without asking DNS about other hosts: a literal IP, localhost, and this
// machine's own hostname, which is looked up (bounded by
// hostnameLookupTimeout). See CheckSelfLoop.
func hostIPs(host string) []net.IP {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}
	}
	lower := strings.ToLower(strings.TrimSuffix(host, "."))
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") {
		return []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	if self, err := os.Hostname(); err == nil && strings.EqualFold(lower, self) {
		ctx, cancel := context.WithTimeout(context.Background(), hostnameLookupTimeout)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil
		}
		ips := make([]net.IP, 0, len(addrs))
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
		return ips
	}
	return nil
}

// localIPs are this machine's interface addresses.
func localIPs() []net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ips = append(ips, n.IP)
		}
	}
	return ips
}
