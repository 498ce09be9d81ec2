// SCRAM's mechanism names and tls-server-end-point channel binding.

package pgwire

// channelbinding.go: the SCRAM mechanism names, and the
// tls-server-end-point channel binding data of SCRAM-SHA-256-PLUS, which
// both sides of the proxy compute: toward clients from the proxy's own
// certificate, toward the server from the server's.

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"hash"
)

// TLSServerEndPoint is RFC 5929's tls-server-end-point value for cert: its
// DER hashed with the hash of its signature algorithm, SHA-256 for MD5 and
// SHA-1 (RFC 5929 4.1), as PostgreSQL's be_tls_get_certificate_hash
// computes it. nil when the algorithm has no such hash (Ed25519, say): no
// binding can be offered or checked with such a certificate.
func TLSServerEndPoint(cert *x509.Certificate) []byte {
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.SHA256WithRSAPSS, x509.ECDSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil
	}
	h.Write(cert.Raw)
	return h.Sum(nil)
}

// The SASL mechanisms of PostgreSQL's SCRAM authentication, as the
// AuthenticationSASL message lists them and SASLInitialResponse names one.
const (
	SCRAMSHA256 = "SCRAM-SHA-256"
	// SCRAMSHA256Plus is SCRAM with tls-server-end-point channel binding,
	// offered on TLS only.
	SCRAMSHA256Plus = "SCRAM-SHA-256-PLUS"
)
