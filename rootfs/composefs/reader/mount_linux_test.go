package reader

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// mountErofs mounts the image read-only at a temporary directory, backed by
// the file itself (Linux ≥ 6.12) or, failing that, by a read-only loop
// device, and unmounts it when the test ends.
func mountErofs(t *testing.T, image string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if testutil.InCI() {
			t.Fatal("mounting EROFS images needs root, and CI runs as root")
		}
		t.Skip("mounting EROFS images needs root: run the tests as root (CI does)")
	}
	dir := t.TempDir()
	err := unix.Mount(image, dir, "erofs", unix.MS_RDONLY, "")
	if errors.Is(err, unix.ENOTBLK) {
		out, lerr := exec.Command("losetup", "--read-only", "--find", "--show", image).Output()
		if lerr != nil {
			t.Fatalf("kernel has no file-backed EROFS and losetup failed: %v", lerr)
		}
		loop := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "--detach", loop).Run() })
		err = unix.Mount(loop, dir, "erofs", unix.MS_RDONLY, "")
	}
	if errors.Is(err, unix.ENODEV) {
		t.Fatalf("kernel has no EROFS support (modprobe erofs): %v", err)
	}
	if err != nil {
		t.Fatalf("mount %s: %v", image, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// kernelXattrs lists the xattrs of path as the kernel presents them. Values
// of user.* xattrs on special files (ENODATA) and of malformed ACLs (EINVAL)
// cannot be read, so only their names are returned (value nil).
func kernelXattrs(t *testing.T, path string) map[string][]byte {
	buf := make([]byte, 1<<16)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", path, err)
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 1<<16)
		m, err := unix.Lgetxattr(path, name, v)
		if errors.Is(err, unix.ENODATA) && strings.HasPrefix(name, "user.") ||
			errors.Is(err, unix.EINVAL) && strings.HasPrefix(name, "system.posix_acl_") {
			out[name] = nil // the kernel refuses to decode a malformed ACL
			continue
		}
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", path, name, err)
		}
		out[name] = v[:m]
	}
	return out
}

// TestAgainstKernelMount mounts vector images with the kernel's EROFS and
// compares every file the kernel shows with the reader's stored view.
func TestAgainstKernelMount(t *testing.T) {
	for _, image := range vectorImages(t) {
		name := filepath.Base(image)
		t.Run(name, func(t *testing.T) {
			compareWithMount(t, image)
		})
	}
}

func compareWithMount(t *testing.T, image string) {
	mnt := mountErofs(t, image)
	img, err := Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	ours := map[string]*Entry{}
	if err := img.Walk(func(e *Entry) error { ours[e.Path] = e; return nil }); err != nil {
		t.Fatal(err)
	}
	seen := 0
	err = filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(mnt, p)
		path := "/" + rel
		if rel == "." {
			path = "/"
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Mode&sIFMT == sIFCHR && st.Rdev == 0 {
			return nil // the reader hides real whiteouts, as composefs-info does
		}
		e := ours[path]
		if e == nil {
			t.Errorf("kernel shows %s, reader does not", path)
			return nil
		}
		seen++
		if st.Mode != e.RawMode || uint64(st.Size) != e.Size || st.Uid != e.UID || st.Gid != e.GID ||
			uint32(st.Nlink) != e.Nlink || st.Rdev != uint64(e.Rdev) || st.Ino != e.Nid ||
			st.Mtim.Sec != e.MtimeSec || uint32(st.Mtim.Nsec) != e.MtimeNsec {
			t.Errorf("%s: kernel mode %o size %d uid %d gid %d nlink %d rdev %d ino %d mtime %d.%d; reader %o %d %d %d %d %d %d %d.%d",
				path, st.Mode, st.Size, st.Uid, st.Gid, st.Nlink, st.Rdev, st.Ino, st.Mtim.Sec, st.Mtim.Nsec,
				e.RawMode, e.Size, e.UID, e.GID, e.Nlink, e.Rdev, e.Nid, e.MtimeSec, e.MtimeNsec)
		}
		if st.Mode&sIFMT == sIFLNK {
			if target, err := os.Readlink(p); err != nil || target != e.Symlink {
				t.Errorf("%s: kernel target %q (%v), reader %q", path, target, err, e.Symlink)
			}
		}
		if e.IsInline() {
			if content, err := os.ReadFile(p); err != nil || !bytes.Equal(content, e.Content) {
				t.Errorf("%s: inline content differs from the kernel's (%v)", path, err)
			}
		}
		kx := kernelXattrs(t, p)
		if len(kx) != len(e.RawXattrs) {
			t.Errorf("%s: kernel lists %d xattrs, reader %d", path, len(kx), len(e.RawXattrs))
		}
		for _, x := range e.RawXattrs {
			v, ok := kx[x.Name]
			if !ok || (v != nil && !bytes.Equal(v, x.Value)) {
				t.Errorf("%s: xattr %q: kernel %q (present %v), reader %q", path, x.Name, v, ok, x.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(ours) {
		t.Errorf("kernel shows %d entries, reader %d", seen, len(ours))
	}
}
