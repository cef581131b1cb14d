package reader

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// vectorImages returns the reference images of composefs 1.0.8's test
// vectors (built by mkcomposefs, see testutil.ComposefsVectors), as NAME.cfs
// links in a temporary directory.
func vectorImages(tb testing.TB) []string {
	tb.Helper()
	dir := tb.TempDir()
	var imgs []string
	for _, v := range testutil.ComposefsVectors(tb) {
		p := filepath.Join(dir, v.Base+".cfs")
		if err := os.Symlink(v.ReferenceImage(tb), p); err != nil {
			tb.Fatal(err)
		}
		imgs = append(imgs, p)
	}
	return imgs
}

// readVector returns the reference image NAME.cfs of the vector NAME.
func readVector(tb testing.TB, name string) []byte {
	tb.Helper()
	v := testutil.ComposefsVectorNamed(tb, strings.TrimSuffix(name, ".cfs"))
	b, err := os.ReadFile(v.ReferenceImage(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func walkAll(img *Image) ([]*Entry, error) {
	var out []*Entry
	err := img.Walk(func(e *Entry) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

func entryByPath(entries []*Entry, path string) *Entry {
	for _, e := range entries {
		if e.Path == path {
			return e
		}
	}
	return nil
}

// TestSpecial checks the decoded view of special.cfs against values read off
// the vector's input dump (special.dump of composefs' tests/assets).
func TestSpecial(t *testing.T) {
	data := readVector(t, "special.cfs")
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := walkAll(img)
	if err != nil {
		t.Fatal(err)
	}
	if img.FormatVersion() != 0 || img.HasACL() {
		t.Errorf("version %d acl %v, want 0 false", img.FormatVersion(), img.HasACL())
	}
	root := entries[0]
	if root.Path != "/" || !root.IsDir() || root.MtimeSec != 1633950376 {
		t.Errorf("root = %+v", root)
	}
	in := entryByPath(entries, "/inline")
	if in == nil || !in.IsInline() || string(in.Content) != "FOOBAR\nINAFILE\n" {
		t.Errorf("/inline = %+v", in)
	}
	wo := entryByPath(entries, "/whiteout")
	if wo == nil || wo.Mode != 0o20777 || wo.Rdev != 0 || wo.RawMode != 0o100777 {
		t.Errorf("/whiteout = %+v", wo)
	}
	esc := entryByPath(entries, "/escaped-xattr")
	var names, raw []string
	for _, x := range esc.Xattrs {
		names = append(names, x.Name)
	}
	for _, x := range esc.RawXattrs {
		raw = append(raw, x.Name)
	}
	if got := strings.Join(names, " "); got != "trusted.overlay.redirect user.overlay.redirect user.foo" {
		t.Errorf("/escaped-xattr xattrs %s", got)
	}
	if got := strings.Join(raw, " "); got != "trusted.overlay.overlay.redirect user.overlay.redirect user.foo" {
		t.Errorf("/escaped-xattr raw xattrs %s", got)
	}
	if bd := entryByPath(entries, "/blockdev"); bd == nil || bd.Mode != 0o60777 || bd.Rdev != 107690 {
		t.Errorf("/blockdev = %+v", bd)
	}
	if len(entries) != 10 {
		t.Errorf("%d entries, the dump has 10", len(entries))
	}
	for _, e := range entries {
		if strings.Count(e.Path, "/") == 1 && len(e.Path) == 3 && e.Mode == 0o20644 {
			t.Errorf("root whiteout %s not hidden", e.Path)
		}
	}
}

// TestExternalAndHardlinks checks external files, symlinks and hard links on
// the CentOS and config vectors against lines of their canonical dumps.
func TestExternalAndHardlinks(t *testing.T) {
	data := readVector(t, "cs9-x86_64-minimal.cfs")
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := walkAll(img)
	if err != nil {
		t.Fatal(err)
	}
	// /usr/bin/bash 1390168 100755 1 0 0 0 0.0 76/99292b…a7820.file - -
	bash := entryByPath(entries, "/usr/bin/bash")
	if bash == nil || !bash.IsExternal() || bash.IsInline() || bash.Size != 1390168 || bash.Mode != 0o100755 ||
		bash.Payload != "76/99292b23c49b1c44e382b37bcb0ba0737ead5bc499d3ae414c98c2bc3a7820.file" || bash.Digest.Sum != nil {
		t.Errorf("/usr/bin/bash = %+v", bash)
	}
	// /bin 7 120777 1 0 0 0 0.0 usr/bin - -
	if l := entryByPath(entries, "/bin"); l == nil || l.Symlink != "usr/bin" || l.Size != 7 || l.Mode != 0o120777 {
		t.Errorf("/bin = %+v", l)
	}

	data = readVector(t, "config-with-hard-link.cfs")
	if img, err = New(bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if entries, err = walkAll(img); err != nil {
		t.Fatal(err)
	}
	// /usr/bin/ls-hardlink 142024 @100145 2 0 0 0 1633950376.0 /usr/bin/ls - - user.foo1=bar-1 user.foo2=bar-2
	hl, target := entryByPath(entries, "/usr/bin/ls-hardlink"), entryByPath(entries, "/usr/bin/ls")
	if hl == nil || target == nil || hl.HardlinkTo != "/usr/bin/ls" || target.HardlinkTo != "" || hl.Nid != target.Nid ||
		hl.Nlink != 2 || hl.Mode != 0o100145 || hl.Size != 142024 || len(hl.Xattrs) != 2 {
		t.Errorf("hard link = %+v, target = %+v", hl, target)
	}
}

// layout locates structures in an image for the corruption tests.
type layout struct {
	t    *testing.T
	data []byte
	img  *Image
}

func newLayout(t *testing.T, data []byte) *layout {
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	return &layout{t, data, img}
}

func (l *layout) root() *inode {
	ino, err := l.img.inode(uint64(l.img.sb.rootNid))
	if err != nil {
		l.t.Fatal(err)
	}
	return ino
}

// dirent returns the byte offset of the dirent record for name in the root
// directory, and the offset of its block.
func (l *layout) dirent(name string) (rec, block int64) {
	root := l.root()
	nBlocks, tail, err := l.img.blocks(root)
	if err != nil {
		l.t.Fatal(err)
	}
	var starts []int64
	var sizes []int
	for i := uint64(0); i < nBlocks; i++ {
		starts, sizes = append(starts, (int64(root.u)+int64(i))*blockSize), append(sizes, blockSize)
	}
	if tail > 0 {
		starts, sizes = append(starts, root.tailOff), append(sizes, tail)
	}
	for k, start := range starts {
		b := l.data[start : start+int64(sizes[k])]
		n := int(le.Uint16(b[8:])) / direntSize
		for i := 0; i < n; i++ {
			off := int(le.Uint16(b[i*direntSize+8:]))
			end := len(b)
			if i+1 < n {
				end = int(le.Uint16(b[(i+1)*direntSize+8:]))
			}
			if strings.TrimRight(string(b[off:end]), "\x00") == name {
				return start + int64(i*direntSize), start
			}
		}
	}
	l.t.Fatalf("no dirent %q in root", name)
	return 0, 0
}

// inode returns the inode named name in the root directory.
func (l *layout) inode(name string) *inode {
	rec, _ := l.dirent(name)
	ino, err := l.img.inode(le.Uint64(l.data[rec:]))
	if err != nil {
		l.t.Fatal(err)
	}
	return ino
}

// TestCorruptImages checks that crafted corruptions of vector images are
// rejected with an error that says what is wrong (and never panic).
func TestCorruptImages(t *testing.T) {
	put16 := func(b []byte, off int64, v uint16) { le.PutUint16(b[off:], v) }
	put32 := func(b []byte, off int64, v uint32) { le.PutUint32(b[off:], v) }
	put64 := func(b []byte, off int64, v uint64) { le.PutUint64(b[off:], v) }
	tests := []struct {
		name   string
		vector string
		mutate func(l *layout, b []byte) []byte
		want   string
	}{
		{"bad composefs magic", "special.cfs", func(l *layout, b []byte) []byte { b[0] ^= 0xff; return b }, "bad composefs magic"},
		{"bad header version", "special.cfs", func(l *layout, b []byte) []byte { b[4] = 2; return b }, "header version 2"},
		{"future format version", "special.cfs", func(l *layout, b []byte) []byte { b[12] = 9; return b }, "format version 9"},
		{"unknown header flag", "special.cfs", func(l *layout, b []byte) []byte { b[8] = 2; return b }, "header flags"},
		{"bad EROFS magic", "special.cfs", func(l *layout, b []byte) []byte { b[superOffset] ^= 1; return b }, "superblock magic"},
		{"block size", "special.cfs", func(l *layout, b []byte) []byte { b[superOffset+12] = 9; return b }, "block size 2^9"},
		{"compressed image", "special.cfs", func(l *layout, b []byte) []byte { put32(b, superOffset+80, 1); return b }, "incompatible features"},
		{"smaller than a block", "special.cfs", func(l *layout, b []byte) []byte { return b[:1000] }, "smaller than one 4096-byte block"},
		{"truncated", "special.cfs", func(l *layout, b []byte) []byte { return b[:8192] }, "truncated"},
		{"root nid beyond end", "special.cfs", func(l *layout, b []byte) []byte { put16(b, superOffset+14, 0xffff); return b }, "beyond the end"},
		{"root nid in header", "special.cfs", func(l *layout, b []byte) []byte { put16(b, superOffset+14, 1); return b }, "overlaps the composefs header"},
		{"root not a directory", "special.cfs", func(l *layout, b []byte) []byte {
			put16(b, superOffset+14, uint16(l.inode("inline").nid))
			return b
		}, "not a directory"},
		{"compressed inode", "special.cfs", func(l *layout, b []byte) []byte {
			off := l.inode("fifo").off
			put16(b, off, le.Uint16(b[off:])&^0xe|1<<1)
			return b
		}, "data layout 1"},
		{"dirent name offset out of bounds", "special.cfs", func(l *layout, b []byte) []byte {
			rec, _ := l.dirent("fifo")
			put16(b, rec+8, 0xfff0)
			return b
		}, "out of bounds"},
		{"first name offset misaligned", "special.cfs", func(l *layout, b []byte) []byte {
			_, blk := l.dirent("fifo")
			put16(b, blk+8, le.Uint16(b[blk+8:])+1)
			return b
		}, "first dirent name offset"},
		{"names not sorted", "special.cfs", func(l *layout, b []byte) []byte {
			rec, _ := l.dirent("blockdev")
			_, blk := l.dirent("blockdev")
			b[blk+int64(le.Uint16(b[rec+8:]))] = 'z'
			return b
		}, "not sorted"},
		{"directory loop", "special.cfs", func(l *layout, b []byte) []byte {
			rec, _ := l.dirent("fifo")
			put64(b, rec, uint64(l.img.sb.rootNid))
			b[rec+10] = 2
			return b
		}, "directory loop"},
		{"dot elsewhere", "special.cfs", func(l *layout, b []byte) []byte {
			rec, _ := l.dirent(".")
			put64(b, rec, l.inode("fifo").nid)
			return b
		}, `"." points at`},
		{"file type mismatch", "special.cfs", func(l *layout, b []byte) []byte {
			rec, _ := l.dirent("inline")
			b[rec+10] = 7
			return b
		}, "does not match inode mode"},
		{"dirent nid beyond end", "special.cfs", func(l *layout, b []byte) []byte {
			rec, _ := l.dirent("inline")
			put64(b, rec, 1<<60)
			return b
		}, "beyond the end of the image"},
		{"huge directory", "special.cfs", func(l *layout, b []byte) []byte {
			put32(b, l.root().off+8, 0xfffff000)
			return b
		}, "outside the image"},
		{"huge inline file", "special.cfs", func(l *layout, b []byte) []byte {
			put32(b, l.inode("inline").off+8, 0xffffffff)
			return b
		}, "at most 5000"},
		{"inline tail crosses block", "special.cfs", func(l *layout, b []byte) []byte {
			ino := l.inode("inline")
			if ino.layout != layoutFlatInline {
				l.t.Fatal("/inline is not tail-packed")
			}
			put32(b, ino.off+8, 4000)
			return b
		}, "cross a block boundary"},
		{"huge xattr count", "special.cfs", func(l *layout, b []byte) []byte {
			put16(b, l.inode("inline").off+2, 0xffff)
			return b
		}, "past the end of the image"},
		{"shared xattr id beyond end", "special.cfs", func(l *layout, b []byte) []byte {
			ino := l.inode("inline")
			xo := ino.tailOff - int64(ino.xattrSize)
			if b[xo+4] == 0 {
				l.t.Fatal("/inline has no shared xattrs")
			}
			put32(b, xo+xattrHeaderSize, 0x7fffffff)
			return b
		}, "shared xattr id 2147483647"},
		{"xattr entry overruns", "special.cfs", func(l *layout, b []byte) []byte {
			ino := l.root()
			xo := ino.tailOff - int64(ino.xattrSize)
			first := xo + xattrHeaderSize + 4*int64(b[xo+4])
			put16(b, first+2, 0xffff)
			return b
		}, "overruns the xattr area"},
		{"xattr name filter", "special.cfs", func(l *layout, b []byte) []byte {
			ino := l.inode("inline")
			put32(b, ino.tailOff-int64(ino.xattrSize), 0xffffffff)
			return b
		}, "name filter"},
		{"symlink empty", "longlink.cfs", func(l *layout, b []byte) []byte {
			var name string
			for _, e := range mustWalk(l) {
				if e.Mode&sIFMT == sIFLNK {
					name = e.Path[1:]
				}
			}
			put32(b, l.inode(name).off+8, 0)
			return b
		}, "symlink target length 0"},
		{"ACL without header flag", "honggfuzz-bigfile-with-acl.cfs", func(l *layout, b []byte) []byte {
			b[8] &^= cfsFlagHasACL
			return b
		}, "lacks the HAS_ACL flag"},
		{"chunk with data", "bigfile.cfs", func(l *layout, b []byte) []byte {
			ino := l.inode("bigfile")
			put32(b, ino.tailOff, 7)
			return b
		}, "must be a hole"},
		{"too many chunks", "bigfile.cfs", func(l *layout, b []byte) []byte {
			ino := l.inode("bigfile")
			put16(b, ino.off+16, 0)
			return b
		}, "composefs allows at most 1024"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := readVector(t, tc.vector)
			l := newLayout(t, orig)
			data := tc.mutate(l, append([]byte(nil), orig...))
			img, err := New(bytes.NewReader(data), int64(len(data)))
			if err == nil {
				_, err = walkAll(img)
			}
			if err == nil {
				t.Fatalf("corrupt image accepted")
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %q does not wrap ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func mustWalk(l *layout) []*Entry {
	entries, err := walkAll(l.img)
	if err != nil {
		l.t.Fatal(err)
	}
	return entries
}

// BenchmarkWalk walks the largest vector (CentOS Stream 9 developer, 64k
// entries, 9.5 MB image) from a file.
func BenchmarkWalk(b *testing.B) {
	p := testutil.ComposefsVectorNamed(b, "cs9-x86_64-developer").ReferenceImage(b)
	for b.Loop() {
		img, err := Open(p)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		if err := img.Walk(func(*Entry) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
		img.Close()
		b.ReportMetric(float64(n), "entries/op")
	}
}
