package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckInit(t *testing.T) {
	root := t.TempDir()
	mk := func(p string, mode os.FileMode) {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("lib/systemd/systemd", 0o755)
	mk("bin/notexec", 0o644)
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	// An absolute symlink must resolve inside the new root, as after chroot.
	os.Symlink("/lib/systemd/systemd", filepath.Join(root, "sbin/init"))
	os.Symlink("/nonexistent", filepath.Join(root, "sbin/dangling"))
	os.Symlink("../../../../../../etc/passwd", filepath.Join(root, "sbin/escape"))
	for _, tc := range []struct{ init, want string }{
		{"/sbin/init", ""},
		{"/lib/systemd/systemd", ""},
		{"/bin/notexec", "not executable"},
		{"/sbin", "not a regular file"},
		{"/sbin/dangling", "not found"},
		{"/sbin/escape", "not found"},
		{"/missing", "not found"},
	} {
		err := CheckInit(root, tc.init)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckInit(%s) = %v, want %q", tc.init, err, tc.want)
		}
	}
}
