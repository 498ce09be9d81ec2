package pgwire

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"testing"
)

func TestTLSServerEndPoint(t *testing.T) {
	raw := []byte("a certificate's DER")
	s256 := sha256.Sum256(raw)
	s384 := sha512.Sum384(raw)
	s512 := sha512.Sum512(raw)
	for _, tc := range []struct {
		alg  x509.SignatureAlgorithm
		want []byte
	}{
		{x509.SHA1WithRSA, s256[:]}, // RFC 5929 4.1: SHA-1 and MD5 use SHA-256
		{x509.MD5WithRSA, s256[:]},
		{x509.ECDSAWithSHA256, s256[:]},
		{x509.SHA384WithRSAPSS, s384[:]},
		{x509.ECDSAWithSHA512, s512[:]},
		{x509.PureEd25519, nil}, // no hash of its own: no binding
	} {
		got := TLSServerEndPoint(&x509.Certificate{SignatureAlgorithm: tc.alg, Raw: raw})
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%v: got %x, want %x", tc.alg, got, tc.want)
		}
	}
}
