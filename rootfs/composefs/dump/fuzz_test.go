package dump_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
)

// FuzzParse feeds arbitrary text to the dump parser. Properties: no panic
// and bounded work; a parsed tree can be written as an image (or is
// rejected with an error); its dump parses back to a tree with the same
// dump; without hard links that tree also writes the same image.
func FuzzParse(f *testing.F) {
	dir := vectorsDir(f)
	seeds, _ := filepath.Glob(filepath.Join(dir, "*.dump"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		if len(b) < 64<<10 {
			f.Add(b, false)
			f.Add(b, true)
		}
	}
	for _, s := range []string{
		"/ 0 40755 2 0 0 0 0.0 - - -\n",
		"/ 0 40755 2 0 0 0 -1.5 - - - user.a=b user.a=c trusted.overlay.x=\\x00\n/a 3 100644 1 0 0 0 0.0 - abc -\n/b 0 @100644 0 0 0 0 0.0 /a - -\n",
		"/ 0 40755 2 0 0 0 0.0 - - -\n/w 0 20000 1 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n/d/w 0 20644 1 0 0 0 0.0 - - - user.overlay.opaque=xx\n",
		"/ 0 40755 2 0 0 0 0.0 - - -\n/x 5 120777 1 0 0 0 0.0 a\\x20b\\n - -\n/y 99999 100644 1 0 0 0 0.0 ab/cd - 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, text []byte, strict bool) {
		root, err := dump.Parse(bytes.NewReader(text), &dump.Options{Strict: strict})
		if err != nil {
			return
		}
		var img bytes.Buffer
		_, werr := composefs.Write(&img, root, nil)
		var d1 bytes.Buffer
		if err := dump.Write(&d1, root); err != nil {
			t.Fatal(err)
		}
		root2, err := dump.Parse(bytes.NewReader(d1.Bytes()), &dump.Options{Strict: true})
		if err != nil && strings.Contains(err.Error(), "too many xattrs") {
			// Escaping can make the xattrs of a line longer than the
			// 64 KiB mkcomposefs accepts (composefs-info dump has the
			// same limitation).
			return
		}
		if err != nil {
			t.Fatalf("the dump of a parsed tree does not parse: %v\n%s", err, d1.Bytes())
		}
		var d2 bytes.Buffer
		if err := dump.Write(&d2, root2); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(d1.Bytes(), d2.Bytes()) {
			t.Fatalf("dump is not a fixpoint:\n%s\n---\n%s", d1.Bytes(), d2.Bytes())
		}
		if werr != nil || hasHardLinks(root) {
			return
		}
		var img2 bytes.Buffer
		if _, err := composefs.Write(&img2, root2, nil); err != nil {
			t.Fatalf("tree wrote an image, its dump's tree does not: %v", err)
		}
		if !bytes.Equal(img.Bytes(), img2.Bytes()) {
			t.Fatalf("image from the dump of the tree differs")
		}
	})
}

func hasHardLinks(n *composefs.Node) bool {
	for _, e := range n.Entries() {
		if e.Node.NumLinks() > 1 || (e.Node.IsDir() && hasHardLinks(e.Node)) {
			return true
		}
	}
	return false
}

