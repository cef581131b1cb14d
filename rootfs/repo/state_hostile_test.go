package repo

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/diskfile"
)

// TestReadStateHostile: the init reads the slot state from the disk before
// verifying anything; a FIFO there hung os.Open, a symlink was followed.
// Both are refused at once (issue 12, finding 4).
func TestReadStateHostile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(p string) error
		want  error
	}{
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o644) }, diskfile.ErrNotRegular},
		{"symlink", func(p string) error { return os.Symlink("/dev/zero", p) }, diskfile.ErrSymlink},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, StateFile)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := tc.plant(p); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { _, err := ReadState(dir); done <- err }()
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Errorf("ReadState = %v, want %v", err, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("ReadState blocked")
			}
		})
	}
}
