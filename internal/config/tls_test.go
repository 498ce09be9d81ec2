package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// writeSelfSigned writes a self-signed certificate and its key to dir and
// returns their paths.
func writeSelfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestTLSOptions: tls.* load into a client TLS setup, and every mistake is
// an error naming its option.
func TestTLSOptions(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	base := []string{"DATABASE_URL=" + testURL}
	env := func(kv ...string) []string { return append(append([]string(nil), base...), kv...) }

	if cfg := mustLoad(t, "", base...); cfg.TLS.Client != nil || cfg.TLS.Client.Mode() != proxy.TLSDisable {
		t.Fatalf("default: TLS %v, want disabled", cfg.TLS.Client.Mode())
	}
	cfg := mustLoad(t, "", env("PGSIDECAR_TLS__MODE=require", "PGSIDECAR_TLS__CERT_FILE="+cert,
		"PGSIDECAR_TLS__KEY_FILE="+key, "PGSIDECAR_TLS__MIN_VERSION=1.3",
		"PGSIDECAR_TLS__CIPHERS=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")...)
	if cfg.TLS.Client.Mode() != proxy.TLSRequire || cfg.TLS.Client.Fingerprint() == "" {
		t.Fatalf("require: got mode %v, fingerprint %q", cfg.TLS.Client.Mode(), cfg.TLS.Client.Fingerprint())
	}
	// The same certificate as its own CA, for verify-full.
	mustLoad(t, "", env("PGSIDECAR_TLS__MODE=verify-full", "PGSIDECAR_TLS__CERT_FILE="+cert,
		"PGSIDECAR_TLS__KEY_FILE="+key, "PGSIDECAR_TLS__CA_FILE="+cert)...)

	for _, tc := range []struct {
		name string
		env  []string
		want []string
	}{
		{"unknown mode", env("PGSIDECAR_TLS__MODE=on"), []string{"tls.mode", "must be one of disable, allow, prefer"}},
		{"no certificate", env("PGSIDECAR_TLS__MODE=prefer"), []string{"tls.cert_file: must be set with tls.mode prefer", "tls.key_file: must be set"}},
		{"no CA", env("PGSIDECAR_TLS__MODE=verify-ca", "PGSIDECAR_TLS__CERT_FILE="+cert, "PGSIDECAR_TLS__KEY_FILE="+key),
			[]string{"tls.ca_file: must be set with tls.mode verify-ca"}},
		{"missing file", env("PGSIDECAR_TLS__MODE=require", "PGSIDECAR_TLS__CERT_FILE="+filepath.Join(dir, "nope.crt"), "PGSIDECAR_TLS__KEY_FILE="+key),
			[]string{"tls.cert_file: cannot load the certificate", "no such file"}},
		{"key of another certificate", env("PGSIDECAR_TLS__MODE=require", "PGSIDECAR_TLS__CERT_FILE="+cert, "PGSIDECAR_TLS__KEY_FILE="+cert),
			[]string{"tls.cert_file: cannot load the certificate"}},
		{"CA file without certificates", env("PGSIDECAR_TLS__MODE=verify-ca", "PGSIDECAR_TLS__CERT_FILE="+cert, "PGSIDECAR_TLS__KEY_FILE="+key, "PGSIDECAR_TLS__CA_FILE="+key),
			[]string{"tls.ca_file: " + key + " holds no PEM certificate"}},
		{"old version", env("PGSIDECAR_TLS__MIN_VERSION=1.0"), []string{`tls.min_version: must be "1.2" or "1.3", got "1.0"`}},
		{"insecure cipher", env("PGSIDECAR_TLS__CIPHERS=TLS_RSA_WITH_RC4_128_SHA"), []string{`tls.ciphers: unknown or insecure TLS 1.2 cipher suite "TLS_RSA_WITH_RC4_128_SHA"`}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, "", tc.env, tc.want...) })
	}
}
