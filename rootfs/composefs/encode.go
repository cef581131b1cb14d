package composefs

// The image bytes: header, superblock, inodes with their xattrs and inline
// tails, the shared xattr table and the data blocks
// (lcfs-writer-erofs.c: lcfs_write_erofs_to and the write_erofs_* helpers).

import (
	"bufio"
	"encoding/binary"
	"fmt"

	"github.com/cfsroot/cfsroot/rootfs/composefs/internal/xxhash"
)

// ewriter writes little-endian fields and tracks the offset.
type ewriter struct {
	w   *bufio.Writer
	off uint64
	buf [64]byte
	err error
}

func (e *ewriter) bytes(p []byte) {
	if e.err != nil {
		return
	}
	_, e.err = e.w.Write(p)
	e.off += uint64(len(p))
}

func (e *ewriter) str(s string) {
	if e.err != nil {
		return
	}
	_, e.err = e.w.WriteString(s)
	e.off += uint64(len(s))
}

var zeros [blockSize]byte

func (e *ewriter) pad(n uint64) {
	for n > 0 {
		k := min(n, uint64(len(zeros)))
		e.bytes(zeros[:k])
		n -= k
	}
}

func (e *ewriter) align(a uint64) { e.pad(roundUp(e.off, a) - e.off) }

func (e *ewriter) u32(v uint32) {
	binary.LittleEndian.PutUint32(e.buf[:4], v)
	e.bytes(e.buf[:4])
}

func (b *builder) write(bw *bufio.Writer) error {
	e := &ewriter{w: bw}
	// composefs header
	var h [32]byte
	binary.LittleEndian.PutUint32(h[0:], headerMagic)
	binary.LittleEndian.PutUint32(h[4:], headerVersion)
	if b.hasACL {
		binary.LittleEndian.PutUint32(h[8:], headerFlagACL)
	}
	binary.LittleEndian.PutUint32(h[12:], uint32(b.version))
	e.bytes(h[:])
	e.pad(superOffset - 32)

	// superblock
	var sb [superSize]byte
	le := binary.LittleEndian
	le.PutUint32(sb[0:], erofsMagic)
	le.PutUint32(sb[8:], featureCompatMtime|featureCompatXattrFilter)
	sb[12] = blockBits
	le.PutUint16(sb[14:], uint16(b.inodes[0].nid))
	le.PutUint64(sb[16:], uint64(len(b.inodes)))
	le.PutUint64(sb[24:], uint64(b.minMtime.Sec))
	le.PutUint32(sb[32:], b.minMtime.Nsec)
	le.PutUint32(sb[36:], uint32(b.dataBlockStart/blockSize+b.dataBlocks))
	le.PutUint32(sb[40:], 0) // meta_blkaddr
	le.PutUint32(sb[44:], uint32(b.inodesEnd/blockSize))
	e.bytes(sb[:])

	currentEnd := b.dataBlockStart
	for _, w := range b.inodes {
		b.writeInode(e, w, &currentEnd)
	}
	e.align(slotSize)
	if e.err == nil && e.off != b.inodesEnd {
		return fmt.Errorf("internal error: inodes end at %d, laid out %d", e.off, b.inodesEnd)
	}
	for _, x := range b.sharedTable {
		writeXattr(e, x)
	}
	e.align(blockSize)
	if e.err == nil && e.off != b.dataBlockStart {
		return fmt.Errorf("internal error: data starts at %d, laid out %d", e.off, b.dataBlockStart)
	}
	for _, w := range b.inodes {
		b.writeData(e, w)
	}
	if e.err == nil && e.off != currentEnd {
		return fmt.Errorf("internal error: data ends at %d, blocks assigned up to %d", e.off, currentEnd)
	}
	return e.err
}

func writeXattr(e *ewriter, x Xattr) {
	idx, suffix := xattrPrefix(x.Key)
	var h [4]byte
	h[0] = uint8(len(suffix))
	h[1] = idx
	binary.LittleEndian.PutUint16(h[2:], uint16(len(x.Value)))
	e.bytes(h[:])
	e.str(suffix)
	e.bytes(x.Value)
	e.align(4)
}

