package vmtests

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/internal/diskfile"
	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// hostileDisk copies the provisioned disk and plants, with debugfs (no
// kernel needed), files an attacker with offline access can leave in
// composefs/images. Slots zero, fifosig and sparse are hard links of the
// good image (fs-verity on, so the init gets as far as their .sig).
func hostileDisk(t *testing.T, f *fixture) string {
	t.Helper()
	vm.RequireTools(t, "debugfs")
	disk := filepath.Join(t.TempDir(), "hostile.img")
	if out, err := exec.Command("cp", "--sparse=always", f.disk, disk).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v\n%s", err, out)
	}
	cmds := strings.Join([]string{
		"cd /composefs/images",
		"ln default.cfs zero.cfs",
		"ln default.cfs fifosig.cfs",
		"ln default.cfs sparse.cfs",
		"sif default.cfs links_count 4",
		"symlink zero.cfs.sig /dev/zero",
		"mknod fifosig.cfs.sig p",
		"mknod fifoimg.cfs p",
		"write /dev/null sparse.cfs.sig",
		"sif sparse.cfs.sig size 0x200000000", // 8 GiB, no blocks
	}, "\n") + "\n"
	script := filepath.Join(t.TempDir(), "debugfs.cmds")
	os.WriteFile(script, []byte(cmds), 0o644)
	out, err := exec.Command("debugfs", "-w", "-f", script, disk).CombinedOutput()
	if err != nil || strings.Contains(string(out), "debugfs: ") && strings.Contains(strings.ToLower(string(out)), "error") {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	ls, _ := exec.Command("debugfs", "-R", "ls -l /composefs/images", disk).CombinedOutput()
	for _, want := range []string{"zero.cfs.sig", "fifosig.cfs.sig", "fifoimg.cfs", "8589934592 "} {
		if !strings.Contains(string(ls), want) {
			t.Fatalf("debugfs did not plant %s:\n%s", want, ls)
		}
	}
	return disk
}

// TestBootHostileFiles: a .sig symlinked to /dev/zero (PID 1 ran out of
// memory), a FIFO .sig and a FIFO NAME.cfs (the boot hung for ever) and an
// 8 GiB sparse .sig (out of memory) are each refused with a named error,
// and the next slot boots: one boot through four hostile slots to the good
// one (issue 12, finding 4).
func TestBootHostileFiles(t *testing.T) {
	f := bootFixture(t)
	hf := *f
	hf.disk = hostileDisk(t, f)
	cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["zero", "fifosig", "sparse", "fifoimg", "default"],
		"fallback": true, "tpm": "optional"}`
	start := time.Now()
	res := bootCfsroot(t, &hf, cfg)
	t.Logf("boot took %v", time.Since(start).Round(time.Second))
	r := res.Require(t, "status", "rootinit-done")
	var st boot.Status
	if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	if st.Image != goodImage {
		t.Errorf("booted %q, want %q", st.Image, goodImage)
	}
	want := map[string][]string{
		"zero":    {"zero.cfs.sig", diskfile.ErrSymlink.Error()},
		"fifosig": {"fifosig.cfs.sig", diskfile.ErrNotRegular.Error(), "FIFO"},
		"sparse":  {"sparse.cfs.sig", diskfile.ErrTooLarge.Error(), "8589934592 bytes"},
		"fifoimg": {"fifoimg.cfs", diskfile.ErrNotRegular.Error(), "FIFO"},
	}
	got := map[string]string{}
	for _, rf := range st.Refused {
		got[rf.Slot] = rf.Reason
	}
	for slot, parts := range want {
		for _, p := range parts {
			if !strings.Contains(got[slot], p) {
				t.Errorf("slot %s refused with %q, want it to say %q", slot, got[slot], p)
			}
		}
	}
	if len(st.Refused) != len(want) {
		t.Errorf("refused %+v, want exactly %d slots", st.Refused, len(want))
	}
}

// TestBootAmbiguousDisk: two disks carrying the configured label (the
// appliance's disk and a copy on a USB stick) make the init refuse to
// choose; the console names both devices and on_failure runs (issue 12,
// finding 11).
func TestBootAmbiguousDisk(t *testing.T) {
	f := bootFixture(t)
	stick := filepath.Join(t.TempDir(), "stick.img")
	if out, err := exec.Command("cp", "--sparse=always", f.disk, stick).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v\n%s", err, out)
	}
	cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["default"], "tpm": "optional"}`
	hf := *f
	hf.extraDisks = []string{stick}
	res := bootCfsroot(t, &hf, cfg)
	if res.End != vm.PowerOff {
		t.Errorf("VM ended with %s, want poweroff (on_failure: halt)", res.End)
	}
	for _, w := range []string{"step disk failed", "more than one block device matches", "/dev/vda", "/dev/vdb", "BOOT FAILED"} {
		if !res.Contains(w) {
			t.Errorf("console lacks %q (log %s)", w, res.LogFile)
		}
	}
	if res.Contains("composefs root mounted") {
		t.Error("a root was mounted from an ambiguous disk")
	}
}

