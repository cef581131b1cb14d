package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
)

// vector returns one of composefs 1.0.8's own test vectors (see
// testutil.ComposefsVectors).
func vector(t *testing.T, base string) testutil.ComposefsVector {
	return testutil.ComposefsVectorNamed(t, base)
}

// fsverityDigest is fsverity-utils' digest of a file, in hex.
func fsverityDigest(t *testing.T, path string) string {
	t.Helper()
	out := strings.TrimSpace(string(testutil.Run(t, testutil.RequireTool(t, "fsverity"), "digest", "--compact", path)))
	return strings.TrimPrefix(out, "sha256:")
}

// mkcomposefsOracle is Debian sid's mkcomposefs 1.0.8 (tools/fetch-mkcomposefs.sh).
func mkcomposefsOracle(t *testing.T) string {
	return testutil.ComposefsTool(t, "mkcomposefs")
}

func runCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(args, &out, &errb)
	return out.String(), errb.String(), err
}

// TestMkimageFromFileVectors: mkimage --from-file builds upstream's vectors
// byte for byte as mkcomposefs 1.0.8 does, and --print-digest prints the
// digest fsverity-utils computes for that image.
func TestMkimageFromFileVectors(t *testing.T) {
	t.Setenv("CFS_PARSE_STRICT", "1")
	for _, tc := range []struct {
		name, version string
	}{
		{"special", "0"},
		{"special_v1", "1"},
		{"bigfile", ""},
		{"honggfuzz-long-symlink", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := vector(t, tc.name)
			ref := v.ReferenceImage(t)
			out := filepath.Join(t.TempDir(), "img.cfs")
			args := []string{"mkimage", "--from-file", "--print-digest"}
			if tc.version != "" {
				args = append(args, "--min-version", tc.version, "--max-version="+tc.version)
			}
			args = append(args, v.Path, out)
			stdout, stderr, err := runCmd(t, args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			if want := fsverityDigest(t, ref); strings.TrimSpace(stdout) != want {
				t.Errorf("--print-digest printed %q, fsverity digest of mkcomposefs' image is %s", stdout, want)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(ref)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Error("image differs from mkcomposefs' image")
			}
		})
	}
}

// TestMkimageVersionFlags runs mkimage and mkcomposefs with the same
// version flags on a dump with a whiteout and compares the images.
func TestMkimageVersionFlags(t *testing.T) {
	mkcfs := mkcomposefsOracle(t)
	src := vector(t, "special").Path
	for _, flags := range [][]string{
		nil,
		{"--min-version=0"},
		{"--min-version=1"},
		{"--max-version=0"},
		{"--max-version=1"},
		{"--min-version=1", "--max-version=0"},
		{"--min-version=0", "--max-version=1"},
	} {
		t.Run(strings.Join(flags, " "), func(t *testing.T) {
			dir := t.TempDir()
			ref := filepath.Join(dir, "ref.cfs")
			testutil.Run(t, mkcfs, append(append([]string{"--from-file"}, flags...), src, ref)...)
			out := filepath.Join(dir, "out.cfs")
			if _, stderr, err := runCmd(t, append(append([]string{"mkimage", "--from-file"}, flags...), src, out)...); err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			a, _ := os.ReadFile(ref)
			b, _ := os.ReadFile(out)
			if len(a) == 0 || !bytes.Equal(a, b) {
				t.Errorf("image differs from mkcomposefs' (format version %d vs %d)", b[12], a[12])
			}
		})
	}
}

func TestMkimageStdinAndStdout(t *testing.T) {
	v := vector(t, "special_v1")
	f, err := os.Open(v.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = old }()
	stdout, stderr, err := runCmd(t, "mkimage", "--from-file", "-", "-")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	want, err := os.ReadFile(v.ReferenceImage(t))
	if err != nil {
		t.Fatal(err)
	}
	if stdout != string(want) {
		t.Error("image on stdout differs from mkcomposefs' image of special_v1.dump")
	}
}

// TestMkimagePrintDigestOnly: --print-digest-only prints the digest
// fsverity-utils computes for mkcomposefs' image and writes nothing: the
// working directory (where a relative write would land) holds only the
// source afterwards.
func TestMkimagePrintDigestOnly(t *testing.T) {
	v := vector(t, "longlink")
	dir := t.TempDir()
	src, err := os.ReadFile(v.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "longlink.dump"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	want := fsverityDigest(t, v.ReferenceImage(t))
	t.Chdir(dir)
	stdout, stderr, err := runCmd(t, "mkimage", "--print-digest-only", "--from-file", "longlink.dump")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if strings.TrimSpace(stdout) != want {
		t.Errorf("printed %q, fsverity digest of mkcomposefs' image is %s", stdout, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("files written beside the source: %v", ents)
	}
}

func TestMkimageUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{},
		{dir},
		{dir, "a", "b"},
		{"--print-digest-only", dir, "out"},
		{"--threads", "0", dir, "out"},
		{"--min-version", "2", dir, "out"},
		{"--max-version=-1", dir, "out"},
		{"--skip-xattrs", "--user-xattrs", dir, "out"},
		{"--no-such-flag", dir, "out"},
	} {
		_, _, err := runCmd(t, append([]string{"mkimage"}, args...)...)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("mkimage %v: got %v, want a usage error", args, err)
		}
	}
}

