package signature

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/smallstep/pkcs7"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// Errors that Verify wraps, so callers can tell why a signature was refused.
var (
	ErrMalformed       = errors.New("not a valid PKCS#7 signature")
	ErrUntrustedSigner = errors.New("signer is not in the trust store")
	ErrMismatch        = errors.New("signature does not match the digest")
	ErrEmptyTrustStore = errors.New("trust store holds no certificates")
)

// TrustStore is the set of certificates whose signatures cfsroot accepts.
// Certificates are trusted as they are: no chains, and no validity dates (a
// booting machine has no trustworthy clock). To rotate keys, trust both the
// old and the new certificate for a while.
type TrustStore struct {
	certs []*x509.Certificate
}

// NewTrustStore trusts exactly certs.
func NewTrustStore(certs ...*x509.Certificate) *TrustStore {
	return &TrustStore{certs: certs}
}

// LoadTrustStore reads trusted certificates from a PEM file (one or more
// certificates) or from every *.pem, *.crt and *.der file in a directory.
func LoadTrustStore(path string) (*TrustStore, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("trust store: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		files = nil
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("trust store: %w", err)
		}
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".pem", ".crt", ".der", ".cer":
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
		sort.Strings(files)
	}
	ts := &TrustStore{}
	for _, f := range files {
		certs, err := LoadCertificates(f)
		if err != nil {
			return nil, fmt.Errorf("trust store: %w", err)
		}
		ts.certs = append(ts.certs, certs...)
	}
	if len(ts.certs) == 0 {
		return nil, fmt.Errorf("trust store %s: %w (want .pem, .crt or .der files)", path, ErrEmptyTrustStore)
	}
	return ts, nil
}

// Certificates returns the trusted certificates.
func (ts *TrustStore) Certificates() []*x509.Certificate { return ts.certs }

// find returns the trusted certificate with this issuer and serial number.
func (ts *TrustStore) find(rawIssuer []byte, serial *big.Int) *x509.Certificate {
	for _, c := range ts.certs {
		if bytes.Equal(c.RawIssuer, rawIssuer) && serial != nil && c.SerialNumber.Cmp(serial) == 0 {
			return c
		}
	}
	return nil
}

// Fingerprint is the SHA-256 of a certificate's DER encoding, in lowercase
// hex (openssl x509 -fingerprint -sha256 without the colons): how
// cfsroot names a signer in logs, the status file and TPM measurements.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Verify checks that sig is a PKCS#7 signature over the formatted digest d by
// a certificate in ts, and returns that certificate. One valid signature
// from a trusted certificate suffices. Certificates carried inside sig are
// ignored: the signer is found by issuer and serial number in ts only.
func Verify(sig []byte, d verity.Digest, ts *TrustStore) (*x509.Certificate, error) {
	if ts == nil || len(ts.certs) == 0 {
		return nil, fmt.Errorf("verify: %w", ErrEmptyTrustStore)
	}
	return verify(sig, d.FormattedDigest(), d.Algorithm, ts)
}

// VerifyContent checks a signature over arbitrary content (attached or
// detached), such as a signed IPE policy, and returns the signer.
func VerifyContent(sig, content []byte, ts *TrustStore) (*x509.Certificate, error) {
	if ts == nil || len(ts.certs) == 0 {
		return nil, fmt.Errorf("verify: %w", ErrEmptyTrustStore)
	}
	return verify(sig, content, 0, ts)
}

func verify(sig, content []byte, alg verity.Algorithm, ts *TrustStore) (cert *x509.Certificate, err error) {
	p7, err := parse(sig)
	if err != nil {
		return nil, err
	}
	if len(p7.Signers) == 0 {
		return nil, fmt.Errorf("verify: %w: it has no signers", ErrMalformed)
	}
	if len(p7.Content) > 0 && !bytes.Equal(p7.Content, content) {
		if alg != 0 {
			if other, perr := verity.ParseFormattedDigest(p7.Content); perr == nil {
				return nil, fmt.Errorf("verify: %w: the signature is for %s, the image's digest is %s", ErrMismatch, other, verity.Digest{Algorithm: alg, Sum: content[12:]})
			}
		}
		return nil, fmt.Errorf("verify: %w: the signature carries different content", ErrMismatch)
	}
	var untrusted []string
	var failures []error
	for i, s := range p7.Signers {
		ias := s.IssuerAndSerialNumber
		c := ts.find(ias.IssuerName.FullBytes, ias.SerialNumber)
		if c == nil {
			untrusted = append(untrusted, fmt.Sprintf("issuer %q serial %s", issuerString(ias.IssuerName.FullBytes), ias.SerialNumber))
			continue
		}
		one := *p7
		one.Content = content
		one.Certificates = []*x509.Certificate{c}
		one.Signers = p7.Signers[i : i+1]
		if err := verifyOne(&one); err != nil {
			failures = append(failures, fmt.Errorf("by %q: %w", c.Subject, err))
			continue
		}
		return c, nil
	}
	if len(failures) > 0 {
		hint := ""
		if alg != 0 {
			if h, ok := hashOfOID(p7.Signers[0].DigestAlgorithm.Algorithm); ok && h != alg.String() {
				hint = fmt.Sprintf(" (it was made with %s, the image digest is %s: sign and digest with the same --hash-alg)", h, alg)
			}
		}
		return nil, fmt.Errorf("verify: %w%s: %w", ErrMismatch, hint, errors.Join(failures...))
	}
	return nil, fmt.Errorf("verify: %w: signed by %s", ErrUntrustedSigner, strings.Join(untrusted, "; "))
}

