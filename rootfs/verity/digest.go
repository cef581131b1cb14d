// Package verity computes fs-verity file digests in user space, exactly as the
// kernel defines them (Documentation/filesystems/fsverity.rst), and wraps the
// fs-verity ioctls.
//
// A file's fs-verity digest is its identity in cfsroot: composefs objects are
// named by it, image signatures sign it, and overlayfs verity=require checks
// it. Computing it in user space lets the host tools name and sign files on
// filesystems (or kernels) without fs-verity, and lets the init check images
// that live on such filesystems.
package verity

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
)

// Algorithm is an fs-verity hash algorithm, numbered as the kernel numbers them
// (FS_VERITY_HASH_ALG_*).
type Algorithm uint8

const (
	SHA256 Algorithm = 1
	SHA512 Algorithm = 2
)

// String returns the name fsverity-utils uses ("sha256", "sha512").
func (a Algorithm) String() string {
	switch a {
	case SHA256:
		return "sha256"
	case SHA512:
		return "sha512"
	}
	return fmt.Sprintf("alg%d", uint8(a))
}

// Size returns the digest size in bytes, 0 for an unknown algorithm.
func (a Algorithm) Size() int {
	switch a {
	case SHA256:
		return sha256.Size
	case SHA512:
		return sha512.Size
	}
	return 0
}

func (a Algorithm) new() hash.Hash {
	if a == SHA512 {
		return sha512.New()
	}
	return sha256.New()
}

// ParseAlgorithm accepts the names fsverity-utils accepts.
func ParseAlgorithm(name string) (Algorithm, error) {
	switch strings.ToLower(name) {
	case "sha256":
		return SHA256, nil
	case "sha512":
		return SHA512, nil
	}
	return 0, fmt.Errorf("unknown hash algorithm %q (want sha256 or sha512)", name)
}

// Block sizes the kernel accepts for fs-verity (it also requires the block
// size to be at most the filesystem block size and the page size).
const (
	MinBlockSize     = 1024
	MaxBlockSize     = 65536
	DefaultBlockSize = 4096
	// MaxSaltSize is the size of the salt field in the descriptor.
	MaxSaltSize = 32
)

// Params are the fs-verity parameters of a file. The zero value means
// SHA-256, 4 KiB blocks and no salt: the defaults of fsverity-utils and of
// composefs.
type Params struct {
	Algorithm Algorithm // 0 means SHA256
	BlockSize int       // 0 means DefaultBlockSize
	Salt      []byte
}

// normalized fills in defaults and checks the parameters.
func (p Params) normalized() (Params, error) {
	if p.Algorithm == 0 {
		p.Algorithm = SHA256
	}
	if p.Algorithm.Size() == 0 {
		return p, fmt.Errorf("unknown fs-verity hash algorithm %d", p.Algorithm)
	}
	if p.BlockSize == 0 {
		p.BlockSize = DefaultBlockSize
	}
	if p.BlockSize < MinBlockSize || p.BlockSize > MaxBlockSize || p.BlockSize&(p.BlockSize-1) != 0 {
		return p, fmt.Errorf("block size %d is not a power of two between %d and %d", p.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if len(p.Salt) > MaxSaltSize {
		return p, fmt.Errorf("salt is %d bytes, at most %d allowed", len(p.Salt), MaxSaltSize)
	}
	return p, nil
}

// Digest is an fs-verity file digest.
type Digest struct {
	Algorithm Algorithm
	Sum       []byte
}

// String formats the digest as fsverity-utils prints it: "sha256:<hex>".
func (d Digest) String() string {
	return d.Algorithm.String() + ":" + hex.EncodeToString(d.Sum)
}

// Equal reports whether d and o are the same algorithm and value.
func (d Digest) Equal(o Digest) bool {
	return d.Algorithm == o.Algorithm && string(d.Sum) == string(o.Sum)
}

// ParseDigest parses "sha256:<hex>", "sha512:<hex>" or a bare hex string,
// whose algorithm is then told by its length.
func ParseDigest(s string) (Digest, error) {
	alg := Algorithm(0)
	if name, hexpart, ok := strings.Cut(s, ":"); ok {
		a, err := ParseAlgorithm(name)
		if err != nil {
			return Digest{}, fmt.Errorf("parse digest: %w", err)
		}
		alg, s = a, hexpart
	}
	sum, err := hex.DecodeString(s)
	if err != nil {
		return Digest{}, fmt.Errorf("parse digest: not hex: %w", err)
	}
	if alg == 0 {
		switch len(sum) {
		case sha256.Size:
			alg = SHA256
		case sha512.Size:
			alg = SHA512
		default:
			return Digest{}, fmt.Errorf("parse digest: %d bytes is neither a sha256 nor a sha512 digest", len(sum))
		}
	}
	if len(sum) != alg.Size() {
		return Digest{}, fmt.Errorf("parse digest: %s digest must be %d bytes, got %d", alg, alg.Size(), len(sum))
	}
	return Digest{Algorithm: alg, Sum: sum}, nil
}

// FormattedDigest returns the kernel's struct fsverity_formatted_digest for d:
// "FSVerity", le16 algorithm, le16 digest size, digest. This is what
// fs-verity builtin signatures, `fsverity sign` and cfsroot image signatures
// sign.
func (d Digest) FormattedDigest() []byte {
	b := make([]byte, 0, 12+len(d.Sum))
	b = append(b, "FSVerity"...)
	b = binary.LittleEndian.AppendUint16(b, uint16(d.Algorithm))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(d.Sum)))
	return append(b, d.Sum...)
}

