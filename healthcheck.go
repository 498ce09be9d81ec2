// `pgsidecar healthcheck`: GET /health and succeed only on 200, for the
// distroless image's HEALTHCHECK.

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// healthcheckTimeout bounds one healthcheck request by default: /health
// answers from memory in microseconds, so seconds mean the process is stuck.
const healthcheckTimeout = 5 * time.Second

// healthcheck is `pgsidecar healthcheck`: GET the health listener's
// /health (or -url) and succeed only on 200. It exists for the distroless
// image's HEALTHCHECK, which has no shell, curl or wget to do the same.
// Without -url it finds the listener as the proxy does, from -config, the
// environment and the defaults, so the image needs no argument.
func healthcheck(ctx context.Context, args []string, environ []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("pgsidecar healthcheck", flag.ContinueOnError)
	fs.SetOutput(stdout)
	rawURL := fs.String("url", "", "URL to GET (default http://<health.listen>/health, an unspecified host read as loopback)")
	configFlag := fs.String("config", "", "configuration file to read health.listen from (as for the proxy)")
	timeout := fs.Duration("timeout", healthcheckTimeout, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("healthcheck: unexpected argument %q", fs.Arg(0))
	}
	target := *rawURL
	if target == "" {
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
		path, err := config.Path(*configFlag, explicit, environ)
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		cfg, err := config.Load(path, environ)
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		target = "http://" + dialAddr(cfg.Health.Listen) + "/health"
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	summary := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: GET %s: %s: %s", target, resp.Status, summary)
	}
	fmt.Fprintf(stdout, "healthy: GET %s: %s: %s\n", target, resp.Status, summary)
	return nil
}

// dialAddr turns a listen address into one to connect to: an unspecified
// or empty host (0.0.0.0, ::, "") means "every interface", so loopback
// reaches it from inside the same container or pod.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}
