package signature

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// TestVerifyRefusesSHA1: SHA-1 is refused wherever a SignerInfo can name
// it. Signatures are made by openssl: whole CMS signatures with -md sha1
// (RSA and ECDSA), and raw SHA-1 signatures of the formatted digest put into
// a SignerInfo whose digest algorithm says SHA-256 but whose signature
// algorithm is ecdsa-with-SHA1 (or sha1WithRSAEncryption). The ECDSA one
// verified before (only the digest algorithm field was checked; issue 12,
// finding 6). The same construction with SHA-256 is accepted, so the
// assembly itself is right.
func TestVerifyRefusesSHA1(t *testing.T) {
	testutil.RequireTool(t, "openssl")
	dir := t.TempDir()
	d := digestOf(t, "image", verity.SHA256)
	content := filepath.Join(dir, "content")
	os.WriteFile(content, d.FormattedDigest(), 0o644)
	keys := map[string][]string{
		"ec":  {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"},
		"rsa": {"-newkey", "rsa:2048"},
	}
	ts := &TrustStore{}
	certs := map[string]*x509.Certificate{}
	for name, args := range keys {
		key, cert := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pem")
		testutil.Run(t, "openssl", append(append([]string{"req", "-x509", "-nodes", "-sha256", "-days", "1", "-subj", "/CN=" + name}, args...), "-keyout", key, "-out", cert)...)
		c, err := LoadCertificate(cert)
		if err != nil {
			t.Fatal(err)
		}
		ts.certs = append(ts.certs, c)
		certs[name] = c
	}
	cms := func(name, md string) []byte {
		out := filepath.Join(dir, name+"-"+md+".p7s")
		testutil.Run(t, "openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-md", md, "-outform", "der",
			"-signer", filepath.Join(dir, name+".pem"), "-inkey", filepath.Join(dir, name+".key"), "-in", content, "-out", out)
		b, _ := os.ReadFile(out)
		return b
	}
	// mixed assembles a detached SignedData whose digest algorithm field is
	// SHA-256 around openssl's raw signature of the content with md.
	mixed := func(name, md string, sigAlg asn1.ObjectIdentifier) []byte {
		raw := filepath.Join(dir, name+"-"+md+".raw")
		testutil.Run(t, "openssl", "dgst", "-"+md, "-sign", filepath.Join(dir, name+".key"), "-out", raw, content)
		sig, _ := os.ReadFile(raw)
		alg := pkix.AlgorithmIdentifier{Algorithm: sigAlg}
		if name == "rsa" {
			alg.Parameters = asn1.NullRawValue
		}
		out, err := encodeSignedData(oidSHA256, alg, certs[name], sig, nil, Options{Detached: true})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ecdsaSHA1 := asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
	rsaSHA1 := asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}
	for _, tc := range []struct {
		name string
		sig  []byte
		ok   bool
	}{
		{"control: openssl cms ecdsa sha256", cms("ec", "sha256"), true},
		{"control: openssl cms rsa sha256", cms("rsa", "sha256"), true},
		{"control: sha256 field, ecdsa-with-SHA256", mixed("ec", "sha256", oidECDSAWithSHA[crypto.SHA256]), true},
		{"openssl cms ecdsa -md sha1", cms("ec", "sha1"), false},
		{"openssl cms rsa -md sha1", cms("rsa", "sha1"), false},
		{"sha256 field, ecdsa-with-SHA1 signature", mixed("ec", "sha1", ecdsaSHA1), false},
		{"sha256 field, sha1WithRSA signature", mixed("rsa", "sha1", rsaSHA1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Verify(tc.sig, d, ts)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, signer %v", c.Subject)
			}
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "SHA-1") {
				t.Errorf("error %q: want a refusal naming SHA-1", err)
			}
		})
	}
}
