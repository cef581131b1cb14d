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
	"github.com/cfsroot/cfsroot/rootfs/composefs"
)

// mountErofs mounts the image read-only at a temporary directory, backed by
// the file itself (Linux ≥ 6.12) or, failing that, by a read-only loop
// device, and unmounts it when the test ends.
func mountErofs(t *testing.T, image string) string {
	t.Helper()
	testutil.RequireRoot(t, "mounting EROFS images")
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

// TestDirImageMount builds an image with the Go writer from a real directory
// (composefs.FromDir, as `cfsroot mkimage DIR` does), mounts it and compares
// the kernel's view with the reader's.
func TestDirImageMount(t *testing.T) {
	testutil.RequireRoot(t, "mounting EROFS images")
	dir := t.TempDir()
	write := func(name string, data []byte, mode os.FileMode) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/os-release", []byte("ID=test\n"), 0o644)
	write("usr/bin/sh", bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 100), 0o755)
	write("usr/share/empty", nil, 0o600)
	write("usr/share/65", bytes.Repeat([]byte("a"), 65), 0o644)
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(dir, "usr/bin/sh"), "trusted.overlay.redirect", []byte("/x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(dir, "etc"), "user.dir", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(dir, "usr/share/gone"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "usr/share/65"), 100000, 70000); err != nil {
		t.Fatal(err)
	}
	root, err := composefs.FromDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := composefs.Write(&buf, root, nil); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "dir.cfs")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	compareWithMount(t, p)
	img, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	entries, err := walkAll(img)
	if err != nil {
		t.Fatal(err)
	}
	sh := entryByPath(entries, "/usr/bin/sh")
	if sh == nil || !sh.IsExternal() || sh.Digest.Sum == nil || sh.Payload != composefs.ObjectPath(sh.Digest.Sum) ||
		len(sh.Xattrs) != 1 || sh.Xattrs[0].Name != "trusted.overlay.redirect" || string(sh.Xattrs[0].Value) != "/x" {
		t.Errorf("/usr/bin/sh = %+v", sh)
	}
	if e := entryByPath(entries, "/usr/share/65"); e == nil || !e.IsExternal() || e.UID != 100000 || e.GID != 70000 {
		t.Errorf("/usr/share/65 = %+v", e)
	}
	if e := entryByPath(entries, "/etc/os-release"); e == nil || !e.IsInline() || string(e.Content) != "ID=test\n" {
		t.Errorf("/etc/os-release = %+v", e)
	}
	if e := entryByPath(entries, "/usr/share/gone"); e == nil || e.Mode&sIFMT != sIFCHR || e.Rdev != 0 {
		t.Errorf("/usr/share/gone = %+v", e)
	}
}
