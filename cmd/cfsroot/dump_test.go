package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// composefsTool returns the reference composefs 1.0.8 tool (mkcomposefs or
// composefs-info) fetched by tools/fetch-mkcomposefs.sh.
func composefsTool(t *testing.T, name string) string {
	return testutil.ComposefsTool(t, name)
}

// TestDumpVectors: `cfsroot dump` of mkcomposefs' image of every upstream
// vector prints exactly what composefs-info dump prints.
func TestDumpVectors(t *testing.T) {
	for _, v := range testutil.ComposefsVectors(t) {
		t.Run(v.Base, func(t *testing.T) {
			want := v.CanonicalDump(t)
			var out, errb bytes.Buffer
			if err := run([]string{"dump", v.ReferenceImage(t)}, &out, &errb); err != nil {
				t.Fatalf("dump: %v\n%s", err, errb.String())
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("dump differs from composefs-info dump at line %d", firstDiffLine(out.Bytes(), want))
			}
		})
	}
}

func firstDiffLine(a, b []byte) int {
	al, bl := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := range al {
		if i >= len(bl) || !bytes.Equal(al[i], bl[i]) {
			return i + 1
		}
	}
	return len(al) + 1
}

// makeTestTree builds a directory with every kind of entry mkcomposefs
// handles in directory mode: inline and external files (with the same
// content twice, sharing an object), empty files, symlinks, a subdirectory,
// user and escaped trusted.overlay xattrs, a device and a fifo.
func makeTestTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("inline", []byte("small file\n"))
	write("empty", nil)
	write("usr/bin/tool", bytes.Repeat([]byte("#!/bin/sh\necho tool\n"), 20))
	write("usr/lib/data", bytes.Repeat([]byte{0, 1, 2, 3, 0xff}, 3000))
	write("usr/lib/copy", bytes.Repeat([]byte{0, 1, 2, 3, 0xff}, 3000))
	write("etc/big", bytes.Repeat([]byte("x"), 65))
	if err := os.Chmod(filepath.Join(dir, "usr/bin/tool"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := setXattr(filepath.Join(dir, "etc/big"), "user.note", []byte("a=b c")); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := setXattr(filepath.Join(dir, "etc"), "trusted.overlay.opaque", []byte("y")); err != nil {
			t.Fatal(err)
		}
		if err := mknod(filepath.Join(dir, "null"), 0o20666, 1<<8|3); err != nil {
			t.Fatal(err)
		}
		if err := mknod(filepath.Join(dir, "gone"), 0o20000, 0); err != nil { // overlay whiteout
			t.Fatal(err)
		}
	} else if testutil.Strict() {
		// Without root the tree lacks these; only a non-strict run may test less.
		testutil.RequireRoot(t, "the test tree's trusted.* xattr, device node and whiteout")
	}
	if err := mknod(filepath.Join(dir, "fifo"), 0o10644, 0); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDumpAndObjectsMatchComposefsInfo: on an image mkcomposefs builds from
// a test tree (with fs-verity digests, object paths, escaped xattrs and a
// whiteout), `cfsroot dump` and `cfsroot objects` print what composefs-info
// prints.
func TestDumpAndObjectsMatchComposefsInfo(t *testing.T) {
	mk, info := composefsTool(t, "mkcomposefs"), composefsTool(t, "composefs-info")
	tree := makeTestTree(t)
	img := filepath.Join(t.TempDir(), "test.cfs")
	testutil.Run(t, mk, tree, img)
	for _, cmd := range []string{"dump", "objects"} {
		want := testutil.Run(t, info, cmd, img)
		var out, errb bytes.Buffer
		if err := run([]string{cmd, img}, &out, &errb); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, errb.String())
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("cfsroot %s differs from composefs-info %s:\n%s\nwant:\n%s", cmd, cmd, out.String(), want)
		}
		if cmd == "objects" && strings.Count(out.String(), "\n") != 3 {
			t.Errorf("objects: want 3 distinct objects (tool, data=copy, big), got:\n%s", out.String())
		}
	}
}

// TestObjectsVectors: `cfsroot objects` on the CentOS vector lists exactly the
// distinct payloads of regular files in its canonical dump (written by
// composefs-info), sorted.
func TestObjectsVectors(t *testing.T) {
	v := testutil.ComposefsVectorNamed(t, "cs9-x86_64-minimal")
	dumpText := v.CanonicalDump(t)
	seen := map[string]bool{}
	for _, line := range strings.Split(string(dumpText), "\n") {
		f := strings.Split(line, " ")
		if len(f) > 8 && strings.HasPrefix(f[2], "10") && f[8] != "-" {
			seen[f[8]] = true
		}
	}
	if len(seen) < 1000 {
		t.Fatalf("only %d payloads in the canonical dump", len(seen))
	}
	var out, errb bytes.Buffer
	if err := run([]string{"objects", v.ReferenceImage(t)}, &out, &errb); err != nil {
		t.Fatalf("objects: %v\n%s", err, errb.String())
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != len(seen) {
		t.Errorf("%d objects listed, the dump has %d distinct payloads", len(lines), len(seen))
	}
	for i, l := range lines {
		if !seen[l] {
			t.Errorf("object %q is not a payload in the dump", l)
		}
		if i > 0 && lines[i-1] >= l {
			t.Errorf("objects not sorted/unique at %q", l)
		}
	}
}

func TestDumpErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run([]string{"dump"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "no IMAGE") {
		t.Errorf("dump without image: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.cfs")
	if err := os.WriteFile(bad, bytes.Repeat([]byte{0xaa}, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run([]string{"dump", bad}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "not a composefs image") || !strings.Contains(err.Error(), bad) {
		t.Errorf("dump of garbage: %v", err)
	}
}
