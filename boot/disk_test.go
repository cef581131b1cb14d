package boot

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

func TestParseDiskSelector(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"LABEL=root", "LABEL=root"},
		{"UUID=ABCD-1234", "UUID=abcd-1234"},
		{"PARTUUID=0FC63DAF-8483-4772-8E79-3D69D8477DE4", "PARTUUID=0fc63daf-8483-4772-8e79-3d69d8477de4"},
		{"/dev/vda", "/dev/vda"},
	} {
		s, err := ParseDiskSelector(tc.in)
		if err != nil || s.String() != tc.want {
			t.Errorf("ParseDiskSelector(%q) = %v, %v; want %s", tc.in, s, err, tc.want)
		}
	}
	for _, bad := range []string{"", "vda", "LABEL=", "FOO=bar", "/dev/../etc/shadow"} {
		if _, err := ParseDiskSelector(bad); err == nil {
			t.Errorf("ParseDiskSelector(%q) accepted", bad)
		}
	}
}

// TestScanBlockDevices reads label and UUID from a real ext4 image (made by
// mkfs.ext4, the oracle being its own -U and -L) through a fake sysfs.
func TestScanBlockDevices(t *testing.T) {
	testutil.RequireTool(t, "mkfs.ext4")
	dir := t.TempDir()
	sys := filepath.Join(dir, "sys")
	dev := filepath.Join(dir, "dev")
	for _, n := range []string{"vda", "vdb", "loop0"} {
		os.MkdirAll(filepath.Join(sys, n), 0o755)
	}
	os.MkdirAll(dev, 0o755)
	uuid := "6f1d2c3b-aaaa-4bbb-8ccc-123456789abc"
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "cfs-test", "-U", uuid, filepath.Join(dev, "vda"), "8M").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(dev, "vdb"), make([]byte, 4096), 0o644)
	devs := ScanBlockDevices(sys, dev)
	if len(devs) != 2 {
		t.Fatalf("devices %v, want vda and vdb (loop devices skipped)", devs)
	}
	if devs[0].Label != "cfs-test" || devs[0].UUID != uuid {
		t.Errorf("vda: %+v", devs[0])
	}
	if devs[1].Label != "" || devs[1].UUID != "" {
		t.Errorf("vdb (no filesystem): %+v", devs[1])
	}
	for _, sel := range []string{"LABEL=cfs-test", "UUID=" + strings.ToUpper(uuid), filepath.Join(dev, "vda")} {
		s, _ := ParseDiskSelector(sel)
		if strings.HasPrefix(sel, "/") {
			s = DiskSelector{Kind: "PATH", Value: sel}
		}
		if !devs[0].matches(s) {
			t.Errorf("%s does not match %v", sel, devs[0])
		}
	}
}

// TestSelectDiskAmbiguous: a second filesystem with the selected label or
// UUID (a USB stick) used to be "first match wins" (issue 12, finding 11);
// now the choice is refused and both devices are named.
func TestSelectDiskAmbiguous(t *testing.T) {
	uuid := "6f1d2c3b-aaaa-4bbb-8ccc-123456789abc"
	devs := []BlockDevice{
		{Path: "/dev/sda1", Label: "appliance", UUID: uuid},
		{Path: "/dev/sdb1", Label: "appliance", UUID: uuid, PartUUID: "0fc63daf-8483-4772-8e79-3d69d8477de4"},
		{Path: "/dev/vda", Label: "data", UUID: "11111111-2222-3333-4444-555555555555"},
	}
	for _, tc := range []struct {
		sel  string
		want string // device chosen, or "" for ambiguous
	}{
		{"LABEL=appliance", ""},
		{"UUID=" + uuid, ""},
		{"LABEL=data", "/dev/vda"},
		{"PARTUUID=0FC63DAF-8483-4772-8E79-3D69D8477DE4", "/dev/sdb1"},
		{"/dev/sda1", "/dev/sda1"},
	} {
		sel, err := ParseDiskSelector(tc.sel)
		if err != nil {
			t.Fatal(err)
		}
		d, ok, err := selectDisk(devs, sel)
		if tc.want != "" {
			if err != nil || !ok || d.Path != tc.want {
				t.Errorf("%s: %v %v %v, want %s", tc.sel, d, ok, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, ErrAmbiguousDisk) || ok || !strings.Contains(err.Error(), "/dev/sda1") || !strings.Contains(err.Error(), "/dev/sdb1") {
			t.Errorf("%s: %v %v %v, want ErrAmbiguousDisk naming sda1 and sdb1", tc.sel, d, ok, err)
		}
	}
	if _, ok, err := selectDisk(devs, DiskSelector{Kind: "LABEL", Value: "none"}); ok || err != nil {
		t.Errorf("no match: ok %v err %v", ok, err)
	}
}

// TestFindDiskAmbiguous does the same through ScanBlockDevices with two
// real ext4 filesystems made by mkfs.ext4 with the same label.
func TestFindDiskAmbiguous(t *testing.T) {
	testutil.RequireTool(t, "mkfs.ext4")
	dir := t.TempDir()
	sys, dev := filepath.Join(dir, "sys"), filepath.Join(dir, "dev")
	os.MkdirAll(dev, 0o755)
	for _, n := range []string{"vda", "sdb"} {
		os.MkdirAll(filepath.Join(sys, n), 0o755)
		out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "appliance", filepath.Join(dev, n), "8M").CombinedOutput()
		if err != nil {
			t.Fatalf("mkfs.ext4: %v\n%s", err, out)
		}
	}
	_, _, err := selectDisk(ScanBlockDevices(sys, dev), DiskSelector{Kind: "LABEL", Value: "appliance"})
	if !errors.Is(err, ErrAmbiguousDisk) || !strings.Contains(err.Error(), filepath.Join(dev, "vda")) || !strings.Contains(err.Error(), filepath.Join(dev, "sdb")) {
		t.Errorf("two filesystems labelled appliance: %v", err)
	}
}