func (b *builder) writeInode(e *ewriter, w *winode, currentEnd *uint64) {
	e.pad(w.ipad)
	typ := w.typ()
	icount := uint64(0)
	if w.xsize > 0 {
		icount = (w.xsize-xattrHeaderSize)/4 + 1
	}
	version := uint16(1)
	if w.compact {
		version = 0
	}
	layout := uint16(layoutFlatPlain)
	if w.tail > 0 {
		layout = layoutFlatInline
	}
	var size uint64
	var iu uint32
	chunkFormat := uint32(0)
	switch typ {
	case ModeDir:
		size = w.nblocks*blockSize + w.tail
	case ModeRegular:
		size = w.size
		if w.chunked {
			bits, _ := chunking(w.size)
			layout = layoutChunkBased
			chunkFormat = bits - blockBits
		}
	case ModeSymlink:
		if w.nblocks == 0 {
			size = w.tail
		} else {
			size = w.size
		}
	}
	switch typ {
	case ModeDir, ModeRegular, ModeSymlink:
		if w.nblocks > 0 {
			iu = uint32(*currentEnd / blockSize)
			*currentEnd += blockSize * w.nblocks
		}
		if layout == layoutChunkBased {
			// i_u.c.format overlays the low half of raw_blkaddr.
			iu = iu&0xFFFF0000 | chunkFormat&0xFFFF
		}
	case ModeCharDev, ModeBlockDev:
		iu = w.rdev
	}
	format := layout<<1 | version
	le := binary.LittleEndian
	if w.compact {
		var in [compactSize]byte
		le.PutUint16(in[0:], format)
		le.PutUint16(in[2:], uint16(icount))
		le.PutUint16(in[4:], uint16(w.mode))
		le.PutUint16(in[6:], uint16(w.nlink))
		le.PutUint32(in[8:], uint32(size))
		le.PutUint32(in[16:], iu)
		le.PutUint32(in[20:], w.ino)
		le.PutUint16(in[24:], uint16(w.uid))
		le.PutUint16(in[26:], uint16(w.gid))
		e.bytes(in[:])
	} else {
		var in [extendedSize]byte
		le.PutUint16(in[0:], format)
		le.PutUint16(in[2:], uint16(icount))
		le.PutUint16(in[4:], uint16(w.mode))
		le.PutUint64(in[8:], size)
		le.PutUint32(in[16:], iu)
		le.PutUint32(in[20:], w.ino)
		le.PutUint32(in[24:], w.uid)
		le.PutUint32(in[28:], w.gid)
		le.PutUint64(in[32:], uint64(w.mtime.Sec))
		le.PutUint32(in[40:], w.mtime.Nsec)
		le.PutUint32(in[44:], w.nlink)
		e.bytes(in[:])
	}

	if w.xsize > 0 {
		filter := uint32(0)
		nShared := 0
		for i, x := range w.xattrs {
			idx, suffix := xattrPrefix(x.Key)
			filter |= 1 << (xxhash.Sum32([]byte(suffix), xattrFilterSeed+uint32(idx)) & 31)
			if w.shared[i] >= 0 {
				nShared++
			}
		}
		var hdr [xattrHeaderSize]byte
		le.PutUint32(hdr[0:], ^filter)
		hdr[4] = uint8(nShared)
		e.bytes(hdr[:])
		for i := range w.xattrs {
			if w.shared[i] >= 0 {
				e.u32(uint32((b.inodesEnd%blockSize + uint64(w.shared[i])) / 4))
			}
		}
		for i, x := range w.xattrs {
			if w.shared[i] < 0 {
				writeXattr(e, x)
			}
		}
	}

	switch typ {
	case ModeDir:
		if w.tail > 0 {
			starts, _ := dirChunks(w.ents)
			writeDirents(e, w.ents[starts[len(starts)-1]:], 1)
		}
	case ModeSymlink:
		if w.nblocks == 0 {
			e.str(w.node.Payload)
		}
	case ModeRegular:
		if w.tail > 0 {
			if w.inline {
				e.bytes(w.node.Content[w.size-w.tail:])
			} else {
				for i := uint64(0); i < w.tail/4; i++ {
					e.u32(0xFFFFFFFF)
				}
			}
		}
	}
}

func writeDirents(e *ewriter, ents []went, align uint64) {
	nameoff := uint64(len(ents) * direntSize)
	var d [direntSize]byte
	for _, ent := range ents {
		binary.LittleEndian.PutUint64(d[0:], ent.w.nid)
		binary.LittleEndian.PutUint16(d[8:], uint16(nameoff))
		d[10] = fileType(ent.w.mode)
		d[11] = 0
		e.bytes(d[:])
		nameoff += uint64(len(ent.name))
	}
	for _, ent := range ents {
		e.str(ent.name)
	}
	e.align(align)
}

// fileType is the EROFS dirent file type (EROFS_FT_*).
func fileType(mode uint32) uint8 {
	switch mode & ModeTypeMask {
	case ModeRegular:
		return 1
	case ModeDir:
		return 2
	case ModeCharDev:
		return 3
	case ModeBlockDev:
		return 4
	case ModeFIFO:
		return 5
	case ModeSocket:
		return 6
	case ModeSymlink:
		return 7
	}
	return 0
}

// writeData writes an inode's data blocks (write_erofs_dentries and
// write_erofs_file_content).
func (b *builder) writeData(e *ewriter, w *winode) {
	if w.nblocks == 0 {
		return
	}
	switch w.typ() {
	case ModeDir:
		starts, _ := dirChunks(w.ents)
		written := uint64(0)
		for i := 0; i+1 < len(starts); i++ {
			writeDirents(e, w.ents[starts[i]:starts[i+1]], blockSize)
			written++
		}
		if written < w.nblocks {
			writeDirents(e, w.ents[starts[len(starts)-1]:], blockSize)
		}
	case ModeRegular:
		if !w.inline {
			for i := 0; i < blockSize/4; i++ {
				e.u32(0xFFFFFFFF)
			}
			return
		}
		for i := uint64(0); i < w.nblocks; i++ {
			end := min((i+1)*blockSize, w.size)
			e.bytes(w.node.Content[i*blockSize : end])
			e.align(blockSize)
		}
	case ModeSymlink:
		e.str(w.node.Payload)
		e.align(blockSize)
	}
}
