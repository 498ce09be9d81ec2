// Command rssmeter measures a running pgsidecar's resident memory idle and
// with N idle clients, for sizing container memory requests (the numbers
// in deploy/kubernetes/ come from it):
//
//	rssmeter -pid PID -url postgres://app:app@127.0.0.1:6432/app -n 0,100,1000
//
// For each N (cumulative) it opens clients up to N, each running one
// SELECT 1 and then staying idle, waits for the process to settle, and
// prints VmRSS and VmHWM from /proc/PID/status. Every connection is closed
// at exit; the whole run is bounded by -timeout.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	pid := flag.Int("pid", 0, "pgsidecar's process id")
	url := flag.String("url", "", "client URL through the proxy")
	counts := flag.String("n", "0,100,1000", "comma-separated client counts, ascending")
	settle := flag.Duration("settle", 3*time.Second, "wait after opening clients before reading memory")
	timeout := flag.Duration("timeout", 5*time.Minute, "bound on the whole run")
	flag.Parse()
	if *pid == 0 || *url == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var conns []*pgconn.PgConn
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}()
	fmt.Println("clients\tVmRSS_kB\tVmHWM_kB")
	for _, s := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fail("bad -n %q", s)
		}
		for len(conns) < n {
			c, err := pgconn.Connect(ctx, *url)
			if err != nil {
				fail("connect client %d: %v", len(conns)+1, err)
			}
			if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
				fail("client %d: %v", len(conns)+1, err)
			}
			conns = append(conns, c)
		}
		time.Sleep(*settle)
		rss, hwm := mem(*pid)
		fmt.Printf("%d\t%d\t%d\n", n, rss, hwm)
	}
}

// mem reads VmRSS and VmHWM (peak RSS) in kB.
func mem(pid int) (rss, hwm int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.Atoi(fields[1])
		switch fields[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "rssmeter: "+format+"\n", args...)
	os.Exit(1)
}
