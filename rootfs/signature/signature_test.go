package signature

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// newCert makes a self-signed certificate for key.
func newCert(t testing.TB, key crypto.Signer, cn string, serial int64) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rsaKey(t testing.TB, bits int) crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ecKey(t testing.TB, c elliptic.Curve) crypto.Signer {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func digestOf(t testing.TB, s string, alg verity.Algorithm) verity.Digest {
	d, err := verity.DigestReader(strings.NewReader(s), verity.Params{Algorithm: alg})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSignVerifyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		alg  verity.Algorithm
	}{
		{"rsa2048", rsaKey(t, 2048), verity.SHA256},
		{"rsa3072-sha512", rsaKey(t, 3072), verity.SHA512},
		{"rsa4096", rsaKey(t, 4096), verity.SHA256},
		{"p256", ecKey(t, elliptic.P256()), verity.SHA256},
		{"p384-sha512", ecKey(t, elliptic.P384()), verity.SHA512},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := newCert(t, tc.key, tc.name, 7)
			d := digestOf(t, "image "+tc.name, tc.alg)
			sig, err := SignDigest(d, tc.key, cert)
			if err != nil {
				t.Fatal(err)
			}
			other := newCert(t, rsaKey(t, 2048), "other", 8)
			got, err := Verify(sig, d, NewTrustStore(other, cert))
			if err != nil {
				t.Fatal(err)
			}
			if got != cert {
				t.Errorf("signer = %v, want %v", got.Subject, cert.Subject)
			}
		})
	}
}

func TestVerifyRefuses(t *testing.T) {
	key := rsaKey(t, 2048)
	cert := newCert(t, key, "signer", 1)
	trusted := NewTrustStore(cert)
	d := digestOf(t, "image", verity.SHA256)
	sig, err := SignDigest(d, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	d512 := digestOf(t, "image", verity.SHA512)
	sig512, _ := SignDigest(d512, key, cert)
	strangerKey := rsaKey(t, 2048)
	stranger := newCert(t, strangerKey, "stranger", 2)
	sigStranger, _ := SignDigest(d, strangerKey, stranger)
	// An impostor certificate with the trusted certificate's issuer and
	// serial, embedded in the signature, must not be used.
	impostorKey := rsaKey(t, 2048)
	impostor := newCert(t, impostorKey, "signer", 1)
	sigImpostor, _ := Sign(d.FormattedDigest(), impostorKey, impostor, Options{Detached: true, IncludeCertificate: true})
	// Attached content that is another digest.
	sigOtherContent, _ := Sign(digestOf(t, "other", verity.SHA256).FormattedDigest(), key, cert, Options{})

	for _, tc := range []struct {
		name    string
		sig     []byte
		d       verity.Digest
		ts      *TrustStore
		wantErr error
		wantMsg string
	}{
		{"empty signature", nil, d, trusted, ErrMalformed, "empty"},
		{"truncated", sig[:len(sig)/2], d, trusted, ErrMalformed, ""},
		{"garbage", []byte("not a signature at all"), d, trusted, ErrMalformed, ""},
		{"different digest", sig, digestOf(t, "other image", verity.SHA256), trusted, ErrMismatch, ""},
		{"sha512 signature for sha256 digest", sig512, d, trusted, ErrMismatch, "made with sha512"},
		{"untrusted signer", sigStranger, d, trusted, ErrUntrustedSigner, `"CN=stranger"`},
		{"empty trust store", sig, d, NewTrustStore(), ErrEmptyTrustStore, ""},
		{"nil trust store", sig, d, nil, ErrEmptyTrustStore, ""},
		{"embedded impostor certificate", sigImpostor, d, trusted, ErrMismatch, ""},
		{"attached other content", sigOtherContent, d, trusted, ErrMismatch, "the signature is for sha256:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Verify(tc.sig, tc.d, tc.ts)
			if err == nil {
				t.Fatalf("accepted, signer %v", c.Subject)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error %q is not %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
		})
	}
}

func TestCheckKey(t *testing.T) {
	for _, tc := range []struct {
		name    string
		key     crypto.Signer
		wantErr string
	}{
		{"rsa1024", rsaKey(t, 1024), "1024 bits"},
		{"p521", ecKey(t, elliptic.P521()), "P-521"},
	} {
		cert := newCert(t, tc.key, tc.name, 1)
		if err := CheckKey(tc.key, cert); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: CheckKey = %v, want %q", tc.name, err, tc.wantErr)
		}
	}
	k := rsaKey(t, 2048)
	if err := CheckKey(k, newCert(t, rsaKey(t, 2048), "x", 1)); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("mismatched key and certificate: %v", err)
	}
}

func TestLoadTrustStore(t *testing.T) {
	dir := t.TempDir()
	var certs []*x509.Certificate
	for i, name := range []string{"a.pem", "b.crt"} {
		c := newCert(t, rsaKey(t, 2048), name, int64(i))
		certs = append(certs, c)
		os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "README"), []byte("ignored"), 0o644)
	ts, err := LoadTrustStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts.Certificates()) != 2 {
		t.Errorf("loaded %d certificates, want 2", len(ts.Certificates()))
	}
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	os.WriteFile(bundle, b, 0o644)
	if ts, err := LoadTrustStore(bundle); err != nil || len(ts.Certificates()) != 2 {
		t.Errorf("bundle: %v", err)
	}
	if _, err := LoadTrustStore(t.TempDir()); !errors.Is(err, ErrEmptyTrustStore) {
		t.Errorf("empty directory: %v", err)
	}
	garbage := filepath.Join(t.TempDir(), "x.pem")
	os.WriteFile(garbage, []byte("hello"), 0o644)
	if _, err := LoadTrustStore(garbage); err == nil {
		t.Error("garbage accepted")
	}
	if _, err := LoadTrustStore(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing path accepted")
	}
}

// FuzzVerify feeds arbitrary signatures to the verifier: it must return an
// error or a trusted signer, never panic, and never accept a signature that
// was not made by the trusted key over this digest.
func FuzzVerify(f *testing.F) {
	key := rsaKey(f, 2048)
	cert := newCert(f, key, "signer", 1)
	eck := ecKey(f, elliptic.P256())
	ecCert := newCert(f, eck, "ec", 2)
	d := digestOf(f, "image", verity.SHA256)
	good, _ := SignDigest(d, key, cert)
	ecGood, _ := SignDigest(d, eck, ecCert)
	attached, _ := Sign(d.FormattedDigest(), key, cert, Options{IncludeCertificate: true})
	for _, s := range [][]byte{good, ecGood, attached, {0x30, 0x80}, {}} {
		f.Add(s)
	}
	// Deep nesting and huge inputs (issue 12, finding 4).
	for _, s := range hostileDER() {
		f.Add(s)
	}
	ts := NewTrustStore(cert, ecCert)
	f.Fuzz(func(t *testing.T, sig []byte) {
		c, err := Verify(sig, d, ts)
		if err != nil {
			return
		}
		if err := CheckDER(sig); err != nil {
			t.Fatalf("accepted input that is not bounded DER: %v", err)
		}
		if c != cert && c != ecCert {
			t.Fatalf("accepted signer %v outside the trust store", c.Subject)
		}
	})
}
