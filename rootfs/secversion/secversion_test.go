package secversion

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
)

// baseDump is a small tree in composefs dump format (one inline file, one
// external file, a subdirectory).
const baseDump = `/ 4096 40755 3 0 0 0 0.0 - - -
/etc 4096 40755 2 0 0 0 0.0 - - -
/etc/hostname 6 100644 1 0 0 0 0.0 - box\x0a\x00\x00 -
/usr 4096 40755 2 0 0 0 0.0 - - -
/usr/big 100000 100644 1 0 0 0 0.0 ab/cdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789 - abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789
`

// cfsrootLines is the format of the package documentation, written by hand
// in dump format: what mkcomposefs must turn into the same bytes as Add.
const cfsrootLines = `/.cfsroot 4096 40555 2 0 0 0 0.0 - - -
/.cfsroot/product 10 100444 1 0 0 0 0.0 - appliance\n -
/.cfsroot/security-version 2 100444 1 0 0 0 0.0 - 7\n -
`

func parse(t *testing.T, text string) *composefs.Node {
	t.Helper()
	root, err := dump.Parse(strings.NewReader(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func write(t *testing.T, root *composefs.Node) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := composefs.Write(&b, root, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func read(t *testing.T, img []byte) (Info, error) {
	t.Helper()
	return ReadAt(bytes.NewReader(img), int64(len(img)))
}

// TestAddMatchesMkcomposefs: the image Add makes is the one mkcomposefs
// 1.0.8 makes from the same tree with the documented files written by hand,
// and Read reads the version from mkcomposefs' image.
func TestAddMatchesMkcomposefs(t *testing.T) {
	mkcfs := testutil.ComposefsTool(t, "mkcomposefs")
	root := parse(t, baseDump)
	if err := Add(root, Info{Version: 7, Product: "appliance"}); err != nil {
		t.Fatal(err)
	}
	ours := write(t, root)

	dir := t.TempDir()
	in := filepath.Join(dir, "in.dump")
	// mkcomposefs wants parents before children; the root line first.
	lines := strings.SplitN(baseDump, "\n", 2)
	if err := os.WriteFile(in, []byte(lines[0]+"\n"+cfsrootLines+lines[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "ref.cfs")
	if b, err := exec.Command(mkcfs, "--from-file", in, out).CombinedOutput(); err != nil {
		t.Fatalf("mkcomposefs: %v\n%s", err, b)
	}
	ref, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours, ref) {
		t.Errorf("image with Add (%d bytes) differs from mkcomposefs' (%d bytes) for the documented format", len(ours), len(ref))
	}
	info, err := read(t, ref)
	if err != nil || info != (Info{Version: 7, Product: "appliance"}) {
		t.Errorf("Read(mkcomposefs image) = %+v, %v; want version 7, product appliance", info, err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, want := range []Info{
		{},
		{Version: 1},
		{Version: 3, Product: "appliance"},
		{Version: 1<<64 - 1, Product: strings.Repeat("p", MaxProductLen)},
		{Version: 0, Product: "debug-build_1.2+x@y~z"},
	} {
		root := parse(t, baseDump)
		if err := Add(root, want); err != nil {
			t.Fatal(err)
		}
		got, err := read(t, write(t, root))
		if err != nil || got != want {
			t.Errorf("Add(%+v) then Read = %+v, %v", want, got, err)
		}
	}
}

// TestNoVersion: an image without /.cfsroot is version 0, product "".
func TestNoVersion(t *testing.T) {
	got, err := read(t, write(t, parse(t, baseDump)))
	if err != nil || got != (Info{}) {
		t.Errorf("Read = %+v, %v; want the zero Info", got, err)
	}
}

func TestAddRefuses(t *testing.T) {
	root := parse(t, baseDump)
	if err := Add(root, Info{Product: "a/b"}); err == nil {
		t.Error("Add accepted product a/b")
	}
	if err := Add(root, Info{Product: strings.Repeat("p", MaxProductLen+1)}); err == nil {
		t.Error("Add accepted a 64-character product")
	}
	if err := Add(root, Info{Version: 1}); err != nil {
		t.Fatal(err)
	}
	if err := Add(root, Info{Version: 2}); err == nil || !strings.Contains(err.Error(), "already has /.cfsroot") {
		t.Errorf("Add on a tree with /.cfsroot: %v", err)
	}
}

// TestReadRefuses: whatever else a (signed) image holds at those paths is
// an error, never a guessed version.
func TestReadRefuses(t *testing.T) {
	for _, tc := range []struct{ name, lines, want string }{
		{"leading zero", "/.cfsroot/security-version 3 100444 1 0 0 0 0.0 - 03\\n -\n", "leading zero"},
		{"no newline", "/.cfsroot/security-version 1 100444 1 0 0 0 0.0 - 3 -\n", "one newline"},
		{"two newlines", "/.cfsroot/security-version 3 100444 1 0 0 0 0.0 - 3\\n\\n -\n", "decimal"},
		{"sign", "/.cfsroot/security-version 3 100444 1 0 0 0 0.0 - +3\\n -\n", "decimal"},
		{"overflow", "/.cfsroot/security-version 21 100444 1 0 0 0 0.0 - 18446744073709551616\\n -\n", "out of range"},
		{"empty", "/.cfsroot/security-version 0 100444 1 0 0 0 0.0 - - -\n", "one newline"},
		{"directory", "/.cfsroot/security-version 4096 40755 2 0 0 0 0.0 - - -\n", "not a regular file"},
		{"symlink", "/.cfsroot/security-version 2 120777 1 0 0 0 0.0 /etc/hostname - -\n", "not a regular file"},
		{"object", "/.cfsroot/security-version 2 100444 1 0 0 0 0.0 ab/cdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789 - abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\n", "stored as an object"},
		{"bad product", "/.cfsroot/product 4 100444 1 0 0 0 0.0 - a/b\\n -\n", "only A-Z"},
		{"empty product", "/.cfsroot/product 1 100444 1 0 0 0 0.0 - \\n -\n", "a name and one newline"},
		{"long product", "/.cfsroot/product 65 100444 1 0 0 0 0.0 - " + strings.Repeat("p", 64) + "\\n -\n", "at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := strings.SplitN(baseDump, "\n", 2)
			text := lines[0] + "\n/.cfsroot 4096 40555 2 0 0 0 0.0 - - -\n" + tc.lines + lines[1]
			_, err := read(t, write(t, parse(t, text)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Read: %v; want an error containing %q", err, tc.want)
			}
		})
	}
	// Not a composefs image at all.
	if _, err := ReadAt(bytes.NewReader(make([]byte, 8192)), 8192); err == nil {
		t.Error("Read accepted zeros")
	}
}

// TestLookupMissing: a path below a regular file is missing, not an error
// that would refuse the image.
func TestLookupMissing(t *testing.T) {
	root := parse(t, baseDump)
	img := write(t, root)
	info, err := read(t, img)
	if err != nil || info != (Info{}) {
		t.Fatal(info, err)
	}
	if _, err := readFileAt(img, "/etc/hostname/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lookup below a file: %v, want ErrNotExist", err)
	}
}

func FuzzReadAt(f *testing.F) {
	root, _ := dump.Parse(strings.NewReader(baseDump), nil)
	Add(root, Info{Version: 3, Product: "x"})
	var b bytes.Buffer
	composefs.Write(&b, root, nil)
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, img []byte) {
		info, err := ReadAt(bytes.NewReader(img), int64(len(img)))
		if err == nil && CheckProduct(info.Product) != nil {
			t.Errorf("Read returned invalid product %q", info.Product)
		}
	})
}

func readFileAt(img []byte, p string) ([]byte, error) {
	r, err := reader.New(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return nil, err
	}
	return readFile(r, p)
}
