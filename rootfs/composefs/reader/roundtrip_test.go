package reader

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
)

// TestRoundTripVectors: reading a reference image into a tree and writing
// the tree again gives the same bytes, so the reader loses nothing the
// writer (checked byte for byte against mkcomposefs elsewhere) needs.
func TestRoundTripVectors(t *testing.T) {
	for _, p := range vectorImages(t) {
		name := filepath.Base(p)
		t.Run(name, func(t *testing.T) {
			roundTrip(t, readVector(t, name))
		})
	}
}

func roundTrip(t *testing.T, data []byte) {
	t.Helper()
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	root, err := img.Tree()
	if err != nil {
		t.Fatal(err)
	}
	v := int(img.FormatVersion())
	var out bytes.Buffer
	if _, err := composefs.Write(&out, root, &composefs.WriteOptions{MinVersion: v, MaxVersion: v}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		i := 0
		for i < len(data) && i < out.Len() && data[i] == out.Bytes()[i] {
			i++
		}
		t.Errorf("rewritten image differs at byte %d (sizes %d, %d)", i, out.Len(), len(data))
	}
}

// testTree builds, with the composefs API, a tree that exercises what the
// vectors do not: fs-verity digests, hard links made by the API, a directory
// spanning several blocks, long names and symlink targets, uid/gid > 65535,
// mixed mtimes, escaped trusted.overlay xattrs and a whiteout below the root.
func testTree(t *testing.T) *composefs.Node {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	node := func(mode uint32, sec int64) *composefs.Node {
		n := composefs.NewNode(mode)
		n.Mtime = composefs.Time{Sec: sec, Nsec: 5}
		return n
	}
	root := node(composefs.ModeDir|0o755, 1700000000)
	usr := node(composefs.ModeDir|0o755, 1700000000)
	must(root.Add("usr", usr))
	digest := bytes.Repeat([]byte{0xab}, 32)
	exe := node(composefs.ModeRegular|0o755, 1700000001)
	exe.Size, exe.Payload, exe.Digest = 123456, composefs.ObjectPath(digest), digest
	// vfs_cap_data revision 2, effective, CAP_NET_BIND_SERVICE permitted.
	exe.Xattrs = []composefs.Xattr{{Key: "security.capability", Value: []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}}
	must(usr.Add("tool", exe))
	must(usr.Add("tool-link", exe)) // hard link
	exe.Nlink = 2
	in := node(composefs.ModeRegular|0o644, 1700000000)
	in.Content = []byte("inline data\n")
	in.Size = uint64(len(in.Content))
	must(usr.Add("inline", in))
	big := node(composefs.ModeDir|0o700, 1600000000)
	big.UID, big.GID = 70000, 80000
	must(root.Add("big", big))
	for i := 0; i < 300; i++ {
		f := node(composefs.ModeRegular|0o600, 1700000000+int64(i%3))
		name := fmt.Sprintf("%03d-%s", i, strings.Repeat("n", 100+i%150))
		f.Xattrs = []composefs.Xattr{{Key: "user.i", Value: []byte(fmt.Sprint(i % 4))}}
		must(big.Add(name, f))
	}
	l := node(composefs.ModeSymlink|0o777, 1700000000)
	l.Payload = "/" + strings.Repeat("t/", 1000)
	must(root.Add("long-link", l))
	esc := node(composefs.ModeDir|0o755, 1700000000)
	esc.Xattrs = []composefs.Xattr{{Key: "trusted.overlay.opaque", Value: []byte("y")}, {Key: "user.overlay.x", Value: []byte("1")}}
	must(root.Add("opaque", esc))
	wo := node(composefs.ModeCharDev|0o600, 1700000000)
	must(esc.Add("whiteout", wo))
	dev := node(composefs.ModeBlockDev|0o600, 1700000000)
	dev.Rdev = 8<<8 | 1
	must(root.Add("sda1", dev))
	return root
}

// writeTestImage writes testTree to a file and returns its path and bytes.
func writeTestImage(t *testing.T) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	if _, err := composefs.Write(&buf, testTree(t), nil); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "test.cfs")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, buf.Bytes()
}

// TestWrittenImage reads an image the Go writer made from testTree and checks
// it against the tree, go-erofs, and the round trip.
func TestWrittenImage(t *testing.T) {
	_, data := writeTestImage(t)
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := walkAll(img)
	if err != nil {
		t.Fatal(err)
	}
	tool := entryByPath(entries, "/usr/tool")
	if tool == nil || !tool.IsExternal() || tool.Digest.String() != "sha256:"+strings.Repeat("ab", 32) ||
		tool.Payload != "ab/"+strings.Repeat("ab", 31) || tool.Size != 123456 {
		t.Errorf("/usr/tool = %+v", tool)
	}
	if l := entryByPath(entries, "/usr/tool-link"); l == nil || l.HardlinkTo != "/usr/tool" || l.Nid != tool.Nid {
		t.Errorf("/usr/tool-link = %+v", l)
	}
	if d := entryByPath(entries, "/big"); d == nil || d.UID != 70000 || d.GID != 80000 || d.Size <= 4096 {
		t.Errorf("/big = %+v", d)
	}
	if l := entryByPath(entries, "/long-link"); l == nil || len(l.Symlink) != 2001 {
		t.Errorf("/long-link = %+v", l)
	}
	op := entryByPath(entries, "/opaque")
	if op == nil || len(op.Xattrs) < 2 || op.Xattrs[0].Name != "trusted.overlay.opaque" {
		t.Errorf("/opaque xattrs = %+v", op)
	}
	if w := entryByPath(entries, "/opaque/whiteout"); w == nil || w.Mode != 0o20600 || w.RawMode != 0o100600 {
		t.Errorf("/opaque/whiteout = %+v", w)
	}
	if n := len(entries); n != 1+1+3+1+300+1+1+1+1 {
		t.Errorf("%d entries", n)
	}
	checkAgainstGoErofs(t, "test.cfs", data)
	roundTrip(t, data)
}

// TestWrittenImageMount mounts the Go writer's image with the kernel and
// compares it with the reader.
func TestWrittenImageMount(t *testing.T) {
	p, _ := writeTestImage(t)
	compareWithMount(t, p)
}

// TestPathTooLong: paths longer than PATH_MAX are refused (libcomposefs
// would print them; the kernel cannot resolve them in one lookup).
func TestPathTooLong(t *testing.T) {
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	d := root
	for i := 0; i < 20; i++ {
		sub := composefs.NewNode(composefs.ModeDir | 0o755)
		if err := d.Add(strings.Repeat(fmt.Sprint(i%10), 250), sub); err != nil {
			t.Fatal(err)
		}
		d = sub
	}
	var buf bytes.Buffer
	if _, err := composefs.Write(&buf, root, nil); err != nil {
		t.Fatal(err)
	}
	img, err := New(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = walkAll(img)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "longer than 4095 bytes") {
		t.Errorf("deep tree: %v", err)
	}
}
