package testutil

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cfsroot/cfsroot/internal/atomicfile"
)

// The composefs project's own test vectors: tests/assets of
// github.com/containers/composefs v1.0.8 (GPL-2.0-or-later OR Apache-2.0,
// see the module's COPYING; they are read, never copied here), which the Go module proxy serves as
// a module like any other. make deps fetches it into the Go module cache
// (tools/fetch-mkcomposefs.sh); the tests read it there after checking the
// module's go.sum hash below, which is the one sum.golang.org publishes.
// The dump format is documented in the composefs repository's
// man/composefs-dump.md.
const (
	composefsModule  = "github.com/containers/composefs"
	composefsVersion = "v1.0.8"
	composefsSum     = "h1:G/CUtPu7KyJOj2MntKo3FSzkAPlbEmqwZ+hkS+/HPZE="
)

var assets struct {
	once sync.Once
	dir  string
	err  error
}

// ComposefsAssets returns the directory holding composefs v1.0.8's
// tests/assets in the Go module cache, after checking that the module's
// files hash to its go.sum hash. When the module is not cached the test ends
// (see Unavailable); it is never downloaded here.
func ComposefsAssets(t testing.TB) string {
	t.Helper()
	assets.once.Do(func() { assets.dir, assets.err = findAssets() })
	if assets.err != nil {
		var missing *missingError
		if errors.As(assets.err, &missing) {
			Unavailable(t, "%v", assets.err)
		}
		t.Fatal(assets.err)
	}
	return assets.dir
}

type missingError struct{ msg string }

func (e *missingError) Error() string { return e.msg }

func findAssets() (string, error) {
	mv := composefsModule + "@" + composefsVersion
	cmd := exec.Command(GoTool(), "mod", "download", "-json", mv)
	// Outside any module, and with the proxy off: only the module cache
	// answers, so a test never downloads.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=mod")
	out, _ := cmd.Output()
	var info struct{ Dir, Sum, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		return "", &missingError{fmt.Sprintf("composefs test vectors (Go module %s) not in the module cache (%s%s): run make deps (tools/fetch-mkcomposefs.sh)", mv, info.Error, errText(err))}
	}
	sum, err := dirHash1(info.Dir, mv)
	if err != nil {
		return "", fmt.Errorf("testutil: hashing %s: %w", info.Dir, err)
	}
	if sum != composefsSum {
		return "", fmt.Errorf("testutil: %s in the module cache (%s) hashes to %s, want %s: the cache is damaged; go clean -modcache and run make deps", mv, info.Dir, sum, composefsSum)
	}
	return filepath.Join(info.Dir, "tests", "assets"), nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return "; " + err.Error()
}

// dirHash1 is the go.sum "h1:" hash of a module's files (Go's
// golang.org/x/mod/sumdb/dirhash Hash1): the sha256 of the lines
// "<sha256 hex>  <prefix>/<path>\n" for every file, sorted by name.
func dirHash1(dir, prefix string) (string, error) {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		names = append(names, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return "", err
	}
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%x  %s/%s\n", sha256.Sum256(b), prefix, n)
	}
	return "h1:" + base64.StdEncoding.EncodeToString(h.Sum(nil)), nil
}

// ComposefsVector is one image vector of the composefs test suite: a dump
// and the sha256 of the image mkcomposefs 1.0.8 builds from it.
type ComposefsVector struct {
	Name       string // the vector's name in tests/assets, e.g. "config.dump.gz"
	Base       string // Name without .dump or .dump.gz, e.g. "config"
	Path       string // the dump file
	SHA256     string // hex sha256 of the image (NAME.sha256)
	MinVersion int    // --min-version (NAME.version, else 0)
	MaxVersion int    // --max-version (NAME.version, else 1)
	Versioned  bool   // NAME.version exists
	Strict     bool   // built with CFS_PARSE_STRICT=1
}

// nonStrictVectors are the vectors upstream's tests/test-checksums.sh builds
// without CFS_PARSE_STRICT.
var nonStrictVectors = map[string]bool{
	"no-newline.dump":                      true,
	"longlink.dump":                        true,
	"honggfuzz-longlink-unterminated.dump": true,
}

// symlinkVectors are upstream files that are symbolic links in the
// composefs repository, which module zips leave out.
var symlinkVectors = map[string]string{"special_v1.dump": "special.dump"}

