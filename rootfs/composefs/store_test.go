package composefs_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
)

// TestStoreAdd stores content from a reader and checks the object's name
// against fsverity-utils' digest of it.
func TestStoreAdd(t *testing.T) {
	fsverity := testutil.RequireTool(t, "fsverity")
	store, err := composefs.OpenStore(filepath.Join(t.TempDir(), "objects"))
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("object data\n"), 10000)
	d, added, err := store.Add(bytes.NewReader(content))
	if err != nil || !added {
		t.Fatalf("Add: %v, added %v", err, added)
	}
	p := store.Path(d)
	if rel, _ := filepath.Rel(store.Dir(), p); rel != composefs.ObjectPath(d) {
		t.Errorf("object at %s", rel)
	}
	out := strings.TrimSpace(string(testutil.Run(t, fsverity, "digest", "--compact", p)))
	if out != strings.ReplaceAll(composefs.ObjectPath(d), "/", "") {
		t.Errorf("fsverity digest of the object is %s, its name says %s", out, composefs.ObjectPath(d))
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, content) {
		t.Error("object content differs")
	}
	if _, added, err := store.Add(bytes.NewReader(content)); err != nil || added {
		t.Errorf("second Add: %v, added %v", err, added)
	}
	src := filepath.Join(t.TempDir(), "src")
	os.WriteFile(src, content, 0o600)
	if added, err := store.AddFile(src, d); err != nil || added {
		t.Errorf("AddFile of stored content: %v, added %v", err, added)
	}
	listStore(t, store.Dir())
}

// failingReader returns data, then an error: an interrupted copy.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	k := min(len(p), r.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	r.n -= k
	return k, nil
}

// TestStoreAddInterrupted: a copy that fails midway leaves neither an
// object nor a temporary file.
func TestStoreAddInterrupted(t *testing.T) {
	store, err := composefs.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Add(&failingReader{n: 100000}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Add: %v", err)
	}
	if got := listStore(t, store.Dir()); len(got) != 0 {
		t.Errorf("store holds %v after a failed Add", got)
	}
}

func TestStoreAddFileErrors(t *testing.T) {
	store, err := composefs.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AddFile("/dev/null", []byte{1, 2}); err == nil {
		t.Error("short digest accepted")
	}
	// A directory as source: the copy fails, nothing is published.
	d := bytes.Repeat([]byte{7}, composefs.DigestSize)
	if _, err := store.AddFile(t.TempDir(), d); err == nil {
		t.Error("directory as source accepted")
	}
	if got := listStore(t, store.Dir()); len(got) != 0 {
		t.Errorf("store holds %v", got)
	}
}

func TestFromDirProgress(t *testing.T) {
	dir := t.TempDir()
	for i, n := range []int{10, 100, 5000, 70000} {
		os.WriteFile(filepath.Join(dir, string(rune('a'+i))), bytes.Repeat([]byte{'p'}, n), 0o644)
	}
	var last composefs.Progress
	calls := 0
	_, err := composefs.FromDir(dir, &composefs.BuildOptions{Progress: func(p composefs.Progress) { last = p; calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	want := composefs.Progress{Files: 4, TotalFiles: 4, Bytes: 75100, TotalBytes: 75100}
	if calls == 0 || last != want {
		t.Errorf("last progress %+v after %d calls, want %+v", last, calls, want)
	}
}

// TestFromDirReadError: a file that reads short of its size (sysfs files
// claim 4096 bytes) stops the build with an error naming it, from a worker
// while the walk is still going.
func TestFromDirReadError(t *testing.T) {
	dir := "/sys/kernel/mm"
	if _, err := os.Stat(dir); err != nil {
		testutil.Unavailable(t, "%s: %v (no sysfs here: mount sysfs at /sys)", dir, err)
	}
	_, err := composefs.FromDir(dir, &composefs.BuildOptions{SkipXattrs: true})
	if err == nil || !strings.Contains(err.Error(), "changed while it was read") || !strings.Contains(err.Error(), dir+"/") {
		t.Errorf("got %v", err)
	}
}
