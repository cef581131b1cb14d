package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// gptDisk writes a disk image of 1 MiB with a primary GPT whose entries
// have the given unique GUIDs (nil: unused entry), for the parser to read
// and partx (util-linux) to check it against.
func gptDisk(t *testing.T, sector int, guids [][16]byte, edit func(hdr []byte)) []byte {
	t.Helper()
	le := binary.LittleEndian
	disk := make([]byte, 1<<20)
	const count, esize = 128, 128
	entries := disk[2*sector : 2*sector+count*esize]
	for i, g := range guids {
		if g == ([16]byte{}) {
			continue
		}
		e := entries[i*esize:]
		copy(e, []byte("\xaf\x3d\xc6\x0f\x83\x84\x72\x47\x8e\x79\x3d\x69\xd8\x47\x7d\xe4")) // Linux filesystem
		copy(e[16:], g[:])
		first := uint64(64 + i*8)
		le.PutUint64(e[32:], first)
		le.PutUint64(e[40:], first+7)
	}
	lastLBA := uint64(len(disk)/sector - 1)
	hdr := disk[sector : sector+92]
	copy(hdr, "EFI PART")
	le.PutUint32(hdr[8:], 0x00010000)
	le.PutUint32(hdr[12:], 92)
	le.PutUint64(hdr[24:], 1)
	le.PutUint64(hdr[32:], lastLBA)
	le.PutUint64(hdr[40:], 34)
	le.PutUint64(hdr[48:], lastLBA-33)
	copy(hdr[56:], []byte("0123456789abcdef"))
	le.PutUint64(hdr[72:], 2)
	le.PutUint32(hdr[80:], count)
	le.PutUint32(hdr[84:], esize)
	le.PutUint32(hdr[88:], crc32.ChecksumIEEE(entries))
	if edit != nil {
		edit(disk[sector : 2*sector])
	}
	if le.Uint32(hdr[16:]) == 0 {
		size := min(int(le.Uint32(hdr[12:])), sector)
		le.PutUint32(hdr[16:], crc32.ChecksumIEEE(disk[sector:sector+size]))
	}
	// A protective MBR, so partx reads it as GPT.
	disk[446+4] = 0xEE
	le.PutUint32(disk[446+8:], 1)
	le.PutUint32(disk[446+12:], uint32(lastLBA))
	disk[510], disk[511] = 0x55, 0xAA
	return disk
}

var testGUIDs = [][16]byte{
	{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10},
	{},
	{0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe, 0xba, 0xbe, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77},
}

// TestReadGPTMatchesPartx: the partition UUIDs read by readGPTPartUUIDs are
// those partx (libblkid) reads from the same image.
func TestReadGPTMatchesPartx(t *testing.T) {
	testutil.RequireTool(t, "partx")
	disk := gptDisk(t, 512, testGUIDs, nil)
	p := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(p, disk, 0o644)
	ids, err := readGPTPartUUIDs(bytes.NewReader(disk), 512)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, id := range ids {
		if id != "" {
			got = append(got, fmt.Sprintf("%d %s", i+1, id))
		}
	}
	out := testutil.Run(t, "partx", "--show", "-g", "-o", "NR,UUID", p)
	var want []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		want = append(want, strings.Join(strings.Fields(l), " "))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("readGPTPartUUIDs:\n%s\npartx:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestReadGPTHostile: headers that made the GPT library panic PID 1 (a
// header size of 0xFFFF in a 512-byte sector, issue 12 finding 5), or that
// would make a parser read or allocate without bound, are refused with an
// error.
func TestReadGPTHostile(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		name string
		edit func(h []byte)
		want string
	}{
		{"header size 0xFFFF", func(h []byte) { le.PutUint32(h[12:], 0xFFFF) }, "header size 65535"},
		{"header size 0", func(h []byte) { le.PutUint32(h[12:], 0) }, "header size 0"},
		{"bad header CRC", func(h []byte) { le.PutUint32(h[16:], 1) }, "header CRC32"},
		{"entry size 0", func(h []byte) { le.PutUint32(h[84:], 0) }, "entry size 0"},
		{"entry size huge", func(h []byte) { le.PutUint32(h[84:], 0xFFFFFFF8) }, "entry size"},
		{"4 G entries", func(h []byte) { le.PutUint32(h[80:], 0xFFFFFFFF) }, "more than 1048576 bytes"},
		{"entries far away", func(h []byte) { le.PutUint64(h[72:], 1<<62) }, "entries at LBA"},
		{"entries past the end", func(h []byte) { le.PutUint64(h[72:], 1<<30) }, "read entries"},
		{"bad entries CRC", func(h []byte) { le.PutUint32(h[88:], 1) }, "entries CRC32"},
		{"not at LBA 1", func(h []byte) { le.PutUint64(h[24:], 5) }, "not 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := gptDisk(t, 512, testGUIDs, tc.edit)
			ids, err := readGPTPartUUIDs(bytes.NewReader(disk), 512)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ids %v, err %v; want an error saying %q", ids, err, tc.want)
			}
		})
	}
	if _, err := readGPTPartUUIDs(bytes.NewReader(make([]byte, 4096)), 512); err != errNoGPT {
		t.Errorf("zeros: %v", err)
	}
	if _, err := readGPTPartUUIDs(bytes.NewReader(make([]byte, 100)), 512); err == nil {
		t.Error("short disk: no error")
	}
}

// TestPartUUIDsSysfs finds partitions through a fake /sys/class/block
// (NAME/partition, symlinks into the disk's directory, as the kernel lays
// it out) and a hostile second disk, which is skipped, not a panic.
func TestPartUUIDsSysfs(t *testing.T) {
	dir := t.TempDir()
	sys, dev, devices := filepath.Join(dir, "sys"), filepath.Join(dir, "dev"), filepath.Join(dir, "devices")
	os.MkdirAll(sys, 0o755)
	os.MkdirAll(dev, 0o755)
	le := binary.LittleEndian
	for disk, img := range map[string][]byte{
		"vda": gptDisk(t, 512, testGUIDs, nil),
		"vdb": gptDisk(t, 512, testGUIDs, func(h []byte) { le.PutUint32(h[12:], 0xFFFF) }),
	} {
		os.WriteFile(filepath.Join(dev, disk), img, 0o644)
		os.MkdirAll(filepath.Join(devices, disk), 0o755)
		os.Symlink(filepath.Join(devices, disk), filepath.Join(sys, disk))
		for _, n := range []string{"1", "3"} {
			pd := filepath.Join(devices, disk, disk+n)
			os.MkdirAll(pd, 0o755)
			os.WriteFile(filepath.Join(pd, "partition"), []byte(n+"\n"), 0o644)
			os.Symlink(pd, filepath.Join(sys, disk+n))
		}
	}
	got := partUUIDs(sys, dev)
	want := map[string]string{
		filepath.Join(dev, "vda1"): "04030201-0605-0807-090a-0b0c0d0e0f10",
		filepath.Join(dev, "vda3"): "efbeadde-feca-beba-0011-223344556677",
	}
	if len(got) != len(want) {
		t.Errorf("partUUIDs = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
}
