// Package objsig handles builtin fs-verity signatures of composefs objects:
// where they live in an object store, enabling fs-verity on an object with
// its signature, and checking which signature an enabled object carries.
//
// With every object enabled with a builtin signature (verified by the kernel
// against the .fs-verity keyring), one IPE rule,
// `op=EXECUTE fsverity_signature=TRUE action=ALLOW`, allows a whole root:
// IPE evaluates the object behind a composefs overlay file.
//
// Format: the signature of the object "ab/cdef…" is the file "ab/cdef….sig"
// beside it in the same store, a DER PKCS#7 SignedData, detached, without
// signed attributes or certificates, over the kernel's
// fsverity_formatted_digest of the object: exactly what `fsverity sign`
// writes (signature.SignDigest). A signature authenticates itself (the
// kernel checks it), so it needs no protection of its own; keeping it beside
// its object lets installers copy and garbage collectors delete the two
// together, and lets images that share an object share its signature.
package objsig

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// Suffix ends the name of an object's signature file.
const Suffix = ".sig"

// Path returns the signature file of the object at path (a store-relative
// object path "ab/cdef…" or a full path).
func Path(object string) string { return object + Suffix }

// Errors that EnableObject and Check wrap.
var (
	// ErrDigest: the object's content is not what the image expects.
	ErrDigest = errors.New("object's fs-verity digest differs from the image's")
	// ErrUnsigned: fs-verity is enabled without a builtin signature.
	ErrUnsigned = verity.ErrNoSignature
	// ErrUntrusted: fs-verity is enabled with a builtin signature that no
	// given certificate made (or with a different one, when none is given).
	ErrUntrusted = errors.New("object's builtin signature is not from a trusted signer")
)

// Outcome says what EnableObject did.
type Outcome int

const (
	// Enabled: fs-verity was enabled now, with the signature.
	Enabled Outcome = iota
	// AlreadySigned: fs-verity was already on, with exactly this signature.
	AlreadySigned
	// AlreadyTrusted: fs-verity was already on with another signature of
	// the same digest by a trusted signer (e.g. an ECDSA signature made
	// again, or an object shared with an image signed by another trusted
	// key).
	AlreadyTrusted
)

// EnableObject enables fs-verity on the object file at path with the builtin
// signature sig and checks that the kernel's digest is want. If fs-verity
// was enabled earlier, the object is accepted only with exactly sig or with
// a signature by a certificate in trusted (which may be nil); an object
// enabled without a signature or by another signer is an error wrapping
// ErrUnsigned or ErrUntrusted, never silently accepted: fs-verity cannot be
// enabled twice, so such an object keeps failing IPE's fsverity_signature
// check until it is deleted and copied again.
func EnableObject(path string, want verity.Digest, sig []byte, trusted *signature.TrustStore) (Outcome, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	outcome := Enabled
	if _, err := verity.Measure(f); err == nil {
		outcome = AlreadySigned // if EnableSigned accepts it below
	}
	err = verity.EnableSigned(f, sig)
	switch {
	case errors.Is(err, verity.ErrOtherSignature) && trusted != nil:
		if _, err := checkOpen(f, want, trusted); err != nil {
			return 0, err
		}
		outcome = AlreadyTrusted
	case errors.Is(err, verity.ErrOtherSignature):
		return 0, fmt.Errorf("%w (%v; give its signer's certificate to accept it)", ErrUntrusted, err)
	case errors.Is(err, verity.ErrNoSignature):
		return 0, fmt.Errorf("%s: %w; delete the object and copy it again to sign it", path, ErrUnsigned)
	case err != nil:
		return 0, err
	}
	got, err := verity.Measure(f)
	if err != nil {
		return 0, err
	}
	if !got.Equal(want) {
		return 0, fmt.Errorf("%s: %w: %s, the image expects %s", path, ErrDigest, got, want)
	}
	return outcome, nil
}

// Check reports the builtin signature of the object file at path: the
// trusted certificate that signed it, or an error wrapping
// verity.ErrNotEnabled, ErrUnsigned, ErrUntrusted or ErrDigest.
func Check(path string, want verity.Digest, trusted *signature.TrustStore) (*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return checkOpen(f, want, trusted)
}

func checkOpen(f *os.File, want verity.Digest, trusted *signature.TrustStore) (*x509.Certificate, error) {
	got, err := verity.Measure(f)
	if err != nil {
		return nil, err
	}
	if want.Sum != nil && !got.Equal(want) {
		return nil, fmt.Errorf("%s: %w: %s, the image expects %s", f.Name(), ErrDigest, got, want)
	}
	sig, err := verity.ReadSignature(f)
	if err != nil {
		return nil, err
	}
	if sig == nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), ErrUnsigned)
	}
	cert, err := signature.Verify(sig, got, trusted)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", f.Name(), ErrUntrusted, err)
	}
	return cert, nil
}
