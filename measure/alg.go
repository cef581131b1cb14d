package measure

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"strconv"
	"strings"

	"github.com/cfsroot/cfsroot/measure/internal/sm3"
)

// Alg is a PCR bank's hash algorithm, numbered as the TPM numbers them
// (TPM_ALG_ID, TPM 2.0 Part 2 and the TCG Algorithm Registry).
type Alg uint16

// The hash algorithms cfsroot computes itself. A TPM may have banks with
// other algorithms; Measurer.Extend has the TPM hash the event for those (see
// the package documentation).
const (
	SHA1   Alg = 0x0004
	SHA256 Alg = 0x000B
	SHA384 Alg = 0x000C
	SHA512 Alg = 0x000D
	SM3    Alg = 0x0012 // TPM_ALG_SM3_256
)

// KnownAlgs lists the algorithms of Alg.New, in TPM_ALG_ID order.
var KnownAlgs = []Alg{SHA1, SHA256, SHA384, SHA512, SM3}

// String returns the name used in the event log's "hashAlg" field: the names
// systemd writes ("sha1", "sha256", "sha384", "sha512"), "sm3_256" as in the
// TCG algorithm registry, and "0xNNNN" for anything else.
func (a Alg) String() string {
	switch a {
	case SHA1:
		return "sha1"
	case SHA256:
		return "sha256"
	case SHA384:
		return "sha384"
	case SHA512:
		return "sha512"
	case SM3:
		return "sm3_256"
	}
	return fmt.Sprintf("0x%04x", uint16(a))
}

// Known reports whether New can compute a.
func (a Alg) Known() bool { return a.New() != nil }

// New returns a new hash for a, or nil for an algorithm cfsroot cannot
// compute.
func (a Alg) New() hash.Hash {
	switch a {
	case SHA1:
		return sha1.New()
	case SHA256:
		return sha256.New()
	case SHA384:
		return sha512.New384()
	case SHA512:
		return sha512.New()
	case SM3:
		return sm3.New()
	}
	return nil
}

// Size returns the digest size, 0 for an unknown algorithm.
func (a Alg) Size() int {
	if h := a.New(); h != nil {
		return h.Size()
	}
	return 0
}

// ParseAlg accepts the names String returns (case-insensitive, "sm3" too) and
// "0xNNNN" algorithm numbers.
func ParseAlg(s string) (Alg, error) {
	switch strings.ToLower(s) {
	case "sha1":
		return SHA1, nil
	case "sha256":
		return SHA256, nil
	case "sha384":
		return SHA384, nil
	case "sha512":
		return SHA512, nil
	case "sm3_256", "sm3":
		return SM3, nil
	}
	if rest, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		if n, err := strconv.ParseUint(rest, 16, 16); err == nil {
			return Alg(n), nil
		}
	}
	return 0, fmt.Errorf("unknown PCR bank hash algorithm %q (want sha1, sha256, sha384, sha512 or sm3_256)", s)
}

// ParseAlgs parses a comma-separated list of bank names, as in --bank.
func ParseAlgs(list string) ([]Alg, error) {
	var algs []Alg
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		a, err := ParseAlg(s)
		if err != nil {
			return nil, err
		}
		for _, b := range algs {
			if b == a {
				return nil, fmt.Errorf("bank %s listed twice", a)
			}
		}
		algs = append(algs, a)
	}
	if len(algs) == 0 {
		return nil, fmt.Errorf("no PCR bank given")
	}
	return algs, nil
}

// digest returns the hash of data with a, or nil for an unknown algorithm.
func digest(a Alg, data []byte) []byte {
	h := a.New()
	if h == nil {
		return nil
	}
	h.Write(data)
	return h.Sum(nil)
}