// TestBootPartUUIDHostileGPT: the repository disk selected by PARTUUID=,
// inside a GPT partition, while another attached disk carries a GPT header
// whose size is 0xFFFF (which panicked the GPT library PID 1 used, a
// kernel panic). The init reads the partition UUIDs from the kernel's
// partitions and its own bounded GPT reader, skips the hostile disk and
// boots (issue 12, finding 5).
func TestBootPartUUIDHostileGPT(t *testing.T) {
	f := bootFixture(t)
	dir := t.TempDir()
	const sector, offset = 512, 1 << 20
	fi, err := os.Stat(f.disk)
	if err != nil {
		t.Fatal(err)
	}
	guid := [16]byte{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10}
	const partUUID = "04030201-0605-0807-090a-0b0c0d0e0f10"
	// The provisioned filesystem, byte for byte, as partition 1 from 1 MiB.
	parted := filepath.Join(dir, "parted.img")
	if out, err := exec.Command("dd", "if="+f.disk, "of="+parted, "bs=1M", "seek=1", "conv=sparse", "status=none").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v\n%s", err, out)
	}
	size := int64(offset) + fi.Size() + offset
	head := make([]byte, offset)
	testutil.GPTDisk(head, size, sector, []testutil.GPTPartition{
		{GUID: guid, First: offset / sector, Last: uint64(offset+fi.Size())/sector - 1},
	}, nil)
	writeAt(t, parted, head, 0, size)
	// The hostile disk: a GPT header claiming to be 0xFFFF bytes long.
	hostile := filepath.Join(dir, "hostile-gpt.img")
	hhead := make([]byte, offset)
	testutil.GPTDisk(hhead, offset, sector, nil, func(h []byte) { binary.LittleEndian.PutUint32(h[12:], 0xFFFF) })
	writeAt(t, hostile, hhead, 0, offset)

	hf := *f
	hf.disk, hf.extraDisks = parted, []string{hostile}
	cfg := `{"disk": "PARTUUID=` + strings.ToUpper(partUUID) + `", "slots": ["default"], "tpm": "optional"}`
	res := bootCfsroot(t, &hf, cfg)
	if res.End == vm.Panic {
		t.Fatalf("kernel panic (log %s)", res.LogFile)
	}
	res.Require(t, "status", "rootinit-done")
	for _, w := range []string{"found /dev/vda1", "PARTUUID=" + partUUID} {
		if !res.Contains(w) {
			t.Errorf("console lacks %q (log %s)", w, res.LogFile)
		}
	}
}

// writeAt writes b at off in the file p and sets its size.
func writeAt(t *testing.T, p string, b []byte, off, size int64) {
	t.Helper()
	fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(size); err != nil {
		t.Fatal(err)
	}
}