// TestMkimageBadDump: a dump error names the file and line, and leaves no
// image and no temporary file behind.
func TestMkimageBadDump(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "bad.dump")
	os.WriteFile(src, []byte("/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - - user.x\n"), 0o644)
	out := filepath.Join(dir, "out", "img.cfs")
	os.Mkdir(filepath.Dir(out), 0o755)
	_, _, err := runCmd(t, "mkimage", "--from-file", src, out)
	if err == nil || !strings.Contains(err.Error(), "bad.dump: line 2:") || !strings.Contains(err.Error(), `has no "="`) {
		t.Fatalf("error %v does not name the file, line and problem", err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	// An existing image is not touched by a failed run.
	os.WriteFile(out, []byte("old"), 0o644)
	runCmd(t, "mkimage", "--from-file", src, out)
	if b, _ := os.ReadFile(out); string(b) != "old" {
		t.Error("failed run changed the existing image")
	}
}

// TestMkimageDirectory compares directory mode, with an object store and
// flags between the positional arguments, with mkcomposefs.
func TestMkimageDirectory(t *testing.T) {
	mkcfs := mkcomposefsOracle(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	os.MkdirAll(filepath.Join(src, "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(src, "usr", "bin", "tool"), bytes.Repeat([]byte("tool\n"), 1000), 0o755)
	os.WriteFile(filepath.Join(src, "usr", "bin", "copy"), bytes.Repeat([]byte("tool\n"), 1000), 0o755)
	os.WriteFile(filepath.Join(src, "small"), []byte("inline"), 0o644)
	os.Symlink("usr/bin/tool", filepath.Join(src, "link"))

	testutil.Run(t, mkcfs, "--use-epoch", "--digest-store="+filepath.Join(tmp, "ref-store"), src, filepath.Join(tmp, "ref.cfs"))
	refDigest := strings.TrimSpace(string(testutil.Run(t, mkcfs, "--use-epoch", "--print-digest-only", src)))
	stdout, stderr, err := runCmd(t, "mkimage", "--digest-store", filepath.Join(tmp, "store"), src, "--use-epoch", "--threads=2", filepath.Join(tmp, "out.cfs"), "--print-digest")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if strings.TrimSpace(stdout) != refDigest {
		t.Errorf("digest %q, mkcomposefs --print-digest-only says %s", stdout, refDigest)
	}
	a, _ := os.ReadFile(filepath.Join(tmp, "ref.cfs"))
	b, _ := os.ReadFile(filepath.Join(tmp, "out.cfs"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Error("image differs from mkcomposefs'")
	}
	if l1, l2 := listFiles(t, filepath.Join(tmp, "ref-store")), listFiles(t, filepath.Join(tmp, "store")); l1 != l2 || l1 == "" {
		t.Errorf("store has %q, mkcomposefs' has %q", l2, l1)
	}
}

func listFiles(t *testing.T, dir string) string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestMkimageSecurityVersion: --security-version and --product put the
// version into the image (read back by secversion, whose format
// TestAddMatchesMkcomposefs checks against mkcomposefs); without them the
// image has none; bad values are usage errors.
func TestMkimageSecurityVersion(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tree.dump")
	if err := os.WriteFile(src, []byte("/ 4096 40755 2 0 0 0 0.0 - - -\n/etc 4096 40755 2 0 0 0 0.0 - - -\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		flags []string
		want  secversion.Info
	}{
		{nil, secversion.Info{}},
		{[]string{"--security-version", "3"}, secversion.Info{Version: 3}},
		{[]string{"--security-version=12", "--product", "appliance"}, secversion.Info{Version: 12, Product: "appliance"}},
		{[]string{"--product", "debug"}, secversion.Info{Product: "debug"}},
	} {
		out := filepath.Join(t.TempDir(), "img.cfs")
		args := append(append([]string{"mkimage", "--from-file"}, tc.flags...), src, out)
		if _, stderr, err := runCmd(t, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr)
		}
		img, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		got, err := secversion.ReadAt(bytes.NewReader(img), int64(len(img)))
		if err != nil || got != tc.want {
			t.Errorf("%v: image says %+v, %v; want %+v", tc.flags, got, err, tc.want)
		}
	}
	for _, bad := range [][]string{{"--product", "a/b"}, {"--security-version", "-1"}, {"--security-version", "x"}} {
		args := append(append([]string{"mkimage", "--from-file"}, bad...), src, filepath.Join(t.TempDir(), "x.cfs"))
		var ue *usageError
		if _, _, err := runCmd(t, args...); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", bad, err)
		}
	}
}
