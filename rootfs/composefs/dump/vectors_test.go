package dump_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// The composefs project's own test vectors (tests/assets of composefs
// v1.0.8 from the Go module cache, see testutil.ComposefsAssets): dumps, the
// sha256 of the image mkcomposefs 1.0.8 builds from each, and inputs a
// writer must reject. The dump format is documented in the composefs
// repository's man/composefs-dump.md.

func vectorsDir(t testing.TB) string {
	return testutil.ComposefsAssets(t)
}

func openVector(t testing.TB, name string) io.Reader {
	b, err := os.ReadFile(filepath.Join(vectorsDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b)
}

func buildVector(t testing.TB, v testutil.ComposefsVector) ([]byte, composefs.WriteResult) {
	root, err := dump.Parse(bytes.NewReader(v.Dump(t)), &dump.Options{Strict: v.Strict})
	if err != nil {
		t.Fatalf("%s: parse: %v", v.Name, err)
	}
	var buf bytes.Buffer
	res, err := composefs.Write(&buf, root, &composefs.WriteOptions{MinVersion: v.MinVersion, MaxVersion: v.MaxVersion})
	if err != nil {
		t.Fatalf("%s: write: %v", v.Name, err)
	}
	return buf.Bytes(), res
}

// TestVectors: every image vector written by the Go writer is byte for byte
// the image mkcomposefs 1.0.8 makes (sha256 as upstream's .sha256 says, and
// the oracle's image itself, to locate a difference), and the fs-verity
// digest Write returns is the one fsverity-utils computes.
func TestVectors(t *testing.T) {
	for _, v := range testutil.ComposefsVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			img, res := buildVector(t, v)
			sum := sha256.Sum256(img)
			if got := hex.EncodeToString(sum[:]); got != v.SHA256 {
				ref, err := os.ReadFile(v.ReferenceImage(t))
				if err != nil {
					t.Fatal(err)
				}
				t.Errorf("sha256 of image = %s, want %s (%d vs %d bytes, first difference at %d)", got, v.SHA256, len(img), len(ref), firstDiff(img, ref))
			}
			if int64(len(img)) != res.Size {
				t.Errorf("WriteResult.Size = %d, wrote %d", res.Size, len(img))
			}
			d, err := verity.DigestReader(bytes.NewReader(img), verity.Params{})
			if err != nil {
				t.Fatal(err)
			}
			if !d.Equal(res.Digest) {
				t.Errorf("WriteResult.Digest = %v, verity.DigestReader says %v", res.Digest, d)
			}
			t.Run("fsverity", func(t *testing.T) {
				fsverity := testutil.RequireTool(t, "fsverity")
				p := filepath.Join(t.TempDir(), "img.cfs")
				if err := os.WriteFile(p, img, 0o644); err != nil {
					t.Fatal(err)
				}
				out := testutil.Run(t, fsverity, "digest", "--compact", p)
				if got := strings.TrimSpace(string(out)); got != "sha256:"+hex.EncodeToString(res.Digest.Sum) && got != hex.EncodeToString(res.Digest.Sum) {
					t.Errorf("fsverity digest = %s, Write returned %v", got, res.Digest)
				}
			})
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

// TestShouldFail checks that every should-fail-* vector is rejected with a
// parse or write error that names the line and the problem.
func TestShouldFail(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(vectorsDir(t), "should-fail-*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found only %d should-fail vectors", len(files))
	}
	// The problem each file is about, as a pattern the error must match,
	// and the line it is on.
	want := map[string]struct {
		line int
		re   string
	}{
		"should-fail-big-inline.dump":           {2, `CONTENT is 5004 bytes, at most 5000`},
		"should-fail-dir-hardlink.dump":         {2, `directories cannot be hard links`},
		"should-fail-dot-name.dump":             {2, `invalid \. or \.\.`},
		"should-fail-dotdot-name.dump":          {2, `invalid \. or \.\.`},
		"should-fail-empty-link-name.dump":      {2, `symlink without a target`},
		"should-fail-empty-name.dump":           {2, `empty name`},
		"should-fail-empty-xattr-key.dump":      {2, `empty name`},
		"should-fail-honggfuzz-long-xattr.dump": {1, `xattr`},
		"should-fail-long-link.dump":            {2, `symlink target is \d+ bytes, at most 4095`},
		"should-fail-long-xattr-key.dump":       {2, `too many xattrs`},
		"should-fail-long-xattr-value.dump":     {2, `invalid MODE 644`},
		"should-fail-no-ftype.dump":             {2, `invalid MODE 0`},
		"should-fail-self-hardlink.dump":        {1, `empty xattr`},
		"should-fail-too-big.dump":              {2, `SIZE 9500000000000000 is too big`},
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			w, ok := want[name]
			if !ok {
				t.Fatalf("no expectation for %s: add one", name)
			}
			// Upstream's test-should-fail.sh runs mkcomposefs without
			// CFS_PARSE_STRICT.
			root, err := dump.Parse(openVector(t, name), nil)
			if err == nil {
				_, err = composefs.Write(io.Discard, root, nil)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			t.Logf("error: %v", err)
			var pe *dump.Error
			if w.line > 0 {
				if !errors.As(err, &pe) || pe.Line != w.line {
					t.Errorf("error %q does not name line %d", err, w.line)
				}
			}
			if !regexp.MustCompile(w.re).MatchString(err.Error()) {
				t.Errorf("error %q does not match %q", err, w.re)
			}
		})
	}
}

// TestCanonicalDumps checks the formatter against composefs-info dump: the
// canonical dumps, parsed and written again, come out unchanged.
func TestCanonicalDumps(t *testing.T) {
	for _, v := range testutil.ComposefsVectors(t) {
		t.Run(v.Base, func(t *testing.T) {
			want := v.CanonicalDump(t)
			root, err := dump.Parse(bytes.NewReader(want), &dump.Options{Strict: true})
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if err := dump.Write(&got, root); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("dump differs:\n%s", lineDiff(got.Bytes(), want))
			}
		})
	}
}

func lineDiff(got, want []byte) string {
	g := bufio.NewScanner(bytes.NewReader(got))
	w := bufio.NewScanner(bytes.NewReader(want))
	g.Buffer(nil, 1<<24)
	w.Buffer(nil, 1<<24)
	for i := 1; ; i++ {
		gok, wok := g.Scan(), w.Scan()
		if !gok && !wok {
			return "(same lines; trailing bytes differ)"
		}
		if g.Text() != w.Text() || gok != wok {
			return "line " + strconv.Itoa(i) + ":\n got: " + trunc(g.Text()) + "\nwant: " + trunc(w.Text())
		}
	}
}

func trunc(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}
