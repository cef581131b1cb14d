package composefs_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// The oracle of these tests is mkcomposefs 1.0.8 itself (Debian sid's,
// fetched by tools/fetch-mkcomposefs.sh): every image FromDir+Write makes
// from a directory must be byte for byte the one mkcomposefs makes.

func oracle(t *testing.T, tool string) string {
	return testutil.ComposefsTool(t, tool)
}

func requireRoot(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t, "the directory-mode tests (devices, trusted.* xattrs, chown)")
}

// tb builds a test tree.
type tb struct {
	t      *testing.T
	root   string
	mtimes map[string]unix.Timespec
}

func (b *tb) p(rel string) string { return filepath.Join(b.root, rel) }

func (b *tb) check(err error) {
	b.t.Helper()
	if err != nil {
		b.t.Fatal(err)
	}
}

func (b *tb) dir(rel string, mode os.FileMode) {
	b.check(os.Mkdir(b.p(rel), mode))
	b.check(os.Chmod(b.p(rel), mode))
}

func (b *tb) file(rel string, data []byte, mode os.FileMode) {
	b.check(os.WriteFile(b.p(rel), data, mode))
	b.check(os.Chmod(b.p(rel), mode))
}

func (b *tb) xattr(rel, key string, value []byte) {
	b.check(unix.Lsetxattr(b.p(rel), key, value, 0))
}

func (b *tb) mknod(rel string, mode uint32, major, minor uint32) {
	b.check(unix.Mknod(b.p(rel), mode, int(unix.Mkdev(major, minor))))
}

func (b *tb) mtime(rel string, sec int64, nsec int64) {
	b.mtimes[rel] = unix.Timespec{Sec: sec, Nsec: nsec}
}

// finish sets the recorded mtimes, deepest paths first so that setting a
// directory's does not get undone.
func (b *tb) finish() {
	var paths []string
	for p := range b.mtimes {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return strings.Count(paths[i], "/") > strings.Count(paths[j], "/") })
	for _, rel := range paths {
		ts := b.mtimes[rel]
		b.check(unix.UtimesNanoAt(unix.AT_FDCWD, b.p(rel), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// posixACL encodes a minimal access ACL (user::rw-, group::r--, other::r--)
// in the kernel's xattr format.
func posixACL() []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 2)
	for _, e := range []struct{ tag, perm uint16 }{{0x01, 6}, {0x04, 4}, {0x20, 4}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, 0xFFFFFFFF)
	}
	return b
}