// ParseFormattedDigest is the inverse of FormattedDigest.
func ParseFormattedDigest(b []byte) (Digest, error) {
	if len(b) < 12 || string(b[:8]) != "FSVerity" {
		return Digest{}, errors.New("not an fsverity_formatted_digest: missing \"FSVerity\" magic")
	}
	alg := Algorithm(binary.LittleEndian.Uint16(b[8:]))
	size := int(binary.LittleEndian.Uint16(b[10:]))
	if alg.Size() == 0 || size != alg.Size() || len(b) != 12+size {
		return Digest{}, fmt.Errorf("malformed fsverity_formatted_digest (algorithm %d, size %d, %d bytes)", alg, size, len(b))
	}
	return Digest{Algorithm: alg, Sum: append([]byte(nil), b[12:]...)}, nil
}

// DigestFile computes the fs-verity digest of the file at path.
func DigestFile(path string, p Params) (Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return Digest{}, fmt.Errorf("fs-verity digest: %w", err)
	}
	defer f.Close()
	d, err := DigestReader(f, p)
	if err != nil {
		return Digest{}, fmt.Errorf("fs-verity digest of %s: %w", path, err)
	}
	return d, nil
}

// readBufferSize is how much Digest reads at a time; memory use is bounded
// by it and by one block per Merkle tree level.
const readBufferSize = 256 << 10

// DigestReader computes the fs-verity digest of everything read from r.
func DigestReader(r io.Reader, p Params) (Digest, error) {
	t, err := NewTree(p)
	if err != nil {
		return Digest{}, err
	}
	buf := make([]byte, readBufferSize)
	if _, err := io.CopyBuffer(t, onlyReader{r}, buf); err != nil {
		return Digest{}, err
	}
	return t.Digest(), nil
}

// onlyReader hides WriterTo so io.CopyBuffer uses the buffer it is given.
type onlyReader struct{ io.Reader }

// Tree is a streaming fs-verity digest: write the file's content to it, then
// call Digest, which finishes it (later writes fail). It holds one block per
// Merkle tree level, so memory use does not grow with the file size.
type Tree struct {
	p          Params
	h          hash.Hash
	paddedSalt []byte
	size       uint64
	// levels[0] collects file data; levels[i>0] collect hashes of level i-1.
	levels []level
	sum    []byte  // scratch for one hash
	digest *Digest // set once finished
}

// errFinished is returned by Write after Digest.
var errFinished = errors.New("fs-verity tree: write after Digest")

// zeroBlock pads partial blocks.
var zeroBlock [MaxBlockSize]byte

type level struct {
	buf    []byte // partial block
	blocks uint64 // completed blocks
	last   []byte // hash of the last completed block
}

