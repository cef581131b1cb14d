// Package reader opens composefs images and walks their entries, checking
// every structure it reads against the image bounds and the format rules of
// libcomposefs (github.com/containers/composefs v1.0.8:
// libcomposefs/lcfs-erofs.h, lcfs-writer-erofs.c). A hostile image gives an error,
// never a panic, and no allocation grows beyond what the image size or the
// format limits allow.
//
// Entries are presented as `composefs-info dump` presents them: overlay
// xattrs written by mkcomposefs are interpreted (redirect → Payload,
// metacopy → Digest), escaped trusted.overlay.overlay.* xattrs are shown
// un-escaped, whiteouts are character devices 0/0 and the 256 root whiteouts
// are hidden. Installers, the init and the IPE policy generator use it to
// list what an image contains and which objects it needs.
package reader

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrCorrupt is wrapped by every error that reports an invalid image (as
// opposed to an I/O error).
var ErrCorrupt = errors.New("invalid composefs image")

// corrupt returns an error wrapping ErrCorrupt.
func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// Image is an open composefs image.
type Image struct {
	src     source
	closer  io.Closer
	sb      superBlock
	version uint32 // composefs format version (header composefs_version)
	flags   uint32
	size    int64 // image size from the superblock: blocks*4096
	// xattrStart is the byte offset shared xattr ids count from.
	xattrStart int64
	filter     bool // the kernel uses the xattr name filter
	// shared caches decoded shared xattrs by id: many inodes reference the
	// same few, and sharing the decoded value keeps memory proportional to
	// the image rather than to the number of references.
	shared map[uint32]rawXattr
}

// Open opens the composefs image file at path. Close it when done.
func Open(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open composefs image: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open composefs image: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open composefs image %s: not a regular file", path)
	}
	img, err := New(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	img.closer = f
	return img, nil
}

// New reads the image of the given size from r and checks its header and
// superblock. r must stay readable until the Image is no longer used.
func New(r io.ReaderAt, size int64) (*Image, error) {
	if size < blockSize {
		return nil, corrupt("image is %d bytes, smaller than one 4096-byte block", size)
	}
	img := &Image{src: newSource(r, size), shared: map[uint32]rawXattr{}}
	b, err := img.src.read(0, metaStart)
	if err != nil {
		return nil, err
	}
	if m := le.Uint32(b[0:]); m != cfsMagic {
		return nil, corrupt("bad composefs magic %#08x (want %#08x): not a composefs image", m, cfsMagic)
	}
	if v := le.Uint32(b[4:]); v != cfsVersion {
		return nil, corrupt("unsupported composefs header version %d (want %d)", v, cfsVersion)
	}
	img.flags = le.Uint32(b[8:])
	if img.flags&^cfsFlagHasACL != 0 {
		return nil, corrupt("unknown composefs header flags %#x", img.flags)
	}
	img.version = le.Uint32(b[12:])
	if img.version > maxFormatVersion {
		return nil, corrupt("composefs format version %d is newer than this reader supports (%d)", img.version, maxFormatVersion)
	}
	sb := decodeSuperBlock(b[superOffset:])
	img.sb = sb
	switch {
	case sb.magic != erofsMagic:
		return nil, corrupt("bad EROFS superblock magic %#08x (want %#08x)", sb.magic, erofsMagic)
	case sb.blkszbits != blockBits:
		return nil, corrupt("EROFS block size 2^%d, composefs images use 4096", sb.blkszbits)
	case sb.featureIncompat&^incompatChunked != 0:
		return nil, corrupt("EROFS incompatible features %#x are not used by composefs (compression, devices, long xattr prefixes?)", sb.featureIncompat)
	case sb.featureCompat&compatSBChecksum != 0:
		return nil, corrupt("EROFS superblock checksum feature is not used by composefs")
	case sb.extslots != 0 || sb.extraDevices != 0 || sb.xattrPrefixCount != 0 || sb.packedNid != 0:
		return nil, corrupt("EROFS superblock uses extensions composefs does not (extslots, devices, xattr prefixes, packed inode)")
	case sb.buildTimeNsec >= 1e9:
		return nil, corrupt("superblock build time nanoseconds %d out of range", sb.buildTimeNsec)
	case sb.blocks == 0:
		return nil, corrupt("superblock says the image has 0 blocks")
	}
	img.size = int64(sb.blocks) * blockSize
	if img.size > size {
		return nil, corrupt("image is truncated: superblock says %d bytes (%d blocks), file has %d", img.size, sb.blocks, size)
	}
	img.src.size = img.size
	if int64(sb.metaBlkaddr) >= int64(sb.blocks) || int64(sb.xattrBlkaddr) >= int64(sb.blocks) {
		return nil, corrupt("metadata block %d or xattr block %d beyond the image's %d blocks", sb.metaBlkaddr, sb.xattrBlkaddr, sb.blocks)
	}
	img.xattrStart = int64(sb.xattrBlkaddr) * blockSize
	img.filter = sb.featureCompat&compatXattrFilter != 0 && sb.xattrFilterReserved == 0
	return img, nil
}

// Close closes the file opened by Open; for images made with New it does
// nothing.
func (img *Image) Close() error {
	if img.closer == nil {
		return nil
	}
	err := img.closer.Close()
	img.closer = nil
	return err
}

// FormatVersion returns the composefs format version the image was written
// as (0 or 1; version 1 marks directories holding whiteouts as overlay
// "xwhiteouts" directories).
func (img *Image) FormatVersion() uint32 { return img.version }

// HasACL reports whether the header says the image holds POSIX ACLs (then it
// must be mounted with ACL support).
func (img *Image) HasACL() bool { return img.flags&cfsFlagHasACL != 0 }

// source reads the image through a small block cache: inodes are visited in
// directory order, which jumps around, but neighbouring inodes share blocks.
type source struct {
	r     io.ReaderAt
	size  int64
	cache map[int64][]byte
}

const cacheBlocks = 256 // 1 MiB

func newSource(r io.ReaderAt, size int64) source {
	return source{r: r, size: size, cache: make(map[int64][]byte, cacheBlocks)}
}

func (s *source) block(n int64) ([]byte, error) {
	if b, ok := s.cache[n]; ok {
		return b, nil
	}
	var b []byte
	if len(s.cache) >= cacheBlocks {
		for k, v := range s.cache { // evict an arbitrary block, reuse its buffer
			delete(s.cache, k)
			b = v
			break
		}
	} else {
		b = make([]byte, blockSize)
	}
	off := n * blockSize
	want := int64(blockSize)
	if off+want > s.size {
		want = s.size - off
	}
	if got, err := s.r.ReadAt(b[:want], off); int64(got) < want {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, corrupt("image is truncated at offset %d", off+int64(got))
		}
		return nil, fmt.Errorf("read composefs image at offset %d: %w", off, err)
	}
	clear(b[want:])
	s.cache[n] = b
	return b, nil
}

// read returns a copy of n bytes at off, or an error if they are not all
// inside the image. Callers bound n by format limits.
func (s *source) read(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off > s.size || int64(n) > s.size-off {
		return nil, corrupt("%d bytes at offset %d are outside the %d-byte image", n, off, s.size)
	}
	out := make([]byte, n)
	for done := 0; done < n; {
		pos := off + int64(done)
		b, err := s.block(pos / blockSize)
		if err != nil {
			return nil, err
		}
		done += copy(out[done:], b[pos%blockSize:])
	}
	return out, nil
}