// makeTree builds a tree with every file type and the layout corner cases.
func makeTree(t *testing.T) string {
	b := &tb{t: t, root: filepath.Join(t.TempDir(), "tree"), mtimes: map[string]unix.Timespec{}}
	b.check(os.Mkdir(b.root, 0o755))
	b.mtime(".", 1700000000, 123456789)

	// Regular files around the inline/external boundary and block sizes.
	for _, n := range []int{0, 1, 63, 64, 65, 2048, 4095, 4096, 4097, 100000} {
		name := fmt.Sprintf("file%d", n)
		b.file(name, pattern(n, byte(n)), 0o644)
		b.mtime(name, 1700000000, 123456789)
	}
	b.file("same-content-a", pattern(5000, 1), 0o600)
	b.file("same-content-b", pattern(5000, 1), 0o755)
	b.file("setuid", pattern(70, 2), 0o4755)
	b.file("-dash", []byte("x"), 0o644)    // sorts before "."
	b.file("!bang", pattern(80, 3), 0o644) // sorts before "."
	b.file("name with spaces\tand\nnewline=eq", pattern(66, 4), 0o644)
	b.file(strings.Repeat("L", 255), []byte("long name"), 0o644)
	b.file("ab", []byte("hides whiteout ab"), 0o644) // root entries named like 00..ff
	b.dir("00", 0o755)

	// Symlinks: short, long (own data block), relative and absolute.
	b.check(os.Symlink("file65", b.p("link")))
	b.check(os.Symlink("/"+strings.Repeat("t", 4000), b.p("link-long")))
	b.check(os.Symlink(strings.Repeat("m/", 1000), b.p("link-2000")))
	b.check(os.Symlink("../x", b.p("00/up")))

	// Devices, fifo, socket, whiteouts.
	b.mknod("chr", unix.S_IFCHR|0o640, 1, 3)
	b.mknod("blk", unix.S_IFBLK|0o600, 7, 0)
	b.mknod("chr-big", unix.S_IFCHR|0o600, 4095, 1048575)
	b.mknod("fifo", unix.S_IFIFO|0o644, 0, 0)
	b.mknod("sock", unix.S_IFSOCK|0o755, 0, 0)
	b.mknod("whiteout", unix.S_IFCHR|0o600, 0, 0)
	b.dir("wdir", 0o755)
	b.mknod("wdir/w1", unix.S_IFCHR|0o000, 0, 0)
	b.mknod("wdir/w2", unix.S_IFCHR|0o644, 0, 0)
	b.xattr("wdir", "user.overlay.opaque", []byte("x")) // collides with a v1 marker

	// xattrs: plain, escaped overlay ones, shared, ACL, big values.
	b.xattr("file65", "user.foo", []byte("bar"))
	b.xattr("file65", "trusted.overlay.redirect", []byte("/foo"))
	b.xattr("file65", "trusted.overlay.metacopy", nil)
	b.xattr("file64", "user.foo", []byte("bar"))
	b.xattr("file4096", "user.foo", []byte("bar"))
	b.xattr("file4096", "security.test", []byte("label"))
	b.xattr("file1", "trusted.overlay.opaque", []byte("y"))
	b.xattr("00", "trusted.overlay.opaque", []byte("y"))
	b.xattr("00", "user.big", pattern(3000, 9))
	b.xattr("file0", "system.posix_acl_access", posixACL())
	b.xattr(".", "user.rootattr", []byte("r"))
	b.xattr("link", "trusted.sym", []byte("on a symlink"))
	for i := 0; i < 130; i++ { // more shared xattrs than an inode may reference
		key := fmt.Sprintf("user.s%03d", i)
		b.xattr("file100000", key, []byte("v"))
		b.xattr("file4097", key, []byte("v"))
	}

	// A directory spanning several blocks, and a deep one.
	b.dir("big", 0o750)
	for i := 0; i < 400; i++ {
		b.file(fmt.Sprintf("big/entry-%04d-%s", i, strings.Repeat("n", i%40)), nil, 0o644)
	}
	b.dir("big/sub", 0o700)
	b.file("big/sub/f", pattern(200, 5), 0o644)
	b.check(os.Link(b.p("file65"), b.p("big/hardlink-to-file65")))
	p := "deep"
	for i := 0; i < 12; i++ {
		b.dir(p, 0o755)
		p += "/d"
	}

	// Owners beyond 16 bits force extended inodes.
	b.check(os.Lchown(b.p("file2048"), 70000, 70001))
	b.check(os.Lchown(b.p("link"), 100000, 5))
	b.check(os.Lchown(b.p("big"), 1, 65536))

	// Mixed mtimes: most equal to the minimum, some newer, one with
	// nanoseconds only, one before 1970.
	b.mtime("file4095", 1700000001, 0)
	b.mtime("file4096", 1700000000, 123456790)
	b.mtime("link", 1800000000, 5)
	b.mtime("big", 1700000000, 123456789)
	b.mtime("chr", 1600000000, 1) // the minimum: most inodes become extended
	b.finish()
	return b.root
}

type variant struct {
	name string
	args []string // mkcomposefs flags
	opts composefs.BuildOptions
	wopt composefs.WriteOptions
}

var variants = []variant{
	{name: "default", wopt: composefs.WriteOptions{MaxVersion: 1}},
	{name: "use-epoch", args: []string{"--use-epoch"}, opts: composefs.BuildOptions{UseEpoch: true}, wopt: composefs.WriteOptions{MaxVersion: 1}},
	{name: "skip-xattrs", args: []string{"--skip-xattrs"}, opts: composefs.BuildOptions{SkipXattrs: true}, wopt: composefs.WriteOptions{MaxVersion: 1}},
	{name: "user-xattrs", args: []string{"--user-xattrs"}, opts: composefs.BuildOptions{UserXattrs: true}, wopt: composefs.WriteOptions{MaxVersion: 1}},
	{name: "skip-devices", args: []string{"--skip-devices"}, opts: composefs.BuildOptions{SkipDevices: true}, wopt: composefs.WriteOptions{MaxVersion: 1}},
	{name: "v0", args: []string{"--min-version=0", "--max-version=0"}, wopt: composefs.WriteOptions{}},
	{name: "v1", args: []string{"--min-version=1", "--max-version=1"}, wopt: composefs.WriteOptions{MinVersion: 1, MaxVersion: 1}},
}

func buildImage(t *testing.T, dir string, opts composefs.BuildOptions, wopt composefs.WriteOptions) ([]byte, *composefs.Node, composefs.WriteResult) {
	t.Helper()
	root, err := composefs.FromDir(dir, &opts)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res, err := composefs.Write(&buf, root, &wopt)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), root, res
}

