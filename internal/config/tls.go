// The tls.* options (TLS between clients and the proxy): their type, their
// validation, and the certificate, key and CA files loaded.

package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// TLSConfig holds the tls.* options: TLS between clients and the proxy.
// Backends use the upstream URL's sslmode, independently.
type TLSConfig struct {
	Mode     proxy.TLSMode `koanf:"mode"`
	CertFile string        `koanf:"cert_file"`
	KeyFile  string        `koanf:"key_file"`
	CAFile   string        `koanf:"ca_file"`
	// MinVersion is "1.2" or "1.3".
	MinVersion string `koanf:"min_version"`
	// Ciphers is "default" (Go's secure set) or a comma-separated list of
	// TLS 1.2 cipher suite names as Go spells them.
	Ciphers string `koanf:"ciphers"`
	// Client is the loaded setup (certificate, key and CAs read from the
	// files); Load fills it in, again on every reload.
	Client *proxy.ClientTLS `koanf:"-"`
}

// tlsVersions maps tls.min_version to Go's constant.
var tlsVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// tlsCiphersDefault is tls.ciphers' value meaning Go's default suites.
const tlsCiphersDefault = "default"

// checkTLS validates the tls.* options and, when they are right, reads the
// files: every problem is one line naming the option.
func (c *Config) checkTLS(p *problems) {
	t := &c.TLS
	version, okVersion := tlsVersions[strings.TrimPrefix(strings.ToLower(strings.TrimSpace(t.MinVersion)), "tlsv")]
	if !okVersion {
		p.add("tls.min_version", `must be "1.2" or "1.3", got %q`, t.MinVersion)
	}
	suites, err := parseCiphers(t.Ciphers)
	if err != nil {
		p.add("tls.ciphers", "%v", err)
	}
	if !t.Mode.Offers() {
		t.Client = nil
		return
	}
	var missing bool
	for _, f := range []struct{ key, path string }{{"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile}} {
		if strings.TrimSpace(f.path) == "" {
			p.add(f.key, "must be set with tls.mode %s (the proxy's certificate and key, PEM)", t.Mode)
			missing = true
		}
	}
	if t.Mode.VerifiesClient() && strings.TrimSpace(t.CAFile) == "" {
		p.add("tls.ca_file", "must be set with tls.mode %s (the CA certificates client certificates are verified against, PEM)", t.Mode)
		missing = true
	}
	if missing || !okVersion || err != nil {
		return
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		p.add("tls.cert_file", "cannot load the certificate %s with the key %s (tls.key_file): %v", t.CertFile, t.KeyFile, err)
		return
	}
	var pool *x509.CertPool
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			p.add("tls.ca_file", "%v", err)
			return
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			p.add("tls.ca_file", "%s holds no PEM certificate", t.CAFile)
			return
		}
	}
	client, err := proxy.NewClientTLS(proxy.ClientTLSOptions{
		Mode: t.Mode, Certificate: cert, ClientCAs: pool, MinVersion: version, CipherSuites: suites,
	})
	if err != nil {
		p.add("tls.mode", "%v", err)
		return
	}
	t.Client = client
}

// parseCiphers reads tls.ciphers: "default" is nil (Go's set); otherwise
// each name must be one of Go's secure TLS 1.2 suites.
func parseCiphers(s string) ([]uint16, error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, tlsCiphersDefault) {
		return nil, nil
	}
	known := map[string]uint16{}
	var names []string
	for _, cs := range tls.CipherSuites() {
		if slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
			known[cs.Name] = cs.ID
			names = append(names, cs.Name)
		}
	}
	var out []uint16
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		id, ok := known[strings.ToUpper(name)]
		if !ok {
			return nil, fmt.Errorf("unknown or insecure TLS 1.2 cipher suite %q: write %q or a comma-separated list of %s",
				name, tlsCiphersDefault, strings.Join(names, ", "))
		}
		out = append(out, id)
	}
	return out, nil
}
