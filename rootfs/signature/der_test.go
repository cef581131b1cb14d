package signature

import (
	"bytes"
	"crypto/elliptic"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// nested wraps inner in n SEQUENCEs with definite lengths (in linear time:
// headers are collected inside out, then written outside in).
func nested(n int, inner []byte) []byte {
	headers := make([][]byte, n)
	l := len(inner)
	for i := range n {
		headers[i] = derHeader(0x30, l)
		l += len(headers[i])
	}
	b := make([]byte, 0, l)
	for i := n - 1; i >= 0; i-- {
		b = append(b, headers[i]...)
	}
	return append(b, inner...)
}

func derHeader(tag byte, l int) []byte {
	switch {
	case l < 0x80:
		return []byte{tag, byte(l)}
	case l < 0x100:
		return []byte{tag, 0x81, byte(l)}
	case l < 0x10000:
		return []byte{tag, 0x82, byte(l >> 8), byte(l)}
	}
	return []byte{tag, 0x83, byte(l >> 16), byte(l >> 8), byte(l)}
}

// hostileDER are inputs that crashed or slowed the PKCS#7 parser (6 MB of
// nested indefinite-length headers overflowed the goroutine stack: a fatal
// error, not a panic; issue 12, finding 4), or that are not DER.
func hostileDER() map[string][]byte {
	return map[string][]byte{
		"3M nested indefinite lengths":   bytes.Repeat([]byte{0x30, 0x80}, 3_000_000),
		"33 nested definite SEQUENCEs":   nested(MaxDERDepth+1, []byte{0x05, 0x00}),
		"150k nested definite SEQUENCEs": nested(150_000, []byte{0x05, 0x00}),
		"500k nested indefinite lengths": bytes.Repeat([]byte{0x30, 0x80}, 500_000),
		"200k nested definite lengths":   bytes.Repeat([]byte{0x30, 0x83, 0xff, 0xff, 0xff}, 200_000),
		"one indefinite length":          {0x30, 0x80, 0x05, 0x00, 0x00, 0x00},
		"non-minimal long length":        {0x30, 0x81, 0x02, 0x05, 0x00},
		"leading zero length":            {0x30, 0x82, 0x00, 0x82, 0x05, 0x00},
		"overrun":                        {0x30, 0x05, 0x05, 0x00},
		"child overruns parent":          {0x30, 0x02, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00},
		"trailing bytes":                 {0x05, 0x00, 0x00},
		"huge":                           append(derHeader(0x04, MaxDERSize), make([]byte, MaxDERSize)...),
		"truncated header":               {0x30},
		"5-byte length":                  {0x30, 0x85, 1, 0, 0, 0, 0},
		"unterminated high tag":          {0x1f, 0x81, 0x81},
	}
}

func TestCheckDERRefuses(t *testing.T) {
	for name, b := range hostileDER() {
		t.Run(name, func(t *testing.T) {
			if err := CheckDER(b); !errors.Is(err, ErrNotDER) {
				t.Errorf("checkDER = %v, want ErrNotDER", err)
			}
		})
	}
	for _, ok := range [][]byte{
		nested(MaxDERDepth, []byte{0x05, 0x00}),
		{0x04, 0x81, 0x80},
		{0x1f, 0x81, 0x01, 0x00},
	} {
		if len(ok) == 3 {
			ok = append(ok, make([]byte, 0x80)...)
		}
		if err := CheckDER(ok); err != nil {
			t.Errorf("CheckDER(% x…) = %v", ok[:min(len(ok), 8)], err)
		}
	}
}

// TestVerifyRefusesHostileDER: the same inputs through Verify are
// ErrMalformed, quickly (the whole set in well under the time the parser
// took for one deep input), and real signatures still pass checkDER.
func TestVerifyRefusesHostileDER(t *testing.T) {
	key := ecKey(t, elliptic.P256())
	cert := newCert(t, key, "signer", 1)
	d := digestOf(t, "image", verity.SHA256)
	start := time.Now()
	for name, b := range hostileDER() {
		if _, err := Verify(b, d, NewTrustStore(cert)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "not DER") {
			t.Errorf("%s: %v", name, err)
		}
	}
	t.Logf("refused %d hostile inputs in %v", len(hostileDER()), time.Since(start))
	for _, opts := range []Options{{}, {Detached: true}, {IncludeCertificate: true}} {
		sig, err := Sign(d.FormattedDigest(), key, cert, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckDER(sig); err != nil {
			t.Errorf("%+v: own signature: %v", opts, err)
		}
	}
}

// BenchmarkVerifyLargestDER: the worst inputs within the bounds (close to
// MaxDERSize of tiny elements, flat and under MaxDERDepth-1 levels) that
// CheckDER lets through to the PKCS#7 parser, which must then refuse them
// in bounded time (the parser rescans each level: depth × size).
func BenchmarkVerifyLargestDER(b *testing.B) {
	key := ecKey(b, elliptic.P256())
	cert := newCert(b, key, "signer", 1)
	d := digestOf(b, "image", verity.SHA256)
	n := (MaxDERSize - 200) / 2
	inner := bytes.Repeat([]byte{0x05, 0x00}, n)
	flat := append(derHeader(0x30, len(inner)), inner...)
	for name, in := range map[string][]byte{"flat": flat, "deep": nested(MaxDERDepth-1, flat)} {
		if err := CheckDER(in); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, err := Verify(in, d, NewTrustStore(cert)); err == nil {
					b.Fatal("accepted")
				}
			}
		})
	}
}