// NewTree starts a streaming digest with parameters p.
func NewTree(p Params) (*Tree, error) {
	p, err := p.normalized()
	if err != nil {
		return nil, err
	}
	t := &Tree{p: p, h: p.Algorithm.new()}
	if len(p.Salt) > 0 {
		// The salt is zero-padded to the hash's input block size and
		// prepended to every block hashed in the tree.
		bs := t.h.BlockSize()
		t.paddedSalt = make([]byte, (len(p.Salt)+bs-1)/bs*bs)
		copy(t.paddedSalt, p.Salt)
	}
	t.sum = make([]byte, 0, p.Algorithm.Size())
	t.levels = []level{{buf: make([]byte, 0, p.BlockSize)}}
	return t, nil
}

// Write adds file content; it fails only after Digest.
func (t *Tree) Write(b []byte) (int, error) {
	if t.digest != nil {
		return 0, errFinished
	}
	n := len(b)
	t.size += uint64(n)
	l := &t.levels[0]
	// Hash whole blocks straight from b when nothing is pending.
	for len(b) > 0 {
		if len(l.buf) == 0 && len(b) >= t.p.BlockSize {
			t.completeBlock(0, b[:t.p.BlockSize])
			b = b[t.p.BlockSize:]
			l = &t.levels[0]
			continue
		}
		c := copy(l.buf[len(l.buf):cap(l.buf)], b)
		l.buf = l.buf[:len(l.buf)+c]
		b = b[c:]
		if len(l.buf) == t.p.BlockSize {
			t.completeBlock(0, l.buf)
			l = &t.levels[0]
			l.buf = l.buf[:0]
		}
	}
	return n, nil
}

// hashBlock hashes one block (zero-padded to the block size) with the salt.
func (t *Tree) hashBlock(block []byte) []byte {
	t.h.Reset()
	t.h.Write(t.paddedSalt)
	t.h.Write(block)
	if pad := t.p.BlockSize - len(block); pad > 0 {
		t.h.Write(zeroBlock[:pad])
	}
	return t.h.Sum(t.sum[:0])
}

// completeBlock records a finished block at level i and passes its hash up.
func (t *Tree) completeBlock(i int, block []byte) {
	sum := t.hashBlock(block)
	l := &t.levels[i]
	l.blocks++
	l.last = append(l.last[:0], sum...)
	if i+1 == len(t.levels) {
		t.levels = append(t.levels, level{buf: make([]byte, 0, t.p.BlockSize)})
	}
	up := &t.levels[i+1]
	up.buf = append(up.buf, sum...)
	if len(up.buf)+len(sum) > t.p.BlockSize {
		// No room for another hash: the block is complete (zero-padded).
		t.completeBlock(i+1, up.buf)
		t.levels[i+1].buf = t.levels[i+1].buf[:0]
	}
}

// rootHash finishes the Merkle tree and returns its root hash: the hash of
// the only block of the first level that has one (a file of one block has
// no tree blocks at all), or all zeros for an empty file.
func (t *Tree) rootHash() []byte {
	if t.size == 0 {
		return make([]byte, t.p.Algorithm.Size())
	}
	for i := 0; ; i++ {
		l := &t.levels[i]
		if len(l.buf) > 0 {
			t.completeBlock(i, l.buf)
			l = &t.levels[i]
			l.buf = l.buf[:0]
		}
		if l.blocks == 1 {
			return l.last
		}
	}
}

// descriptorSize is sizeof(struct fsverity_descriptor).
const descriptorSize = 256

// Digest finishes the tree and returns the fs-verity digest of what was
// written: the hash of the fsverity_descriptor that holds the Merkle tree
// root. Calling it again returns the same digest.
func (t *Tree) Digest() Digest {
	if t.digest == nil {
		t.digest = &Digest{Algorithm: t.p.Algorithm, Sum: t.descriptorHash()}
	}
	return *t.digest
}

func (t *Tree) descriptorHash() []byte {
	var d [descriptorSize]byte
	d[0] = 1 // version
	d[1] = byte(t.p.Algorithm)
	d[2] = byte(log2(t.p.BlockSize))
	d[3] = byte(len(t.p.Salt))
	// d[4:8]: reserved (formerly sig_size), zero.
	binary.LittleEndian.PutUint64(d[8:16], t.size)
	copy(d[16:80], t.rootHash())
	copy(d[80:112], t.p.Salt)
	h := t.p.Algorithm.new()
	h.Write(d[:])
	return h.Sum(nil)
}

func log2(n int) int {
	l := 0
	for n > 1 {
		n >>= 1
		l++
	}
	return l
}
