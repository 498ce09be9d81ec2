package config

import (
	"os"
	"strings"
	"testing"
)

func TestSelfLoopGuard(t *testing.T) {
	hostname, _ := os.Hostname()
	local := localIPs()
	var nonLoopback string
	for _, ip := range local {
		if !ip.IsLoopback() && ip.To4() != nil {
			nonLoopback = ip.String()
			break
		}
	}
	type tc struct {
		listen, url string
		loop        bool
	}
	cases := []tc{
		{"127.0.0.1:6432", "postgres://app:pw@127.0.0.1:6432/app", true},
		{"127.0.0.1:6432", "postgres://app:pw@localhost:6432/app", true},
		{"127.0.0.1:6432", "postgres://app:pw@127.0.0.1:5432/app", false},
		{"127.0.0.1:6432", "postgres://app:pw@127.0.0.2:6432/app", false}, // another loopback address: another listener
		{"127.0.0.1:6432", "postgres://app:pw@db.example.com:6432/app", false},
		{"0.0.0.0:6432", "postgres://app:pw@127.0.0.1:6432/app", true},
		{"0.0.0.0:6432", "postgres://app:pw@[::1]:6432/app", true},
		{":6432", "postgres://app:pw@localhost:6432/app", true},
		{"[::]:6432", "postgres://app:pw@127.0.0.1:6432/app", true},
		{"[::1]:6432", "postgres://app:pw@127.0.0.1:6432/app", false},
		{"localhost:6432", "postgres://app:pw@127.0.0.1:6432/app", true},
		{"0.0.0.0:6432", "postgres://app:pw@10.255.255.254:6432/app", false}, // not this machine (unless it is)
		// A fallback host that loops is caught too.
		{"127.0.0.1:6432", "postgres://app:pw@db.example.com:5432,127.0.0.1:6432/app", true},
		// A unix socket is never the TCP listener.
		{"127.0.0.1:6432", "host=/var/run/postgresql port=6432 user=app password=pw dbname=app", false},
	}
	if nonLoopback != "" {
		cases = append(cases,
			tc{"0.0.0.0:6432", "postgres://app:pw@" + nonLoopback + ":6432/app", true},
			tc{"127.0.0.1:6432", "postgres://app:pw@" + nonLoopback + ":6432/app", false})
	}
	if hostname != "" {
		// The pod's own hostname (resolved through /etc/hosts) with a
		// wildcard listen: the Kubernetes form of the trap.
		if ips := hostIPs(hostname); len(ips) > 0 {
			cases = append(cases, tc{"0.0.0.0:6432", "postgres://app:pw@" + hostname + ":6432/app", true})
		}
	}
	for _, c := range cases {
		cfg := Defaults()
		cfg.Listen = c.listen
		cfg.Upstream = c.url
		targets, err := cfg.Targets()
		if err != nil {
			t.Fatalf("%s: %v", c.url, err)
		}
		err = CheckSelfLoop(c.listen, targets)
		if (err != nil) != c.loop {
			t.Errorf("listen %s upstream %s: err %v, want loop=%v", c.listen, c.url, err, c.loop)
			continue
		}
		if err != nil {
			msg := err.Error()
			for _, want := range []string{"upstream (DATABASE_URL)", "points at pgsidecar's own listen address " + c.listen, "connect to itself"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
			if strings.Contains(msg, ":pw@") {
				t.Errorf("error leaks the password: %s", msg)
			}
		}
	}
}
