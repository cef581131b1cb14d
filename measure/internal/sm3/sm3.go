// Package sm3 implements the SM3 hash function (GB/T 32905-2016, also
// ISO/IEC 10118-3:2018), the hash of the TPM's TPM_ALG_SM3_256 PCR banks.
//
// The Go standard library has no SM3, and a TPM with an active SM3 bank must
// have that bank extended too: a bank left alone could be extended by anyone
// to any value. The implementation is the plain specification; it is checked
// against OpenSSL's SM3 in the tests.
package sm3

import (
	"encoding/binary"
	"hash"
	"math/bits"
)

// Size is the size of an SM3 digest in bytes; BlockSize its block size.
const (
	Size      = 32
	BlockSize = 64
)

var iv = [8]uint32{
	0x7380166f, 0x4914b2b9, 0x172442d7, 0xda8a0600,
	0xa96f30bc, 0x163138aa, 0xe38dee4d, 0xb0fb0e4e,
}

type digest struct {
	h   [8]uint32
	buf [BlockSize]byte
	nx  int
	len uint64
}

// New returns a new SM3 hash.Hash.
func New() hash.Hash {
	d := new(digest)
	d.Reset()
	return d
}

// Sum returns the SM3 digest of data.
func Sum(data []byte) [Size]byte {
	d := digest{h: iv}
	d.Write(data)
	var out [Size]byte
	copy(out[:], d.Sum(nil))
	return out
}

func (d *digest) Reset()         { *d = digest{h: iv} }
func (d *digest) Size() int      { return Size }
func (d *digest) BlockSize() int { return BlockSize }

func (d *digest) Write(p []byte) (int, error) {
	n := len(p)
	d.len += uint64(n)
	if d.nx > 0 {
		c := copy(d.buf[d.nx:], p)
		d.nx += c
		p = p[c:]
		if d.nx == BlockSize {
			d.block(d.buf[:])
			d.nx = 0
		}
	}
	for len(p) >= BlockSize {
		d.block(p[:BlockSize])
		p = p[BlockSize:]
	}
	d.nx += copy(d.buf[:], p)
	return n, nil
}

// Sum appends the digest of what was written so far to b; d is unchanged.
func (d *digest) Sum(b []byte) []byte {
	c := *d
	bitLen := c.len * 8
	var pad [BlockSize + 8]byte
	pad[0] = 0x80
	padLen := BlockSize - int(c.len%BlockSize) // 1..64 bytes of 0x80 and zeros...
	if padLen < 9 {
		padLen += BlockSize // ...leaving room for the 64-bit length
	}
	binary.BigEndian.PutUint64(pad[padLen-8:], bitLen)
	c.Write(pad[:padLen])
	for _, v := range c.h {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

func p0(x uint32) uint32 { return x ^ bits.RotateLeft32(x, 9) ^ bits.RotateLeft32(x, 17) }
func p1(x uint32) uint32 { return x ^ bits.RotateLeft32(x, 15) ^ bits.RotateLeft32(x, 23) }

// block is the compression function CF of the standard.
func (d *digest) block(b []byte) {
	var w [68]uint32
	var w1 [64]uint32
	for i := 0; i < 16; i++ {
		w[i] = binary.BigEndian.Uint32(b[4*i:])
	}
	for j := 16; j < 68; j++ {
		w[j] = p1(w[j-16]^w[j-9]^bits.RotateLeft32(w[j-3], 15)) ^ bits.RotateLeft32(w[j-13], 7) ^ w[j-6]
	}
	for j := 0; j < 64; j++ {
		w1[j] = w[j] ^ w[j+4]
	}
	a, bb, c, dd, e, f, g, h := d.h[0], d.h[1], d.h[2], d.h[3], d.h[4], d.h[5], d.h[6], d.h[7]
	for j := 0; j < 64; j++ {
		t := uint32(0x79cc4519)
		if j >= 16 {
			t = 0x7a879d8a
		}
		ss1 := bits.RotateLeft32(bits.RotateLeft32(a, 12)+e+bits.RotateLeft32(t, j%32), 7)
		ss2 := ss1 ^ bits.RotateLeft32(a, 12)
		var ff, gg uint32
		if j < 16 {
			ff = a ^ bb ^ c
			gg = e ^ f ^ g
		} else {
			ff = (a & bb) | (a & c) | (bb & c)
			gg = (e & f) | (^e & g)
		}
		tt1 := ff + dd + ss2 + w1[j]
		tt2 := gg + h + ss1 + w[j]
		dd = c
		c = bits.RotateLeft32(bb, 9)
		bb = a
		a = tt1
		h = g
		g = bits.RotateLeft32(f, 19)
		f = e
		e = p0(tt2)
	}
	d.h[0] ^= a
	d.h[1] ^= bb
	d.h[2] ^= c
	d.h[3] ^= dd
	d.h[4] ^= e
	d.h[5] ^= f
	d.h[6] ^= g
	d.h[7] ^= h
}
