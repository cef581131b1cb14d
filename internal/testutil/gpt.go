package testutil

import (
	"encoding/binary"
	"hash/crc32"
)

// GPTPartition is one partition for GPTDisk: its unique GUID as stored on
// disk (the first three fields little-endian) and its extent in sectors.
// A zero GUID leaves the entry unused.
type GPTPartition struct {
	GUID        [16]byte
	First, Last uint64
}

// GPTDisk writes a protective MBR and a primary GPT (128 entries of 128
// bytes at LBA 2) into head, the first bytes (at least 34 sectors) of a
// disk of size bytes whose logical sectors are sector bytes, with parts in entries 1, 2, ... (Linux filesystem type). edit, if
// not nil, may change the header sector before its CRC is computed; a CRC
// it sets itself (non-zero) is kept. Tests check the result against partx
// (boot's TestReadGPTMatchesPartx) and the kernel (vmtests).
func GPTDisk(head []byte, size int64, sector int, parts []GPTPartition, edit func(hdr []byte)) {
	le := binary.LittleEndian
	const count, esize = 128, 128
	entries := head[2*sector : 2*sector+count*esize]
	clear(entries)
	linuxFS := []byte("\xaf\x3d\xc6\x0f\x83\x84\x72\x47\x8e\x79\x3d\x69\xd8\x47\x7d\xe4")
	for i, p := range parts {
		if p.GUID == ([16]byte{}) {
			continue
		}
		e := entries[i*esize:]
		copy(e, linuxFS)
		copy(e[16:], p.GUID[:])
		le.PutUint64(e[32:], p.First)
		le.PutUint64(e[40:], p.Last)
	}
	lastLBA := uint64(size/int64(sector) - 1)
	hdr := head[sector : 2*sector]
	clear(hdr)
	copy(hdr, "EFI PART")
	le.PutUint32(hdr[8:], 0x00010000)
	le.PutUint32(hdr[12:], 92)
	le.PutUint64(hdr[24:], 1)
	le.PutUint64(hdr[32:], lastLBA)
	le.PutUint64(hdr[40:], 34)
	le.PutUint64(hdr[48:], lastLBA-33)
	copy(hdr[56:], "0123456789abcdef")
	le.PutUint64(hdr[72:], 2)
	le.PutUint32(hdr[80:], count)
	le.PutUint32(hdr[84:], esize)
	le.PutUint32(hdr[88:], crc32.ChecksumIEEE(entries))
	if edit != nil {
		edit(hdr)
	}
	if le.Uint32(hdr[16:]) == 0 {
		size := min(int(le.Uint32(hdr[12:])), sector)
		le.PutUint32(hdr[16:], crc32.ChecksumIEEE(hdr[:size]))
	}
	mbr := head[:512]
	clear(mbr[446:])
	mbr[446+4] = 0xEE
	le.PutUint32(mbr[446+8:], 1)
	le.PutUint32(mbr[446+12:], uint32(min(lastLBA, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA
}
