// Package signature signs fs-verity digests and verifies such signatures
// against a set of trusted certificates.
//
// A cfsroot image signature is a DER PKCS#7 SignedData, detached, without
// signed attributes, over the kernel's fsverity_formatted_digest of the image
// (see verity.Digest.FormattedDigest): the format `fsverity sign` writes, that
// FS_IOC_ENABLE_VERITY accepts as a builtin signature, and that the composefs
// OCI sealing spec uses. The same encoder, with the content attached, makes
// the signed IPE policies the kernel accepts.
package signature

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"

	"fmt"
	"math/big"
	"os"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

var (
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidSHA256        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
	oidECDSAWithSHA  = map[crypto.Hash]asn1.ObjectIdentifier{
		crypto.SHA256: {1, 2, 840, 10045, 4, 3, 2},
		crypto.SHA384: {1, 2, 840, 10045, 4, 3, 3},
		crypto.SHA512: {1, 2, 840, 10045, 4, 3, 4},
	}
	digestOIDs = map[crypto.Hash]asn1.ObjectIdentifier{
		crypto.SHA256: oidSHA256,
		crypto.SHA384: oidSHA384,
		crypto.SHA512: oidSHA512,
	}
)

// The ASN.1 shapes of RFC 2315, as OpenSSL's PKCS7_sign writes them with
// PKCS7_NOATTR (no authenticated attributes) and PKCS7_NOCERTS.
type (
	contentInfo struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue `asn1:"explicit,optional,tag:0"`
	}
	issuerAndSerial struct {
		Issuer asn1.RawValue
		Serial *big.Int
	}
	signerInfo struct {
		Version                   int
		IssuerAndSerial           issuerAndSerial
		DigestAlgorithm           pkix.AlgorithmIdentifier
		DigestEncryptionAlgorithm pkix.AlgorithmIdentifier
		EncryptedDigest           []byte
	}
	signedData struct {
		Version          int
		DigestAlgorithms []pkix.AlgorithmIdentifier `asn1:"set"`
		ContentInfo      contentInfo
		Certificates     asn1.RawValue `asn1:"optional,tag:0"`
		SignerInfos      []signerInfo  `asn1:"set"`
	}
)

// Options control Sign.
type Options struct {
	// Hash is the PKCS#7 digest algorithm: SHA256 (the default), SHA384 or SHA512.
	Hash crypto.Hash
	// Detached leaves the content out of the SignedData.
	Detached bool
	// IncludeCertificate embeds the signer's certificate. fsverity-utils and
	// openssl -nocerts leave it out; verifiers then find the signer by
	// issuer and serial number among the certificates they trust.
	IncludeCertificate bool
}

// Sign makes a DER PKCS#7 SignedData over content, signed by key, whose
// certificate is cert, without authenticated attributes (as
// `openssl smime -sign -noattr -binary` and `fsverity sign` do). RSA
// signatures are PKCS#1 v1.5, hence deterministic.
func Sign(content []byte, key crypto.Signer, cert *x509.Certificate, opts Options) ([]byte, error) {
	if opts.Hash == 0 {
		opts.Hash = crypto.SHA256
	}
	digestOID, ok := digestOIDs[opts.Hash]
	if !ok {
		return nil, fmt.Errorf("sign: unsupported digest algorithm %v (use SHA-256, SHA-384 or SHA-512)", opts.Hash)
	}
	if err := CheckKey(key, cert); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	h := opts.Hash.New()
	h.Write(content)
	sig, err := key.Sign(rand.Reader, h.Sum(nil), opts.Hash)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	var sigAlg pkix.AlgorithmIdentifier
	switch key.Public().(type) {
	case *rsa.PublicKey:
		sigAlg = pkix.AlgorithmIdentifier{Algorithm: oidRSAEncryption, Parameters: asn1.NullRawValue}
	case *ecdsa.PublicKey:
		sigAlg = pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA[opts.Hash]}
	}
	return encodeSignedData(digestOID, sigAlg, cert, sig, content, opts)
}

