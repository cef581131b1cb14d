package signature

import (
	"errors"
	"fmt"
)

// Bounds on what reaches the PKCS#7 parser. The parser (smallstep/pkcs7)
// first converts BER to DER recursively, without a depth limit and with
// rescans that grow quadratically: 6 MB of nested indefinite-length
// headers exhausted memory in the init, and on the host overflowed the
// goroutine stack, which recover cannot catch (issue 12, finding 4). So a
// signature must be DER (definite, minimal lengths), at most MaxDERSize
// bytes and MaxDERDepth levels deep, before it is parsed. Real signatures
// are DER (fsverity sign, openssl -outform der, cfsroot sign), a few KB,
// and about 10 levels deep with an embedded certificate.
const (
	MaxDERSize  = 1 << 20
	MaxDERDepth = 32
)

// ErrNotDER is wrapped by errors about input that is not bounded DER.
var ErrNotDER = errors.New("not DER within cfsroot's bounds")

// CheckDER walks b as one DER element and everything nested in it,
// iteratively (no recursion, whatever the input), and refuses indefinite
// lengths, non-minimal length encodings, elements overrunning their
// parent, nesting deeper than MaxDERDepth, trailing bytes and inputs larger
// than MaxDERSize. It reads each header once: linear in len(b). Call it
// before handing attacker bytes to any BER/DER parser that recurses.
func CheckDER(b []byte) error {
	if len(b) > MaxDERSize {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrNotDER, len(b), MaxDERSize)
	}
	if len(b) == 0 {
		return fmt.Errorf("%w: empty", ErrNotDER)
	}
	ends := make([]int, 0, MaxDERDepth) // end offsets of the open constructed elements
	end := len(b)                       // end of the innermost open element
	pos := 0
	for {
		for pos == end && len(ends) > 0 {
			end = ends[len(ends)-1]
			ends = ends[:len(ends)-1]
		}
		if pos == end {
			break
		}
		at := pos
		tag := b[pos]
		pos++
		if tag&0x1f == 0x1f { // high tag number: base-128, at most 4 bytes
			n := 0
			for {
				if pos >= end || n == 4 {
					return fmt.Errorf("%w: bad tag at offset %d", ErrNotDER, at)
				}
				c := b[pos]
				pos++
				n++
				if c&0x80 == 0 {
					break
				}
			}
		}
		if pos >= end {
			return fmt.Errorf("%w: truncated header at offset %d", ErrNotDER, at)
		}
		l := int(b[pos])
		pos++
		switch {
		case l == 0x80:
			return fmt.Errorf("%w: indefinite length at offset %d (BER)", ErrNotDER, at)
		case l > 0x80:
			n := l & 0x7f
			if n > 3 || pos+n > end {
				return fmt.Errorf("%w: length of %d bytes at offset %d", ErrNotDER, n, at)
			}
			if b[pos] == 0 {
				return fmt.Errorf("%w: non-minimal length at offset %d", ErrNotDER, at)
			}
			l = 0
			for _, c := range b[pos : pos+n] {
				l = l<<8 | int(c)
			}
			pos += n
			if l < 0x80 {
				return fmt.Errorf("%w: non-minimal length at offset %d", ErrNotDER, at)
			}
		}
		if l > end-pos {
			return fmt.Errorf("%w: element at offset %d overruns its container (%d bytes, %d left)", ErrNotDER, at, l, end-pos)
		}
		if tag&0x20 == 0 { // primitive: skip its content
			pos += l
			continue
		}
		if len(ends) == MaxDERDepth {
			return fmt.Errorf("%w: nested deeper than %d levels at offset %d", ErrNotDER, MaxDERDepth, at)
		}
		ends = append(ends, end)
		end = pos + l
	}
	// The loop ends at the end of the input with nothing open; the input
	// must have been exactly one element.
	if first := elementLen(b); first != len(b) {
		return fmt.Errorf("%w: %d bytes after the signature", ErrNotDER, len(b)-first)
	}
	return nil
}

// elementLen is the length of the first element of b, whose header
// CheckDER has already validated.
func elementLen(b []byte) int {
	pos := 1
	if b[0]&0x1f == 0x1f {
		for b[pos]&0x80 != 0 {
			pos++
		}
		pos++
	}
	l := int(b[pos])
	pos++
	if l > 0x80 {
		n := l & 0x7f
		l = 0
		for _, c := range b[pos : pos+n] {
			l = l<<8 | int(c)
		}
		pos += n
	}
	return pos + l
}
