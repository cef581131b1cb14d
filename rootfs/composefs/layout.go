package composefs

// Where everything goes: inode sizes, compact or extended inodes, padding
// so that inline tails stay within a block, data blocks
// (lcfs-writer-erofs.c: compute_erofs_inodes and its helpers).

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"
)

// xattrPrefix returns the EROFS name index of key and the name suffix
// stored (xattr_erofs_entry_index).
func xattrPrefix(key string) (uint8, string) {
	for _, p := range [...]struct {
		prefix string
		index  uint8
	}{
		{"user.", 1},
		{xattrACLAccess, 2},
		{xattrACLDefault, 3},
		{"trusted.", 4},
		{"security.", 6},
	} {
		if strings.HasPrefix(key, p.prefix) {
			return p.index, key[len(p.prefix):]
		}
	}
	return 0, key
}

func xattrEntryLen(x Xattr) uint64 {
	_, suffix := xattrPrefix(x.Key)
	return roundUp(uint64(xattrEntrySize+len(suffix)+len(x.Value)), 4)
}

func roundUp(x, align uint64) uint64 { return (x + align - 1) / align * align }

// chunking returns the chunk size bits and chunk count of an external file
// (erofs_compute_chunking): one chunk covering the file where possible.
func chunking(size uint64) (chunkBits uint32, count uint64) {
	chunkBits = uint32(bits.Len64(size - 1)) // ilog2(size-1)+1; small sizes end up at 12
	if size == 0 || chunkBits < blockBits {
		chunkBits = blockBits
	}
	if chunkBits-blockBits > chunkBitsMask {
		chunkBits = chunkBitsMask + blockBits
	}
	chunk := uint64(1) << chunkBits
	count = size/chunk + min(size%chunk, 1)
	return chunkBits, count
}

// dirChunks splits a directory's entries into blocks as EROFS readers
// expect: a new block starts when an entry's dirent and name would not fit.
// It returns the start index of each block.
func dirChunks(ents []went) (starts []int, lastSize uint64) {
	starts = []int{0}
	size := uint64(0)
	for i, e := range ents {
		l := uint64(direntSize + len(e.name))
		if size+l > blockSize {
			starts = append(starts, i)
			size = 0
		}
		size += l
	}
	return starts, size
}

func (b *builder) fitsCompact(w *winode) bool {
	if w.mtime != b.minMtime {
		return false
	}
	if w.nlink > 0xFFFF || w.uid > 0xFFFF || w.gid > 0xFFFF {
		return false
	}
	size := w.size
	if w.typ() == ModeDir {
		size = w.nblocks*blockSize + w.tail
	}
	return size <= 0xFFFFFFFF
}

// layout computes every inode's size, place and padding
// (compute_erofs_inodes).
func (b *builder) layout() error {
	pos := uint64(superOffset + superSize)
	metaStart := uint64(0) // round_down(pos, 4096)
	for _, w := range b.inodes {
		// compute_erofs_inode_size
		switch w.typ() {
		case ModeDir:
			starts, last := dirChunks(w.ents)
			w.nblocks = uint64(len(starts) - 1)
			w.tail = last
			if w.tail > blockSize/2 {
				w.nblocks++
				w.tail = 0
			}
		case ModeSymlink:
			w.nblocks, w.tail = 0, uint64(len(w.node.Payload))
		case ModeRegular:
			switch {
			case w.size == 0:
				w.nblocks, w.tail = 0, 0
			case w.inline:
				w.nblocks, w.tail = w.size/blockSize, w.size%blockSize
				if w.tail > blockSize/2 {
					w.nblocks++
					w.tail = 0
				}
			default:
				_, count := chunking(w.size)
				w.nblocks, w.tail = 0, count*4
			}
		default:
			w.nblocks, w.tail = 0, 0
		}
		w.compact = b.fitsCompact(w)
		isize := uint64(extendedSize)
		if w.compact {
			isize = compactSize
		}
		nShared, unshared := 0, uint64(0)
		for i, x := range w.xattrs {
			if w.shared[i] >= 0 {
				nShared++
			} else {
				unshared += xattrEntryLen(x)
			}
		}
		if nShared > 0 || unshared > 0 {
			w.xsize = roundUp(xattrHeaderSize+uint64(nShared)*xattrEntrySize+unshared, 4)
		}
		if (w.xsize-xattrHeaderSize)/4+1 > 0xFFFF && w.xsize > 0 {
			return fmt.Errorf("%s: too many xattrs for one inode", w.path())
		}
		ppos := pos
		pos = roundUp(pos, slotSize)
		w.ipad = pos - ppos
		extra := b.tailPadding(w, pos, isize)
		w.ipad += extra
		pos += extra
		w.isize = isize + w.xsize + w.tail
		b.dataBlocks += w.nblocks
		w.nid = (pos - metaStart) / slotSize
		pos += w.isize
	}
	b.inodesEnd = roundUp(pos, slotSize)
	b.dataBlockStart = roundUp(b.inodesEnd+b.sharedSize, blockSize)
	b.totalSize = b.dataBlockStart + b.dataBlocks*blockSize
	if b.inodes[0].nid >= 0xFFFF {
		return errors.New("internal error: root nid does not fit 16 bits")
	}
	if b.totalSize/blockSize > 0xFFFFFFFF {
		return fmt.Errorf("image would be %d bytes, too big for EROFS", b.totalSize)
	}
	return nil
}

// tailPadding returns the padding to put before an inode at pos so that its
// inline tail does not cross a block boundary, and moves the tail to a data
// block when it cannot fit (compute_erofs_inode_padding_for_tail).
func (b *builder) tailPadding(w *winode, pos, isize uint64) uint64 {
	nonTail := isize + w.xsize
	total := nonTail + w.tail
	if w.typ() == ModeSymlink {
		// The inode and its target stay in one block; a record bigger
		// than a block moves the target to a data block.
		if total/blockSize > 0 {
			w.nblocks++
			w.tail = 0
		}
		if pos/blockSize != (pos+total-1)/blockSize {
			return roundUp(pos, blockSize) - pos
		}
		return 0
	}
	rem := blockSize - (pos+nonTail)%blockSize
	if rem < w.tail {
		pad := roundUp(rem, slotSize)
		rem = blockSize - (pos+nonTail+pad)%blockSize
		if w.tail <= rem {
			return pad
		}
		w.nblocks++
		w.tail = 0
		return roundUp(pos, blockSize) - pos
	}
	return 0
}