// encodeSignedData wraps a signature made by cert's key into DER PKCS#7
// SignedData in a ContentInfo, with the content unless opts.Detached.
func encodeSignedData(digestOID asn1.ObjectIdentifier, sigAlg pkix.AlgorithmIdentifier, cert *x509.Certificate, sig, content []byte, opts Options) ([]byte, error) {
	sd := signedData{
		Version:          1,
		DigestAlgorithms: []pkix.AlgorithmIdentifier{{Algorithm: digestOID, Parameters: asn1.NullRawValue}},
		ContentInfo:      contentInfo{ContentType: oidData},
		SignerInfos: []signerInfo{{
			Version:                   1,
			IssuerAndSerial:           issuerAndSerial{Issuer: asn1.RawValue{FullBytes: cert.RawIssuer}, Serial: cert.SerialNumber},
			DigestAlgorithm:           pkix.AlgorithmIdentifier{Algorithm: digestOID, Parameters: asn1.NullRawValue},
			DigestEncryptionAlgorithm: sigAlg,
			EncryptedDigest:           sig,
		}},
	}
	if !opts.Detached {
		octets, err := asn1.Marshal(content)
		if err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		sd.ContentInfo.Content = asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: octets}
	}
	if opts.IncludeCertificate {
		sd.Certificates = asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: cert.Raw}
	}
	inner, err := asn1.Marshal(sd)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return asn1.Marshal(contentInfo{
		ContentType: oidSignedData,
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner},
	})
}

// SignDigest signs the formatted fs-verity digest d as `fsverity sign` does:
// detached, no certificates, and the PKCS#7 digest algorithm equal to the
// fs-verity hash algorithm.
func SignDigest(d verity.Digest, key crypto.Signer, cert *x509.Certificate) ([]byte, error) {
	h := crypto.SHA256
	if d.Algorithm == verity.SHA512 {
		h = crypto.SHA512
	}
	return Sign(d.FormattedDigest(), key, cert, Options{Hash: h, Detached: true})
}

// CheckKey checks that key is a signing key cfsroot accepts (RSA of 2048 to
// 4096 bits, ECDSA on P-256 or P-384: what the kernel verifies for fs-verity
// and IPE) and that cert holds its public key.
func CheckKey(key crypto.Signer, cert *x509.Certificate) error {
	switch k := key.Public().(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < 2048 || bits > 4096 {
			return fmt.Errorf("RSA key of %d bits: use 2048 to 4096 bits", bits)
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA key on %s: use P-256 or P-384", k.Curve.Params().Name)
		}
	default:
		return fmt.Errorf("unsupported key type %T: use RSA or ECDSA", k)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("the private key does not belong to certificate %q", cert.Subject)
	}
	return nil
}

// LoadKey reads a PEM private key: PKCS#8 ("PRIVATE KEY"), PKCS#1
// ("RSA PRIVATE KEY") or SEC 1 ("EC PRIVATE KEY").
func LoadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("load key: no PEM private key in %s", path)
		}
		var key any
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("load key: %s is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)", path)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load key %s: %w", path, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("load key %s: %T cannot sign", path, key)
		}
		return signer, nil
	}
}

// LoadCertificates reads every certificate in a PEM file (DER is accepted
// for a file holding a single certificate).
func LoadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load certificates: %w", err)
	}
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("load certificates: %s is neither PEM nor a DER certificate: %w", path, err)
		}
		return []*x509.Certificate{c}, nil
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("load certificates from %s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("load certificates: no PEM CERTIFICATE in %s", path)
	}
	return certs, nil
}

// LoadCertificate reads the single certificate in a PEM or DER file.
func LoadCertificate(path string) (*x509.Certificate, error) {
	certs, err := LoadCertificates(path)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("load certificate: %s holds %d certificates, want one", path, len(certs))
	}
	return certs[0], nil
}
