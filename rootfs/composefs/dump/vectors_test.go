package dump_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
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

// The composefs project's own test vectors (../shared/composefs/vectors,
// see its README.md): dumps, the sha256 of the image mkcomposefs 1.0.8
// builds from each, the images themselves and their fs-verity digests.

func vectorsDir(t testing.TB) string {
	return filepath.Join(testutil.SharedDir(t), "composefs", "vectors")
}

// nonStrict lists the vectors the upstream test builds without
// CFS_PARSE_STRICT.
var nonStrict = map[string]bool{
	"no-newline.dump":                      true,
	"longlink.dump":                        true,
	"honggfuzz-longlink-unterminated.dump": true,
}

type vector struct {
	name       string // e.g. "config.dump.gz"
	base       string // e.g. "config"
	sha256     string
	verity     string // from the README, may be empty
	minV, maxV int
	versioned  bool
}

func readVectors(t testing.TB) []vector {
	dir := vectorsDir(t)
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	verities := map[string]string{}
	re := regexp.MustCompile(`(?m)^\s+(\S+\.dump(?:\.gz)?)\s+([0-9a-f]{64})\s*$`)
	for _, m := range re.FindAllStringSubmatch(string(readme), -1) {
		verities[m[1]] = m[2]
	}
	if len(verities) < 10 {
		t.Fatalf("found only %d fs-verity digests in the vectors README", len(verities))
	}
	shas, err := filepath.Glob(filepath.Join(dir, "*.sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	for _, s := range shas {
		name := strings.TrimSuffix(filepath.Base(s), ".sha256")
		sum, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		v := vector{name: name, base: strings.TrimSuffix(strings.TrimSuffix(name, ".gz"), ".dump"),
			sha256: strings.Fields(string(sum))[0], verity: verities[name], maxV: 1}
		if b, err := os.ReadFile(filepath.Join(dir, name+".version")); err == nil {
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatalf("%s.version: %v", name, err)
			}
			v.minV, v.maxV, v.versioned = n, n, true
		}
		vs = append(vs, v)
	}
	if len(vs) < 14 {
		t.Fatalf("found only %d vectors", len(vs))
	}
	return vs
}

func openVector(t testing.TB, name string) io.Reader {
	b, err := os.ReadFile(filepath.Join(vectorsDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		b, err = io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
	}
	return bytes.NewReader(b)
}

func buildVector(t testing.TB, v vector) ([]byte, composefs.WriteResult) {
	root, err := dump.Parse(openVector(t, v.name), &dump.Options{Strict: !nonStrict[v.name]})
	if err != nil {
		t.Fatalf("%s: parse: %v", v.name, err)
	}
	var buf bytes.Buffer
	res, err := composefs.Write(&buf, root, &composefs.WriteOptions{MinVersion: v.minV, MaxVersion: v.maxV})
	if err != nil {
		t.Fatalf("%s: write: %v", v.name, err)
	}
	return buf.Bytes(), res
}

func TestVectors(t *testing.T) {
	for _, v := range readVectors(t) {
		t.Run(v.name, func(t *testing.T) {
			img, res := buildVector(t, v)
			sum := sha256.Sum256(img)
			if got := hex.EncodeToString(sum[:]); got != v.sha256 {
				t.Errorf("sha256 of image = %s, want %s", got, v.sha256)
			}
			ref, err := os.ReadFile(filepath.Join(vectorsDir(t), "images", v.base+".cfs"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(img, ref) {
				t.Errorf("image differs from images/%s.cfs (%d vs %d bytes, first difference at %d)", v.base, len(img), len(ref), firstDiff(img, ref))
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
			if v.verity != "" && hex.EncodeToString(res.Digest.Sum) != v.verity {
				t.Errorf("fs-verity digest = %x, README says %s", res.Digest.Sum, v.verity)
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
	files, err := filepath.Glob(filepath.Join(vectorsDir(t), "canonical-dumps", "*.dump"))
	if err != nil || len(files) < 14 {
		t.Fatalf("canonical dumps: %v (%d files)", err, len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			want, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
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
