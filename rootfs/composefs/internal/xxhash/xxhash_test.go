package xxhash

import "testing"

// The reference implementation's published values: `xxhsum -H0` for the
// strings, and the sanity check of xxHash's xxhsum.c (BMK_sanityCheck, in
// github.com/Cyan4973/xxHash from r39 to v0.7), which hashes prefixes of a
// generated 101-byte buffer with seed 0 and with seed PRIME32_1
// (2654435761). EROFS hashes xattr names with a non-zero seed, so seeds
// other than 0 must be right too.
func TestSum32(t *testing.T) {
	const prime = 2654435761
	// sanity is xxhsum.c's sanityBuffer: byteGen starts at PRIME32_1; each
	// byte is byteGen>>24, then byteGen *= byteGen (32-bit).
	sanity := make([]byte, 101)
	gen := uint32(prime)
	for i := range sanity {
		sanity[i] = byte(gen >> 24)
		gen *= gen
	}
	for _, tc := range []struct {
		in   []byte
		seed uint32
		want uint32
	}{
		{[]byte(""), 0, 0x02cc5d05},
		{[]byte("abc"), 0, 0x32d153ff},
		{nil, prime, 0x36b78ae7},
		{sanity[:1], 0, 0xb85cbee5},
		{sanity[:1], prime, 0xd5845d64},
		{sanity[:14], 0, 0xe5aa0ab4},
		{sanity[:14], prime, 0x4481951d},
		{sanity, 0, 0x1f1aa412},
		{sanity, prime, 0x498ec8e2},
	} {
		if got := Sum32(tc.in, tc.seed); got != tc.want {
			t.Errorf("Sum32(%d bytes, %d) = %#x, want %#x", len(tc.in), tc.seed, got, tc.want)
		}
	}
}