// ComposefsVectors lists the image vectors (every NAME.sha256 in
// tests/assets whose dump the module holds), as upstream's
// tests/test-checksums.sh builds them.
func ComposefsVectors(t testing.TB) []ComposefsVector {
	t.Helper()
	dir := ComposefsAssets(t)
	shas, err := filepath.Glob(filepath.Join(dir, "*.sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []ComposefsVector
	for _, s := range shas {
		name := strings.TrimSuffix(filepath.Base(s), ".sha256")
		path := filepath.Join(dir, name)
		if target, ok := symlinkVectors[name]; ok {
			path = filepath.Join(dir, target)
		}
		if _, err := os.Stat(path); err != nil {
			continue // a checksum upstream keeps without its input
		}
		sum, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		v := ComposefsVector{Name: name, Path: path, SHA256: strings.Fields(string(sum))[0], MaxVersion: 1,
			Base: strings.TrimSuffix(strings.TrimSuffix(name, ".gz"), ".dump"), Strict: !nonStrictVectors[name]}
		if b, err := os.ReadFile(filepath.Join(dir, name+".version")); err == nil {
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatalf("%s.version: %v", name, err)
			}
			v.MinVersion, v.MaxVersion, v.Versioned = n, n, true
		}
		vs = append(vs, v)
	}
	if len(vs) < 15 {
		t.Fatalf("testutil: found only %d composefs vectors in %s", len(vs), dir)
	}
	return vs
}

// ComposefsVectorNamed returns the vector whose Base is base.
func ComposefsVectorNamed(t testing.TB, base string) ComposefsVector {
	t.Helper()
	for _, v := range ComposefsVectors(t) {
		if v.Base == base {
			return v
		}
	}
	t.Fatalf("testutil: no composefs vector %q", base)
	return ComposefsVector{}
}

// Dump returns the vector's dump text, decompressed.
func (v ComposefsVector) Dump(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(v.Path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(v.Path, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", v.Path, err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			t.Fatalf("%s: %v", v.Path, err)
		}
	}
	return b
}

// ReferenceImage returns the image the oracle mkcomposefs 1.0.8
// (ComposefsTool) builds from the vector, after checking that its sha256 is
// the vector's. Images are built at test time and kept in
// .cache/composefs-vectors (CFSROOT_CACHE), keyed by that sha256.
func (v ComposefsVector) ReferenceImage(t testing.TB) string {
	t.Helper()
	p := filepath.Join(vectorCache(t), "images", v.SHA256+".cfs")
	if b, err := os.ReadFile(p); err == nil && sha256Hex(b) == v.SHA256 {
		return p
	}
	mk := ComposefsTool(t, "mkcomposefs")
	args := []string{"--from-file", "-", "-"}
	if v.Versioned {
		args = append([]string{"--min-version=" + strconv.Itoa(v.MinVersion), "--max-version=" + strconv.Itoa(v.MaxVersion)}, args...)
	}
	cmd := exec.Command(mk, args...)
	cmd.Stdin = bytes.NewReader(v.Dump(t))
	cmd.Env = os.Environ()
	if v.Strict {
		cmd.Env = append(cmd.Env, "CFS_PARSE_STRICT=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	img, err := cmd.Output()
	if err != nil {
		t.Fatalf("mkcomposefs %s: %v\n%s", v.Name, err, stderr.String())
	}
	if got := sha256Hex(img); got != v.SHA256 {
		t.Fatalf("mkcomposefs builds %s with sha256 %s, upstream's %s.sha256 says %s", v.Name, got, v.Name, v.SHA256)
	}
	writeCached(t, p, img)
	return p
}

// CanonicalDump returns `composefs-info dump` of the vector's reference
// image: what a dump of that image must print. It is made at test time and
// cached beside the image.
func (v ComposefsVector) CanonicalDump(t testing.TB) []byte {
	t.Helper()
	img := v.ReferenceImage(t)
	p := strings.TrimSuffix(img, ".cfs") + ".dump"
	if b, err := os.ReadFile(p); err == nil {
		return b
	}
	info := ComposefsTool(t, "composefs-info")
	out, err := exec.Command(info, "dump", img).Output()
	if err != nil {
		t.Fatalf("composefs-info dump %s (%s): %v", img, v.Name, err)
	}
	writeCached(t, p, out)
	return out
}

func vectorCache(t testing.TB) string {
	cache := os.Getenv("CFSROOT_CACHE")
	if cache == "" {
		cache = filepath.Join(RepoRoot(t), ".cache")
	}
	return filepath.Join(cache, "composefs-vectors", composefsVersion)
}

func writeCached(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ObjectsOnlyIn lists, sorted, the objects image a references and none of
// others does, as the reference composefs-info lists them: what a garbage
// collection that keeps only others must remove. The test fails if there is
// none (the images would show nothing).
func ObjectsOnlyIn(t testing.TB, a string, others ...string) []string {
	t.Helper()
	info := ComposefsTool(t, "composefs-info")
	list := func(p string) []string {
		return strings.Fields(string(Run(t, info, "objects", p)))
	}
	var inOthers []string
	for _, o := range others {
		inOthers = append(inOthers, list(o)...)
	}
	var only []string
	for _, o := range list(a) {
		if !slices.Contains(inOthers, o) {
			only = append(only, o)
		}
	}
	slices.Sort(only)
	if len(only) == 0 {
		t.Fatalf("%s shares every object with %v", a, others)
	}
	return only
}