func TestFromDirMatchesMkcomposefs(t *testing.T) {
	requireRoot(t)
	mkcfs := oracle(t, "mkcomposefs")
	dir := makeTree(t)
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "ref.cfs")
			args := append(append([]string{"--print-digest"}, v.args...), dir, out)
			refDigest := strings.TrimSpace(string(testutil.Run(t, mkcfs, args...)))
			ref, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			img, _, res := buildImage(t, dir, v.opts, v.wopt)
			if !bytes.Equal(img, ref) {
				t.Fatalf("image differs from mkcomposefs' (%d vs %d bytes, first difference at %d)", len(img), len(ref), firstDiff(img, ref))
			}
			if got := fmt.Sprintf("%x", res.Digest.Sum); got != refDigest {
				t.Errorf("digest %s, mkcomposefs --print-digest says %s", got, refDigest)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestRoundTrip: directory → image → composefs-info dump → dump.Parse →
// image gives the same bytes, and dump.Write of the parsed tree prints the
// dump it was parsed from.
func TestRoundTrip(t *testing.T) {
	requireRoot(t)
	info := oracle(t, "composefs-info")
	dir := makeTree(t)
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			img, _, _ := buildImage(t, dir, v.opts, v.wopt)
			p := filepath.Join(t.TempDir(), "img.cfs")
			if err := os.WriteFile(p, img, 0o644); err != nil {
				t.Fatal(err)
			}
			text := testutil.Run(t, info, "dump", p)
			root, err := dump.Parse(bytes.NewReader(text), &dump.Options{Strict: true})
			if err != nil {
				t.Fatal(err)
			}
			var again bytes.Buffer
			if _, err := composefs.Write(&again, root, &v.wopt); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Bytes(), img) {
				t.Errorf("image from the dump differs (first difference at %d)", firstDiff(again.Bytes(), img))
			}
			var d bytes.Buffer
			if err := dump.Write(&d, root); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(d.Bytes(), text) {
				t.Errorf("dump.Write differs from composefs-info dump")
			}
		})
	}
}

// TestStoreMatchesMkcomposefs compares --digest-store with mkcomposefs':
// the same object names and contents, the image unchanged by the store, a
// second run adding nothing, and no temporary files left.
func TestStoreMatchesMkcomposefs(t *testing.T) {
	requireRoot(t)
	mkcfs := oracle(t, "mkcomposefs")
	dir := makeTree(t)
	tmp := t.TempDir()
	refStore := filepath.Join(tmp, "ref-objects")
	testutil.Run(t, mkcfs, "--digest-store="+refStore, dir, filepath.Join(tmp, "ref.cfs"))
	ref, err := os.ReadFile(filepath.Join(tmp, "ref.cfs"))
	if err != nil {
		t.Fatal(err)
	}

	store, err := composefs.OpenStore(filepath.Join(tmp, "objects"))
	if err != nil {
		t.Fatal(err)
	}
	for run := 0; run < 2; run++ {
		img, _, _ := buildImage(t, dir, composefs.BuildOptions{Store: store, Threads: 2}, *composefs.DefaultWriteOptions())
		if !bytes.Equal(img, ref) {
			t.Fatalf("run %d: image with a store differs from mkcomposefs'", run)
		}
	}
	want := listStore(t, refStore)
	got := listStore(t, store.Dir())
	if len(want) == 0 {
		t.Fatal("mkcomposefs stored nothing")
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("store has\n%s\nmkcomposefs' has\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, rel := range want {
		a, _ := os.ReadFile(filepath.Join(refStore, rel))
		b, _ := os.ReadFile(filepath.Join(store.Dir(), rel))
		if !bytes.Equal(a, b) {
			t.Errorf("object %s differs", rel)
		}
		fi, err := os.Stat(filepath.Join(store.Dir(), rel))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("object %s has mode %v, want 0644", rel, fi.Mode())
		}
		d, err := verity.DigestFile(filepath.Join(store.Dir(), rel), verity.Params{})
		if err != nil {
			t.Fatal(err)
		}
		if composefs.ObjectPath(d.Sum) != rel {
			t.Errorf("object %s has fs-verity digest %x", rel, d.Sum)
		}
	}
}

// listStore lists a store's files (relative paths), failing on leftovers.
func listStore(t *testing.T, dir string) []string {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	for _, p := range out {
		if strings.HasPrefix(filepath.Base(p), ".tmp") {
			t.Errorf("temporary file left in store: %s", p)
		}
	}
	return out
}

// TestStoreInterrupted: an object whose copy fails never appears under its
// final name.
func TestStoreInterrupted(t *testing.T) {
	store, err := composefs.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := make([]byte, composefs.DigestSize)
	d[0] = 0xab
	_, err = store.AddFile(filepath.Join(t.TempDir(), "missing"), d)
	if err == nil {
		t.Fatal("AddFile of a missing file succeeded")
	}
	if _, err := os.Stat(store.Path(d)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("object exists after a failed copy: %v", err)
	}
	listStore(t, store.Dir())
}

func TestFromDirErrors(t *testing.T) {
	if _, err := composefs.FromDir(filepath.Join(t.TempDir(), "nope"), nil); err == nil {
		t.Error("FromDir of a missing directory succeeded")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := composefs.FromDir(f, nil); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("FromDir of a file: %v", err)
	}
	if _, err := composefs.FromDir(t.TempDir(), &composefs.BuildOptions{SkipXattrs: true, UserXattrs: true}); err == nil {
		t.Error("SkipXattrs with UserXattrs accepted")
	}
}
