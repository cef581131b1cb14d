package composefs_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
)

func mustAdd(t *testing.T, dir *composefs.Node, name string, n *composefs.Node) *composefs.Node {
	t.Helper()
	if err := dir.Add(name, n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAPITreeMatchesMkcomposefs builds a tree with the Go API, hard links
// included, and compares the image with what mkcomposefs makes from the
// dump text describing the same tree (written by hand: the "@" lines are
// where the API adds the second names).
func TestAPITreeMatchesMkcomposefs(t *testing.T) {
	mkcfs := oracle(t, "mkcomposefs")
	digest := bytes.Repeat([]byte{0xab}, 32)

	root := composefs.NewNode(composefs.ModeDir | 0o755)
	root.Mtime = composefs.Time{Sec: 100}
	etc := mustAdd(t, root, "etc", &composefs.Node{Mode: composefs.ModeDir | 0o755, Mtime: composefs.Time{Sec: 100}})
	deep := mustAdd(t, etc, "deep", &composefs.Node{Mode: composefs.ModeDir | 0o700, Mtime: composefs.Time{Sec: 100}})
	bin := &composefs.Node{Mode: composefs.ModeRegular | 0o755, Nlink: 3, Size: 5000, Mtime: composefs.Time{Sec: 100},
		Payload: composefs.ObjectPath(digest), Digest: digest}
	bin.SetXattr("security.capability", []byte{1, 2, 3})
	bin.SetXattr("trusted.overlay.redirect", []byte("/escaped"))
	mustAdd(t, deep, "bin", bin) // primary: placed in BFS order under /etc/deep
	mustAdd(t, root, "a-link", bin)
	mustAdd(t, etc, "z-link", bin)
	small := &composefs.Node{Mode: composefs.ModeRegular | 0o644, Nlink: 1, Size: 3, Content: []byte("hi\n"), Mtime: composefs.Time{Sec: 100}}
	mustAdd(t, etc, "motd", small)
	lnk := &composefs.Node{Mode: composefs.ModeSymlink | 0o777, Nlink: 1, Payload: "deep/bin", Mtime: composefs.Time{Sec: 100}}
	mustAdd(t, etc, "link", lnk)
	wo := &composefs.Node{Mode: composefs.ModeCharDev | 0o644, Nlink: 1, Mtime: composefs.Time{Sec: 100}}
	mustAdd(t, etc, "gone", wo)

	const text = `/ 0 40755 2 0 0 0 100.0 - - -
/a-link 0 @100755 0 0 0 0 0.0 /etc/deep/bin - -
/etc 0 40755 2 0 0 0 100.0 - - -
/etc/deep 0 40700 2 0 0 0 100.0 - - -
/etc/deep/bin 5000 100755 3 0 0 0 100.0 OBJ - abababababababababababababababababababababababababababababababab security.capability=\x01\x02\x03 trusted.overlay.redirect=/escaped
/etc/gone 0 20644 1 0 0 0 100.0 - - -
/etc/link 8 120777 1 0 0 0 100.0 deep/bin - -
/etc/motd 3 100644 1 0 0 0 100.0 - hi\n -
/etc/z-link 0 @100644 0 0 0 0 0.0 /etc/deep/bin - -
`
	obj := composefs.ObjectPath(digest)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.dump")
	os.WriteFile(in, []byte(strings.ReplaceAll(text, "OBJ", obj)), 0o644)
	testutil.Run(t, mkcfs, "--from-file", in, filepath.Join(dir, "ref.cfs"))
	ref, _ := os.ReadFile(filepath.Join(dir, "ref.cfs"))

	var before bytes.Buffer
	dump.Write(&before, root)
	var img bytes.Buffer
	if _, err := composefs.Write(&img, root, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img.Bytes(), ref) {
		t.Fatalf("image differs from mkcomposefs' (first difference at %d)", firstDiff(img.Bytes(), ref))
	}
	var after bytes.Buffer
	dump.Write(&after, root)
	if before.String() != after.String() {
		t.Error("Write changed the tree")
	}

	// Removing the primary entry moves the inode to the first remaining
	// entry in breadth-first order, as if that line were the real one.
	deep.Remove("bin")
	deep.Add("bin", bin)
	var img2 bytes.Buffer
	if _, err := composefs.Write(&img2, root, nil); err != nil {
		t.Fatal(err)
	}
	text2 := strings.NewReplacer(
		"/a-link 0 @100755 0 0 0 0 0.0 /etc/deep/bin - -", "/a-link 5000 100755 3 0 0 0 100.0 OBJ - abababababababababababababababababababababababababababababababab security.capability=\\x01\\x02\\x03 trusted.overlay.redirect=/escaped",
		"/etc/deep/bin 5000 100755 3 0 0 0 100.0 OBJ - abababababababababababababababababababababababababababababababab security.capability=\\x01\\x02\\x03 trusted.overlay.redirect=/escaped", "/etc/deep/bin 0 @100755 0 0 0 0 0.0 /a-link - -",
		"/etc/z-link 0 @100644 0 0 0 0 0.0 /etc/deep/bin - -", "/etc/z-link 0 @100644 0 0 0 0 0.0 /a-link - -",
	).Replace(text)
	os.WriteFile(in, []byte(strings.ReplaceAll(text2, "OBJ", obj)), 0o644)
	testutil.Run(t, mkcfs, "--from-file", in, filepath.Join(dir, "ref2.cfs"))
	ref2, _ := os.ReadFile(filepath.Join(dir, "ref2.cfs"))
	if !bytes.Equal(img2.Bytes(), ref2) {
		t.Fatalf("image after moving the primary entry differs from mkcomposefs' (first difference at %d)", firstDiff(img2.Bytes(), ref2))
	}
}

func TestAddErrors(t *testing.T) {
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	file := composefs.NewNode(composefs.ModeRegular | 0o644)
	sub := composefs.NewNode(composefs.ModeDir | 0o755)
	mustAdd(t, root, "file", file)
	mustAdd(t, root, "sub", sub)
	for _, tc := range []struct {
		dir  *composefs.Node
		name string
		n    *composefs.Node
		want string
	}{
		{file, "x", composefs.NewNode(composefs.ModeRegular), "not a directory"},
		{root, "", file, "empty name"},
		{root, ".", file, "reserved"},
		{root, "..", file, "reserved"},
		{root, "a/b", file, "'/'"},
		{root, "a\x00", file, "NUL"},
		{root, strings.Repeat("n", 256), file, "at most 255"},
		{root, "file", composefs.NewNode(composefs.ModeRegular), "already exists"},
		{root, "sub2", sub, "no hard links to directories"},
		{sub, "self", sub, "no hard links to directories"},
		{root, "nil", nil, "nil node"},
	} {
		err := tc.dir.Add(tc.name, tc.n)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Add(%.20q): %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := root.Add("file", composefs.NewNode(composefs.ModeRegular)); !errors.Is(err, composefs.ErrExist) {
		t.Errorf("duplicate Add: %v, want ErrExist", err)
	}
	// Hard links to files are fine; Remove and Lookup follow.
	mustAdd(t, sub, "hard", file)
	if file.NumLinks() != 2 || sub.Lookup("hard") != file {
		t.Errorf("hard link: NumLinks %d", file.NumLinks())
	}
	if !root.Remove("file") || root.Remove("file") || root.Lookup("file") != nil || file.NumLinks() != 1 {
		t.Error("Remove")
	}
	names := []string{}
	for _, e := range root.Entries() {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "sub" {
		t.Errorf("entries %v", names)
	}
}

func TestEntriesSorted(t *testing.T) {
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	for _, n := range []string{"b", "a", "\xff", "A", "-", "ab", "aa"} {
		mustAdd(t, root, n, composefs.NewNode(composefs.ModeFIFO|0o644))
	}
	var got []string
	for _, e := range root.Entries() {
		got = append(got, e.Name)
	}
	if strings.Join(got, ",") != "-,A,a,aa,ab,b,\xff" {
		t.Errorf("order %q", got)
	}
}

func TestXattrMethods(t *testing.T) {
	n := composefs.NewNode(composefs.ModeRegular | 0o644)
	n.SetXattr("user.b", []byte("1"))
	n.SetXattr("user.a", []byte("2"))
	n.SetXattr("user.b", []byte("3"))
	if v, ok := n.Xattr("user.b"); !ok || string(v) != "3" || len(n.Xattrs) != 2 {
		t.Errorf("SetXattr replace: %q %v %d", v, ok, len(n.Xattrs))
	}
	n.SortXattrs()
	if n.Xattrs[0].Key != "user.a" {
		t.Error("SortXattrs")
	}
	if !n.RemoveXattr("user.a") || n.RemoveXattr("user.a") || len(n.Xattrs) != 1 {
		t.Error("RemoveXattr")
	}
}

func TestWriteErrors(t *testing.T) {
	mk := func(n *composefs.Node) *composefs.Node {
		root := composefs.NewNode(composefs.ModeDir | 0o755)
		mustAdd(t, root, "x", n)
		return root
	}
	cycle := composefs.NewNode(composefs.ModeDir | 0o755)
	sub := composefs.NewNode(composefs.ModeDir | 0o755)
	mustAdd(t, cycle, "sub", sub)
	mustAdd(t, sub, "loop", cycle)
	detached := composefs.NewNode(composefs.ModeDir | 0o755)
	orphanDir := composefs.NewNode(composefs.ModeDir | 0o755)
	f := composefs.NewNode(composefs.ModeRegular | 0o644)
	mustAdd(t, orphanDir, "f", f) // primary entry not in the tree
	mustAdd(t, detached, "link", f)
	for _, tc := range []struct {
		name string
		root *composefs.Node
		opts *composefs.WriteOptions
		want string
	}{
		{"file root", composefs.NewNode(composefs.ModeRegular), nil, "root must be a directory"},
		{"version", composefs.NewNode(composefs.ModeDir), &composefs.WriteOptions{MinVersion: 2, MaxVersion: 2}, "0 or 1"},
		{"content size", mk(&composefs.Node{Mode: composefs.ModeRegular, Size: 4, Content: []byte("abc")}), nil, "/x: inline content is 3 bytes but size is 4"},
		{"content max", mk(&composefs.Node{Mode: composefs.ModeRegular, Size: 5001, Content: make([]byte, 5001)}), nil, "at most 5000"},
		{"digest", mk(&composefs.Node{Mode: composefs.ModeRegular, Size: 100, Digest: []byte{1}}), nil, "digest is 1 bytes"},
		{"too big", mk(&composefs.Node{Mode: composefs.ModeRegular, Size: composefs.MaxFileSize + 1}), nil, "too big"},
		{"empty symlink", mk(&composefs.Node{Mode: composefs.ModeSymlink | 0o777}), nil, "empty target"},
		{"long symlink", mk(&composefs.Node{Mode: composefs.ModeSymlink | 0o777, Payload: strings.Repeat("t", 4096)}), nil, "at most 4095"},
		{"bad type", mk(&composefs.Node{Mode: 0o644}), nil, "invalid file type"},
		{"xattr name", mk(&composefs.Node{Mode: composefs.ModeFIFO, Xattrs: []composefs.Xattr{{Key: "", Value: nil}}}), nil, "must be 1..255"},
		{"xattr dup", mk(&composefs.Node{Mode: composefs.ModeFIFO, Xattrs: []composefs.Xattr{{Key: "user.a"}, {Key: "user.a"}}}), nil, "set twice"},
		{"xattr size", mk(&composefs.Node{Mode: composefs.ModeFIFO, Xattrs: []composefs.Xattr{{Key: "user.a", Value: make([]byte, 20000)}, {Key: "user.b", Value: make([]byte, 20000)}}}), nil, "exceed 32767"},
		{"cycle", cycle, nil, "root directory cannot be inside itself"},
		{"orphan link", detached, nil, "owns its node is not in the tree"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := composefs.Write(io.Discard, tc.root, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestObjectPath(t *testing.T) {
	d := make([]byte, 32)
	d[0], d[1], d[31] = 0x01, 0xab, 0xff
	if got := composefs.ObjectPath(d); got != "01/ab"+strings.Repeat("00", 29)+"ff" {
		t.Errorf("ObjectPath = %s", got)
	}
}

// BenchmarkWrite writes the CentOS Stream 9 developer tree (64k entries,
// SELinux labels on every file) from the composefs vectors.
func BenchmarkWrite(b *testing.B) {
	root := loadVectorTree(b, "cs9-x86_64-developer.dump.gz")
	b.ReportAllocs()
	var size int64
	for b.Loop() {
		res, err := composefs.Write(io.Discard, root, nil)
		if err != nil {
			b.Fatal(err)
		}
		size = res.Size
	}
	b.SetBytes(size)
}

// BenchmarkParse parses the same tree's dump.
func BenchmarkParse(b *testing.B) {
	text := readVector(b, "cs9-x86_64-developer.dump.gz")
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := dump.Parse(bytes.NewReader(text), nil); err != nil {
			b.Fatal(err)
		}
	}
}

// readVector returns the dump text of one of composefs 1.0.8's test vectors
// (testutil.ComposefsVectors), e.g. "cs9-x86_64-developer.dump.gz".
func readVector(tb testing.TB, name string) []byte {
	for _, v := range testutil.ComposefsVectors(tb) {
		if v.Name == name {
			return v.Dump(tb)
		}
	}
	tb.Fatalf("no composefs vector %s", name)
	return nil
}

func loadVectorTree(tb testing.TB, name string) *composefs.Node {
	root, err := dump.Parse(bytes.NewReader(readVector(tb, name)), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return root
}
