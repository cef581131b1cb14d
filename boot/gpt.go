package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// GPT limits. A GPT header is 92 bytes in a sector of 512 or 4096 bytes;
// the entry array is usually 128 entries of 128 bytes. Anything outside
// these bounds is refused before it is read, so a hostile disk (every
// attached disk is the attacker's) costs at most maxGPTEntries bytes.
const (
	gptHeaderMin     = 92
	maxGPTEntries    = 1 << 20 // bytes of partition entries read
	maxGPTEntrySize  = 4096
	gptEntryGUIDSize = 16
)

// errNoGPT says a disk has no (valid) GPT.
var errNoGPT = errors.New("no GPT")

// readGPTPartUUIDs reads the partition UUIDs of the primary GPT of a disk
// whose logical sectors are sectorSize bytes: index i holds partition
// i+1's UUID (lower case), or "" for an unused entry. Every field is
// checked before it is used (header size, its CRC32, the entry size and
// count, the entries' CRC32), so no header can make it read out of bounds
// or allocate more than maxGPTEntries bytes. u-root's block package (via
// rekby/gpt) panicked on a header size of 0xFFFF (issue 12, finding 5).
func readGPTPartUUIDs(r io.ReaderAt, sectorSize int) ([]string, error) {
	if sectorSize != 512 && sectorSize != 4096 {
		return nil, fmt.Errorf("gpt: sector size %d: want 512 or 4096", sectorSize)
	}
	hdr := make([]byte, sectorSize)
	if _, err := r.ReadAt(hdr, int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("gpt: read header: %w", err)
	}
	if !bytes.Equal(hdr[:8], []byte("EFI PART")) {
		return nil, errNoGPT
	}
	le := binary.LittleEndian
	size := le.Uint32(hdr[12:])
	if size < gptHeaderMin || size > uint32(sectorSize) {
		return nil, fmt.Errorf("gpt: header size %d: want %d to %d", size, gptHeaderMin, sectorSize)
	}
	h := bytes.Clone(hdr[:size])
	want := le.Uint32(h[16:])
	clear(h[16:20])
	if got := crc32.ChecksumIEEE(h); got != want {
		return nil, fmt.Errorf("gpt: header CRC32 %08x, header says %08x", got, want)
	}
	if my := le.Uint64(h[24:]); my != 1 {
		return nil, fmt.Errorf("gpt: primary header says it is at LBA %d, not 1", my)
	}
	entryLBA := le.Uint64(h[72:])
	count := le.Uint32(h[80:])
	entrySize := le.Uint32(h[84:])
	if entrySize < 128 || entrySize > maxGPTEntrySize || entrySize%8 != 0 {
		return nil, fmt.Errorf("gpt: entry size %d: want a multiple of 8 from 128 to %d", entrySize, maxGPTEntrySize)
	}
	if uint64(count)*uint64(entrySize) > maxGPTEntries {
		return nil, fmt.Errorf("gpt: %d entries of %d bytes: more than %d bytes", count, entrySize, maxGPTEntries)
	}
	if entryLBA < 2 || entryLBA > 1<<40 {
		return nil, fmt.Errorf("gpt: entries at LBA %d", entryLBA)
	}
	entries := make([]byte, int(count)*int(entrySize))
	if _, err := r.ReadAt(entries, int64(entryLBA)*int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("gpt: read entries: %w", err)
	}
	if got, want := crc32.ChecksumIEEE(entries), le.Uint32(h[88:]); got != want {
		return nil, fmt.Errorf("gpt: entries CRC32 %08x, header says %08x", got, want)
	}
	ids := make([]string, count)
	zero := make([]byte, gptEntryGUIDSize)
	for i := range ids {
		e := entries[i*int(entrySize):]
		if bytes.Equal(e[:16], zero) { // type GUID zero: unused entry
			continue
		}
		ids[i] = guidString(e[16:32])
	}
	return ids, nil
}

// guidString formats a GPT GUID (first three fields little-endian) as
// lower-case 8-4-4-4-12 text.
func guidString(g []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(g[0:]), le.Uint16(g[4:]), le.Uint16(g[6:]), g[8:10], g[10:16])
}

// partUUIDs maps the partition device paths under devDir to their GPT
// partition UUIDs. Partitions and their disks are found in sysDir
// (/sys/class/block: NAME/partition holds the number, the symlink's
// parent directory is the disk); each disk's table is read with
// readGPTPartUUIDs. Disks whose table is unreadable are skipped: their
// partitions then match no PARTUUID= selector.
func partUUIDs(sysDir, devDir string) map[string]string {
	entries, err := os.ReadDir(sysDir)
	if err != nil {
		return nil
	}
	tables := map[string][]string{}
	m := map[string]string{}
	for _, e := range entries {
		name := e.Name()
		numText, err := os.ReadFile(filepath.Join(sysDir, name, "partition"))
		if err != nil {
			continue // a whole disk, or not a partition
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(numText)))
		if err != nil || n < 1 {
			continue
		}
		real, err := filepath.EvalSymlinks(filepath.Join(sysDir, name))
		if err != nil {
			continue
		}
		disk := filepath.Base(filepath.Dir(real))
		ids, ok := tables[disk]
		if !ok {
			ids = diskPartUUIDs(sysDir, devDir, disk)
			tables[disk] = ids
		}
		if n <= len(ids) && ids[n-1] != "" {
			m[filepath.Join(devDir, name)] = ids[n-1]
		}
	}
	return m
}

func diskPartUUIDs(sysDir, devDir, disk string) []string {
	sector := 512
	if b, err := os.ReadFile(filepath.Join(sysDir, disk, "queue", "logical_block_size")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			sector = n
		}
	}
	f, err := os.OpenFile(filepath.Join(devDir, disk), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	ids, err := readGPTPartUUIDs(f, sector)
	if err != nil {
		return nil
	}
	return ids
}
