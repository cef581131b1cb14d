package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// gptDisk is a 1 MiB disk image with a primary GPT whose entries have the
// given unique GUIDs (zero: unused entry).
func gptDisk(t *testing.T, sector int, guids [][16]byte, edit func(hdr []byte)) []byte {
	t.Helper()
	disk := make([]byte, 1<<20)
	var parts []testutil.GPTPartition
	for i, g := range guids {
		first := uint64(64 + i*8)
		parts = append(parts, testutil.GPTPartition{GUID: g, First: first, Last: first + 7})
	}
	testutil.GPTDisk(disk, int64(len(disk)), sector, parts, edit)
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