// TestParseHostile checks that input far beyond the format's limits is
// rejected quickly with a line number, not read into memory without bound.
func TestParseHostile(t *testing.T) {
	root := "/ 0 40755 2 0 0 0 0.0 - - -\n"
	for _, tc := range []struct {
		name string
		r    io.Reader
		want string
	}{
		{"endless line", io.MultiReader(strings.NewReader(root+"/a 0 100644 1 0 0 0 0.0 - - - user.a="), endless{}), "line 2: line is longer than"},
		{"endless name", io.MultiReader(strings.NewReader(root+"/"), endless{}), "line 2: line is longer than"},
		{"deep path", strings.NewReader(root + "/" + strings.Repeat("a/", 100000) + "b 0 100644 1 0 0 0 0.0 - - -\n"), "line 2: /a/a/a"},
		{"huge content", strings.NewReader(root + "/a 6000 100644 1 0 0 0 0.0 - " + strings.Repeat("x", 6000) + " -\n"), "at most 5000"},
		{"long name", strings.NewReader(root + "/" + strings.Repeat("n", 256) + " 0 100644 1 0 0 0 0.0 - - -\n"), "256 bytes, at most 255"},
		{"many xattrs", strings.NewReader(root + "/a 0 100644 1 0 0 0 0.0 - - -" + strings.Repeat(" user.x=y", 8000) + "\n"), "too many xattrs"},
		{"xattr total", strings.NewReader(root + "/a 0 100644 1 0 0 0 0.0 - - - user.a=" + strings.Repeat("v", 20000) + " user.b=" + strings.Repeat("v", 20000) + "\n"), "exceed 32767"},
		{"big number", strings.NewReader(root + "/a 99999999999999999999 100644 1 0 0 0 0.0 - - -\n"), "out of range"},
		{"negative size", strings.NewReader(root + "/a -1 100644 1 0 0 0 0.0 - - -\n"), "not a decimal number"},
		{"nul", strings.NewReader(root + "/a\x00 0 100644 1 0 0 0 0.0 - - -\n"), "NUL byte"},
		{"bad escape", strings.NewReader(root + "/a\\q 0 100644 1 0 0 0 0.0 - - -\n"), `unsupported escape "\q"`},
		{"short hex", strings.NewReader(root + "/a\\x4 0 100644 1 0 0 0 0.0 - - -\n"), `needs two hex digits`},
		{"link cycle", strings.NewReader(root + "/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n"), "cycle"},
		{"link to dir", strings.NewReader(root + "/d 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /d - -\n"), "line 3: hard link target /d is a directory"},
		{"dangling link", strings.NewReader(root + "/a 0 @100644 1 0 0 0 0.0 /nope - -\n"), "line 2: hard link target /nope does not exist"},
		{"no root", strings.NewReader("/a 0 100644 1 0 0 0 0.0 - - -\n"), "line 1: /a: the first line must be the root"},
		{"two roots", strings.NewReader(root + root), "line 2: a second root"},
		{"empty", strings.NewReader(""), "no files"},
		{"missing parent", strings.NewReader(root + "/a/b 0 100644 1 0 0 0 0.0 - - -\n"), "line 2: /a/b: parent directory missing"},
		{"parent not dir", strings.NewReader(root + "/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 100644 1 0 0 0 0.0 - - -\n"), "line 3: /a/b: parent is not a directory"},
		{"duplicate", strings.NewReader(root + "/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n"), "line 3: /a: path already exists"},
		{"bad digest", strings.NewReader(root + "/a 100 100644 1 0 0 0 0.0 - - 12zz\n"), "DIGEST must be 64 hex digits"},
		{"bad mtime", strings.NewReader(root + "/a 0 100644 1 0 0 0 5 - - -\n"), "not SECONDS.NANOSECONDS"},
		{"rdev strict", strings.NewReader(root + "/a 0 100644 1 0 0 7 0.0 - - -\n"), "only devices"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dump.Parse(tc.r, &dump.Options{Strict: true})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// endless is an io.Reader of endless 'a's.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

// TestParseNonStrict checks what strict mode rejects and non-strict
// accepts, as mkcomposefs.
func TestParseNonStrict(t *testing.T) {
	for _, text := range []string{
		"/ 0 40755 2 0 0 0 0.0 - - -",                                            // no final newline
		"/ 0 40755 2 0 0 0 0.0 - - -\n/l 1 120777 1 0 0 0 0.0 target - -\n",      // symlink size
		"/ 0 40755 2 0 0 0 0.0 - - -\n/l 6 120777 1 0 0 0 0.0 target target -\n", // symlink content
		"/ 0 40755 2 0 0 0 0.0 - - -\n/f 0 100644 1 0 0 9 0.0 - - -\n",           // rdev on a file
	} {
		if _, err := dump.Parse(strings.NewReader(text), &dump.Options{Strict: true}); err == nil {
			t.Errorf("strict mode accepted %q", text)
		}
		if _, err := dump.Parse(strings.NewReader(text), nil); err != nil {
			t.Errorf("non-strict mode rejected %q: %v", text, err)
		}
	}
}

func TestWriteCycle(t *testing.T) {
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	sub := composefs.NewNode(composefs.ModeDir | 0o755)
	if err := root.Add("sub", sub); err != nil {
		t.Fatal(err)
	}
	if err := sub.Add("loop", root); err != nil {
		t.Fatal(err)
	}
	if err := dump.Write(io.Discard, root); err == nil || !strings.Contains(err.Error(), "/sub/loop is the root directory again") {
		t.Errorf("got %v", err)
	}
}
