package diskfile

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHostileFiles: each file an attacker can put on the disk in place of
// a signature or image, which os.ReadFile followed (a symlink to
// /dev/zero: memory until the OOM killer), waited on (a FIFO: for ever) or
// read whole (an 8 GiB sparse file), is refused with a named error, at
// once.
func TestHostileFiles(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	os.WriteFile(p("ok"), []byte("signature"), 0o644)
	os.Symlink("/dev/zero", p("zero"))
	os.Symlink("ok", p("link-to-ok"))
	if err := unix.Mkfifo(p("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.WriteFile(p("big"), make([]byte, 4097), 0o644)
	os.Mkdir(p("dir"), 0o755)
	l, err := net.Listen("unix", p("sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	for _, tc := range []struct {
		name string
		want error
		msg  string
	}{
		{"zero", ErrSymlink, "symbolic link"},
		{"link-to-ok", ErrSymlink, ""},
		{"fifo", ErrNotRegular, "FIFO"},
		{"sparse", ErrTooLarge, "8589934592 bytes"},
		{"big", ErrTooLarge, "the limit is 4096"},
		{"dir", ErrNotRegular, "directory"},
		{"sock", nil, ""}, // a socket cannot be opened: ENXIO
		{"missing", os.ErrNotExist, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := ReadFile(p(tc.name), 4096)
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("read")
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("err %v, want %v", err, tc.want)
				}
				if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), p(tc.name)) {
					t.Errorf("err %q: want it to name the file and say %q", err, tc.msg)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("ReadFile blocked")
			}
		})
	}
	b, err := ReadFile(p("ok"), 9)
	if err != nil || string(b) != "signature" {
		t.Errorf("regular file: %q, %v", b, err)
	}
	f, err = Open(p("ok"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if fl&unix.O_NONBLOCK != 0 {
		t.Error("O_NONBLOCK left set")
	}
	fdfl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if fdfl&unix.FD_CLOEXEC == 0 {
		t.Error("not close-on-exec")
	}
	if _, err := Open(p("fifo")); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Open(fifo) = %v", err)
	}
}
