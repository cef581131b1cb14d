// Package xxhash is the 32-bit xxHash EROFS uses for its xattr name filter,
// shared by the composefs writer and reader.
package xxhash

import (
	"encoding/binary"
	"math/bits"
)

// Sum32 is the 32-bit xxHash as the Linux kernel implements it (lib/xxhash.c);
// EROFS uses it for the per-inode xattr name filter, so it must match the
// kernel's bit for bit.
func Sum32(p []byte, seed uint32) uint32 {
	const (
		prime1 = 2654435761
		prime2 = 2246822519
		prime3 = 3266489917
		prime4 = 668265263
		prime5 = 374761393
	)
	round := func(acc, in uint32) uint32 {
		acc += in * prime2
		acc = bits.RotateLeft32(acc, 13)
		return acc * prime1
	}
	n := len(p)
	var h uint32
	if n >= 16 {
		v1 := seed + prime1 + prime2
		v2 := seed + prime2
		v3 := seed
		v4 := seed - prime1
		for len(p) >= 16 {
			v1 = round(v1, binary.LittleEndian.Uint32(p[0:]))
			v2 = round(v2, binary.LittleEndian.Uint32(p[4:]))
			v3 = round(v3, binary.LittleEndian.Uint32(p[8:]))
			v4 = round(v4, binary.LittleEndian.Uint32(p[12:]))
			p = p[16:]
		}
		h = bits.RotateLeft32(v1, 1) + bits.RotateLeft32(v2, 7) +
			bits.RotateLeft32(v3, 12) + bits.RotateLeft32(v4, 18)
	} else {
		h = seed + prime5
	}
	h += uint32(n)
	for len(p) >= 4 {
		h += binary.LittleEndian.Uint32(p) * prime3
		h = bits.RotateLeft32(h, 17) * prime4
		p = p[4:]
	}
	for _, b := range p {
		h += uint32(b) * prime5
		h = bits.RotateLeft32(h, 11) * prime1
	}
	h ^= h >> 15
	h *= prime2
	h ^= h >> 13
	h *= prime3
	h ^= h >> 16
	return h
}