// parse parses DER PKCS#7 SignedData. The parser is a dependency; hostile
// input must yield an error, never a crash of the caller. Input that is not
// DER, or larger than MaxDERSize, or nested deeper than MaxDERDepth, is
// refused before it is parsed.
func parse(sig []byte) (p7 *pkcs7.PKCS7, err error) {
	if len(sig) == 0 {
		return nil, fmt.Errorf("verify: %w: the signature is empty", ErrMalformed)
	}
	// The parser recurses without bound and would overflow the stack on
	// deeply nested input, which recover cannot catch: only bounded DER
	// reaches it.
	if err := CheckDER(sig); err != nil {
		return nil, fmt.Errorf("verify: %w: %w", ErrMalformed, err)
	}
	defer func() {
		if r := recover(); r != nil {
			p7, err = nil, fmt.Errorf("verify: %w: parser failed: %v", ErrMalformed, r)
		}
	}()
	p7, err = pkcs7.Parse(sig)
	if err != nil {
		return nil, fmt.Errorf("verify: %w: %w", ErrMalformed, err)
	}
	return p7, nil
}

func verifyOne(p7 *pkcs7.PKCS7) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: verifier failed: %v", ErrMalformed, r)
		}
	}()
	s := p7.Signers[0]
	if err := checkAlgorithms(s.DigestAlgorithm.Algorithm, s.DigestEncryptionAlgorithm.Algorithm); err != nil {
		return err
	}
	return p7.Verify()
}

var (
	oidSHA1             = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidECPublicKeyP256  = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidECPublicKeyP384  = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	signatureAlgorithms = []struct {
		oid  asn1.ObjectIdentifier
		hash string // "" when the digest algorithm field decides the hash
	}{
		{oidRSAEncryption, ""},
		{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, "sha256"}, // sha256WithRSAEncryption
		{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}, "sha384"},
		{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}, "sha512"},
		{oidECDSAWithSHA[crypto.SHA256], "sha256"},
		{oidECDSAWithSHA[crypto.SHA384], "sha384"},
		{oidECDSAWithSHA[crypto.SHA512], "sha512"},
		{oidECPublicKeyP256, ""},
		{oidECPublicKeyP384, ""},
	}
)

// checkAlgorithms accepts a SignerInfo's digest algorithm only if it is
// SHA-256, SHA-384 or SHA-512, and its signature algorithm only if it is
// RSA or ECDSA with no hash of its own or with that same hash. The PKCS#7
// library picks the signature's hash from the signature algorithm for
// ECDSA, so checking the digest field alone let an ecdsa-with-SHA1
// signature through; SHA-1 is refused in both fields, as is any other
// algorithm the library knows (DSA, MD5, SHA-224).
func checkAlgorithms(digest, sig asn1.ObjectIdentifier) error {
	h, ok := hashOfOID(digest)
	if !ok {
		if digest.Equal(oidSHA1) {
			return errors.New("digest algorithm SHA-1 is refused (use SHA-256, SHA-384 or SHA-512)")
		}
		return fmt.Errorf("digest algorithm %v is not accepted (use SHA-256, SHA-384 or SHA-512)", digest)
	}
	for _, a := range signatureAlgorithms {
		if !sig.Equal(a.oid) {
			continue
		}
		if a.hash != "" && a.hash != h {
			return fmt.Errorf("signature algorithm %v uses %s, the digest algorithm is %s: refused", sig, a.hash, h)
		}
		return nil
	}
	if strings.Contains(sigAlgorithmName(sig), "SHA-1") {
		return fmt.Errorf("signature algorithm %s (%v) is refused: SHA-1", sigAlgorithmName(sig), sig)
	}
	return fmt.Errorf("signature algorithm %v is not accepted (use RSA PKCS#1 v1.5 or ECDSA with SHA-256, SHA-384 or SHA-512)", sig)
}

// sigAlgorithmName names the SHA-1 signature algorithms in refusals.
func sigAlgorithmName(oid asn1.ObjectIdentifier) string {
	switch oid.String() {
	case "1.2.840.10045.4.1":
		return "ecdsa-with-SHA-1"
	case "1.2.840.113549.1.1.5":
		return "sha1WithRSAEncryption (SHA-1)"
	case "1.2.840.10040.4.3":
		return "dsa-with-SHA-1"
	}
	return oid.String()
}

func hashOfOID(oid asn1.ObjectIdentifier) (string, bool) {
	switch {
	case oid.Equal(oidSHA256):
		return "sha256", true
	case oid.Equal(oidSHA384):
		return "sha384", true
	case oid.Equal(oidSHA512):
		return "sha512", true
	}
	return "", false
}

// issuerString renders a DER Name for error messages.
func issuerString(der []byte) string {
	var rdn pkix.RDNSequence
	if rest, err := asn1.Unmarshal(der, &rdn); err != nil || len(rest) > 0 {
		return hex.EncodeToString(der)
	}
	var name pkix.Name
	name.FillFromRDNSequence(&rdn)
	return name.String()
}
