package reader

import (
	"bytes"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	erofs "github.com/erofs/go-erofs"
)

// goFileMode converts st_mode to fs.FileMode the way go-erofs does.
func goFileMode(m uint32) fs.FileMode {
	f := fs.FileMode(m & 0o777)
	switch m & sIFMT {
	case sIFDIR:
		f |= fs.ModeDir
	case sIFCHR:
		f |= fs.ModeDevice | fs.ModeCharDevice
	case sIFBLK:
		f |= fs.ModeDevice
	case sIFIFO:
		f |= fs.ModeNamedPipe
	case sIFSOCK:
		f |= fs.ModeSocket
	case sIFLNK:
		f |= fs.ModeSymlink
	}
	if m&0o4000 != 0 {
		f |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		f |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		f |= fs.ModeSticky
	}
	return f
}

// checkAgainstGoErofs walks the image with go-erofs, an independent EROFS
// reader, and compares every entry with what Walk reports as stored (raw
// modes and xattrs: go-erofs knows nothing of composefs' overlay xattrs).
func checkAgainstGoErofs(t *testing.T, name string, data []byte) {
	t.Helper()
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	ours := map[string]*Entry{}
	if err := img.Walk(func(e *Entry) error { ours[e.Path] = e; return nil }); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	efs, err := erofs.Open(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: go-erofs: %v", name, err)
	}
	type linker interface {
		ReadLink(string) (string, error)
		Lstat(string) (fs.FileInfo, error)
	}
	lfs := efs.(linker)
	seen := 0
	err = fs.WalkDir(efs, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := lfs.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*erofs.Stat)
		path := "/" + p
		if p == "." {
			path = "/"
		}
		if st.Mode&fs.ModeCharDevice != 0 && st.Rdev == 0 {
			if ours[path] != nil {
				t.Errorf("%s: %s: whiteout not hidden", name, path)
			}
			return nil // real whiteouts are hidden by the reader
		}
		e := ours[path]
		if e == nil {
			t.Errorf("%s: go-erofs lists %s, reader does not", name, path)
			return nil
		}
		seen++
		if goFileMode(e.RawMode) != st.Mode || e.Size != uint64(st.Size) || e.UID != st.UID || e.GID != st.GID ||
			e.Nlink != uint32(st.Nlink) || e.Rdev != st.Rdev || e.Nid != uint64(st.Ino) ||
			e.MtimeSec != int64(st.Mtime) || e.MtimeNsec != st.MtimeNs {
			t.Errorf("%s: %s: reader %o size %d uid %d gid %d nlink %d rdev %d nid %d mtime %d.%d; go-erofs %v %+v",
				name, path, e.RawMode, e.Size, e.UID, e.GID, e.Nlink, e.Rdev, e.Nid, e.MtimeSec, e.MtimeNsec, st.Mode, *st)
		}
		if st.Mode&fs.ModeSymlink != 0 {
			target, err := lfs.ReadLink(p)
			if err != nil || target != e.Symlink {
				t.Errorf("%s: %s: go-erofs target %q (%v), reader %q", name, path, target, err, e.Symlink)
			}
		}
		if e.IsInline() {
			content, err := fs.ReadFile(efs, p)
			if err != nil || !bytes.Equal(content, e.Content) {
				t.Errorf("%s: %s: inline content differs (go-erofs error %v)", name, path, err)
			}
		}
		if len(st.Xattrs) != len(e.RawXattrs) {
			t.Errorf("%s: %s: go-erofs has %d xattrs, reader %d", name, path, len(st.Xattrs), len(e.RawXattrs))
		}
		for _, x := range e.RawXattrs {
			k := x.Name
			if strings.HasPrefix(k, "system.posix_acl_") {
				k += "." // go-erofs names ACL xattrs with a trailing dot
			}
			if v, ok := st.Xattrs[k]; !ok || v != string(x.Value) {
				t.Errorf("%s: %s: xattr %q: go-erofs %q (present %v), reader %q", name, path, x.Name, v, ok, x.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: go-erofs walk: %v", name, err)
	}
	if seen != len(ours) {
		t.Errorf("%s: go-erofs saw %d entries, reader %d", name, seen, len(ours))
	}
}

func TestAgainstGoErofs(t *testing.T) {
	for _, p := range vectorImages(t) {
		name := filepath.Base(p)
		t.Run(name, func(t *testing.T) {
			checkAgainstGoErofs(t, name, readVector(t, name))
		})
	}
}
