package repo

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// signer is a throwaway image-signing key and certificate.
type signer struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newSigner(t *testing.T, cn string) signer {
	t.Helper()
	key, cert := testutil.SigningCert(t, cn)
	return signer{key, cert}
}

// built is an image as mkimage --digest-store leaves it.
type built struct {
	image, sig, store string
}

// build makes a signed image of files (path → content) with its objects in
// store (shared between builds, as a build machine's store is).
func build(t *testing.T, s signer, store string, files map[string]string) built {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for p, c := range files {
		full := filepath.Join(tree, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := composefs.OpenStore(store)
	if err != nil {
		t.Fatal(err)
	}
	root, err := composefs.FromDir(tree, &composefs.BuildOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	res, err := composefs.Write(&img, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := signature.SignDigest(res.Digest, s.key, s.cert)
	if err != nil {
		t.Fatal(err)
	}
	b := built{image: filepath.Join(dir, "img.cfs"), sig: filepath.Join(dir, "img.cfs.sig"), store: store}
	os.WriteFile(b.image, img.Bytes(), 0o644)
	os.WriteFile(b.sig, sig, 0o644)
	return b
}

// big makes content large enough to be an object (> 64 bytes).
func bigContent(s string) string { return strings.Repeat(s+"\n", 20) }

// tree1..3: three versions of a root; 2 changes two files of 1 and adds
// one, 3 changes one file of 2.
var (
	tree1 = map[string]string{
		"usr/bin/app":       bigContent("app v1"),
		"usr/lib/libc.so":   bigContent("libc"),
		"usr/share/doc":     bigContent("docs v1"),
		"etc/config":        bigContent("config v1"),
		"etc/small":         "inline",
		"usr/share/same":    bigContent("never changes"),
		"usr/share/onlyone": bigContent("only in the first image"),
	}
	tree2 = with(tree1, map[string]string{"usr/bin/app": bigContent("app v2"), "etc/config": bigContent("config v2"), "usr/share/new": bigContent("new in 2"), "usr/share/onlyone": ""})
	tree3 = with(tree2, map[string]string{"usr/bin/app": bigContent("app v3")})
)

func with(base, changes map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range base {
		m[k] = v
	}
	for k, v := range changes {
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

func install(t *testing.T, r *Repo, trust *signature.TrustStore, slot string, b built, protect ...string) *InstallResult {
	t.Helper()
	res, err := r.Install(InstallOptions{Slot: slot, Image: b.image, Sig: b.sig, Store: b.store, Trusted: trust, Protect: protect})
	if err != nil {
		t.Fatalf("install into %s: %v", slot, err)
	}
	return res
}

// TestInstallUpdateBlessGC walks a device's life on the host: install into
// an empty repository, update into the other slot (trial), use up the
// tries, update again, bless, gc.
func TestInstallUpdateBlessGC(t *testing.T) {
	s := newSigner(t, "image signer")
	trust := signature.NewTrustStore(s.cert)
	srcStore := filepath.Join(t.TempDir(), "objects")
	b1, b2, b3 := build(t, s, srcStore, tree1), build(t, s, srcStore, tree2), build(t, s, srcStore, tree3)
	r, err := Open(filepath.Join(t.TempDir(), "composefs"))
	if err != nil {
		t.Fatal(err)
	}
	slots := []string{"a", "b"}

	res := install(t, r, trust, "a", b1)
	if res.State != (State{Good: "a"}) {
		t.Errorf("first install: state %+v, want a good", res.State)
	}
	if res.Objects != 6 || res.Copied != 6 {
		t.Errorf("first install: %d objects, %d copied; want 6, 6", res.Objects, res.Copied)
	}
	checkStoreMatches(t, r, "a", b1)
	if p := mustState(t, r).Plan(slots, false); !slices.Equal(p.Slots, []string{"a"}) || p.Attempt {
		t.Errorf("plan after first install: %+v", p)
	}

	// Update: only the 3 new objects are copied; the slot is on trial.
	res = install(t, r, trust, "b", b2, "a")
	if res.Copied != 3 || res.CopiedBytes != int64(len(tree2["usr/bin/app"])+len(tree2["etc/config"])+len(tree2["usr/share/new"])) {
		t.Errorf("update copied %d objects (%d bytes), want the 3 new ones", res.Copied, res.CopiedBytes)
	}
	want := State{Good: "a", Trial: "b", TriesLeft: DefaultTries}
	if st := mustState(t, r); st != want {
		t.Errorf("after update: %+v, want %+v", st, want)
	}
	checkStoreMatches(t, r, "b", b2)

	// The init boots b while it has tries, recording each attempt.
	for i := 0; i < DefaultTries; i++ {
		st := mustState(t, r)
		p := st.Plan(slots, false)
		if !slices.Equal(p.Slots, []string{"b", "a"}) || !p.Attempt {
			t.Fatalf("boot %d: plan %+v", i, p)
		}
		if err := WriteState(r.Dir(), st.Attempt()); err != nil {
			t.Fatal(err)
		}
	}
	p := mustState(t, r).Plan(slots, true)
	if !slices.Equal(p.Slots, []string{"a"}) || p.Attempt || !strings.Contains(p.Note, "no tries left") {
		t.Errorf("plan after the tries: %+v", p)
	}
	if got := mustState(t, r).Describe("b"); !strings.Contains(got, "bad") {
		t.Errorf("Describe(b) = %q", got)
	}

	// Update b again (it is not good, not booted), boot it, bless it.
	install(t, r, trust, "b", b3, "a")
	st := mustState(t, r).Attempt()
	if err := WriteState(r.Dir(), st); err != nil {
		t.Fatal(err)
	}
	st, err = st.Bless("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteState(r.Dir(), st); err != nil {
		t.Fatal(err)
	}
	if st := mustState(t, r); st != (State{Good: "b"}) {
		t.Errorf("after bless: %+v", st)
	}
	if _, err := r.Install(InstallOptions{Slot: "b", Image: b1.image, Store: srcStore, Trusted: trust}); err == nil || !strings.Contains(err.Error(), "known-good") {
		t.Errorf("install over the known-good slot: %v", err)
	}

	// a still holds image 1: nothing to collect. Replace a with image 3,
	// then the objects only image 1 used go, as composefs-info counts.
	if g, err := r.GC([]string{"b"}, false); err != nil || !slices.Equal(g.Removed, testutil.ObjectsOnlyIn(t, b2.image, b1.image, b3.image)) {
		t.Fatalf("gc with images 1 and 3 installed: %v, removed %v", err, g)
	}
	install(t, r, trust, "a", b3, "b")
	only1 := testutil.ObjectsOnlyIn(t, b1.image, b3.image)
	dry, err := r.GC([]string{"b"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dry.Removed, only1) {
		t.Errorf("gc --dry-run lists %v, composefs-info says only image 1 used %v", dry.Removed, only1)
	}
	for _, o := range only1 {
		if _, err := os.Stat(r.Path(ObjectsDir, o)); err != nil {
			t.Errorf("dry run removed %s", o)
		}
	}
	g, err := r.GC([]string{"b"}, false)
	if err != nil || !slices.Equal(g.Removed, only1) || g.Bytes != dry.Bytes {
		t.Fatalf("gc: %v, removed %v (%d bytes), want %v (%d)", err, g.Removed, g.Bytes, only1, dry.Bytes)
	}
	checkStoreMatches(t, r, "a", b3)
	checkStoreMatches(t, r, "b", b3)
}

// checkStoreMatches checks the slot's files against the build with the
// same code as cfsroot check --verify.
func checkStoreMatches(t *testing.T, r *Repo, slot string, b built) {
	t.Helper()
	for _, suffix := range []string{".cfs", ".cfs.sig"} {
		want, _ := os.ReadFile(strings.TrimSuffix(b.image, ".cfs") + suffix)
		got, err := os.ReadFile(r.Path(ImagesDir, slot+suffix))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("slot %s: %s differs from the build (%v)", slot, suffix, err)
		}
	}
	data, _ := os.ReadFile(b.image)
	objs, err := readImageObjects(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.verifyObjects(objs, &InstallResult{}, false); err != nil {
		t.Errorf("slot %s: %v", slot, err)
	}
}

func mustState(t *testing.T, r *Repo) State {
	t.Helper()
	st, err := ReadState(r.Dir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// snapshot describes every file under dir (name, mode, content hash),
// except the lock file, so a test can see that nothing changed.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == LockFile {
			return nil
		}
		info, _ := d.Info()
		fmt.Fprintf(&b, "%s %v", rel, info.Mode())
		if d.Type().IsRegular() {
			data, _ := os.ReadFile(p)
			s := sha256.Sum256(data)
			fmt.Fprintf(&b, " %s", hex.EncodeToString(s[:8]))
		}
		b.WriteByte('\n')
		return nil
	})
	return b.String()
}

// TestInstallRefuses: bad input gives a clear error and leaves the
// repository exactly as it was.
func TestInstallRefuses(t *testing.T) {
	s, other := newSigner(t, "image signer"), newSigner(t, "someone else")
	trust := signature.NewTrustStore(s.cert)
	srcStore := filepath.Join(t.TempDir(), "objects")
	b1, b2 := build(t, s, srcStore, tree1), build(t, s, srcStore, tree2)
	foreign := build(t, other, srcStore, tree2)
	dir := t.TempDir()
	data2, _ := os.ReadFile(b2.image)
	put := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		return p
	}
	truncated := put("truncated.cfs", data2[:len(data2)/2])
	junk := put("junk.cfs", bytes.Repeat([]byte("not an image "), 1000))
	// A store that lacks one of image 2's new objects.
	holey := t.TempDir()
	copyTree(t, srcStore, holey)
	newObj, err := verity.DigestReader(strings.NewReader(tree2["usr/share/new"]), verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(holey, composefs.ObjectPath(newObj.Sum))); err != nil {
		t.Fatal(err)
	}
	objs, _ := readImageObjects(data2)
	// A store in which one new object cannot be read (a directory where
	// the file should be: EISDIR on read, even for root).
	unreadable := t.TempDir()
	copyTree(t, srcStore, unreadable)
	unreadableObj := filepath.Join(unreadable, composefs.ObjectPath(newObj.Sum))
	os.Remove(unreadableObj)
	os.MkdirAll(filepath.Join(unreadableObj, "sub"), 0o755)
	// A store whose object has other content of the same size.
	swapped := t.TempDir()
	copyTree(t, srcStore, swapped)
	var swappedObj string
	for _, o := range objs {
		p := filepath.Join(swapped, o.path)
		if st, err := os.Stat(p); err == nil && st.Size() > 0 {
			data, _ := os.ReadFile(p)
			data[0] ^= 1
			os.Chmod(p, 0o644)
			os.WriteFile(p, data, 0o644)
			swappedObj = o.path
			break
		}
	}

	r, err := Open(filepath.Join(t.TempDir(), "composefs"))
	if err != nil {
		t.Fatal(err)
	}
	install(t, r, trust, "a", b1)

	for _, tc := range []struct {
		name string
		opts InstallOptions
		want string
	}{
		{"foreign signer", InstallOptions{Image: foreign.image, Sig: foreign.sig}, "not signed by a trusted certificate"},
		{"signature of another image", InstallOptions{Image: b2.image, Sig: b1.sig}, "not signed by a trusted certificate"},
		{"no signature", InstallOptions{Image: b2.image, Sig: filepath.Join(dir, "none.sig")}, "signature"},
		{"truncated image", InstallOptions{Image: truncated, Sig: b2.sig}, "not signed"},
		{"truncated image signed", InstallOptions{Image: truncated, Sig: put("t.sig", signFile(t, s, truncated))}, "not a usable composefs image"},
		{"not an image", InstallOptions{Image: junk, Sig: put("j.sig", signFile(t, s, junk))}, "not a usable composefs image"},
		{"missing object", InstallOptions{Image: b2.image, Sig: b2.sig, Store: holey}, "no such file"},
		{"unreadable object", InstallOptions{Image: b2.image, Sig: b2.sig, Store: unreadable}, "not a regular file"},
		{"swapped object", InstallOptions{Image: b2.image, Sig: b2.sig, Store: swapped}, swappedObj},
		{"booted slot", InstallOptions{Slot: "b", Image: b2.image, Sig: b2.sig, Protect: []string{"b"}}, "booted"},
		{"known-good slot", InstallOptions{Slot: "a", Image: b2.image, Sig: b2.sig}, "known-good"},
		{"bad slot name", InstallOptions{Slot: "../x", Image: b2.image, Sig: b2.sig}, "slot name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t, r.Dir())
			o := tc.opts
			if o.Slot == "" {
				o.Slot = "b"
			}
			if o.Store == "" {
				o.Store = srcStore
			}
			o.Trusted = trust
			_, err := r.Install(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("install: %v, want an error containing %q", err, tc.want)
			}
			t.Logf("%v", err)
			if after := snapshot(t, r.Dir()); after != before {
				t.Errorf("repository changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}

	// A second updater waits for nothing: it is refused at once.
	unlock, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, r.Dir())
	_, err = r.Install(InstallOptions{Slot: "b", Image: b2.image, Sig: b2.sig, Store: srcStore, Trusted: trust})
	if !errors.Is(err, ErrLocked) {
		t.Errorf("install while locked: %v", err)
	}
	if _, err := r.GC(nil, false); !errors.Is(err, ErrLocked) {
		t.Errorf("gc while locked: %v", err)
	}
	if after := snapshot(t, r.Dir()); after != before {
		t.Errorf("repository changed under a lock")
	}
	unlock()
	install(t, r, trust, "b", b2)
}

// TestInstallDiskFull installs onto a tmpfs too small for the objects: a
// clear error, and the repository as it was.
func TestInstallDiskFull(t *testing.T) {
	testutil.RequireRoot(t, "mounting a small tmpfs")
	s := newSigner(t, "image signer")
	trust := signature.NewTrustStore(s.cert)
	srcStore := filepath.Join(t.TempDir(), "objects")
	files := with(tree1, map[string]string{"usr/share/huge": strings.Repeat("x", 600<<10)})
	b := build(t, s, srcStore, files)
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=512k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	r, err := Open(filepath.Join(mnt, "composefs"))
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, r.Dir())
	_, err = r.Install(InstallOptions{Slot: "a", Image: b.image, Sig: b.sig, Store: srcStore, Trusted: trust})
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("install onto a full disk: %v", err)
	}
	t.Logf("%v", err)
	if after := snapshot(t, r.Dir()); after != before {
		t.Errorf("repository changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func signFile(t *testing.T, s signer, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := verity.DigestReader(f, verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := signature.SignDigest(d, s.key, s.cert)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
}

func TestPlan(t *testing.T) {
	slots := []string{"a", "b", "c"}
	for _, tc := range []struct {
		name     string
		st       State
		fallback bool
		want     []string
		attempt  bool
		note     string
	}{
		{"no state", State{}, false, []string{"a"}, false, ""},
		{"no state, fallback", State{}, true, []string{"a", "b", "c"}, false, ""},
		{"good only", State{Good: "b"}, false, []string{"b"}, false, ""},
		{"good, fallback", State{Good: "b"}, true, []string{"b", "a", "c"}, false, ""},
		{"trial", State{Good: "a", Trial: "b", TriesLeft: 1, TriesDone: 2}, false, []string{"b", "a"}, true, ""},
		{"trial used up", State{Good: "a", Trial: "b", TriesDone: 3}, false, []string{"a"}, false, "no tries left"},
		{"trial used up, fallback", State{Good: "a", Trial: "b", TriesDone: 3}, true, []string{"a", "c"}, false, "no tries left"},
		{"trial without good", State{Trial: "b", TriesLeft: 2}, false, []string{"b"}, true, ""},
		{"unknown slots ignored", State{Good: "x", Trial: "y", TriesLeft: 1}, false, []string{"a"}, false, ""},
		{"used-up trial, unknown good", State{Good: "x", Trial: "a", TriesDone: 1}, false, []string{"b"}, false, "no tries left"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.st.Plan(slots, tc.fallback)
			if !slices.Equal(p.Slots, tc.want) || p.Attempt != tc.attempt || !strings.Contains(p.Note, tc.note) || (tc.note == "" && p.Note != "") {
				t.Errorf("Plan = %+v, want %v attempt %v note %q", p, tc.want, tc.attempt, tc.note)
			}
		})
	}
}

func TestBless(t *testing.T) {
	for _, tc := range []struct {
		st     State
		booted string
		want   State
		err    string
	}{
		{State{Good: "a", Trial: "b", TriesLeft: 1, TriesDone: 2}, "b", State{Good: "b"}, ""},
		{State{Good: "a", Trial: "b", TriesLeft: 1}, "a", State{Good: "a", Trial: "b", TriesLeft: 1}, ""},
		{State{}, "a", State{Good: "a"}, ""},
		{State{Good: "a", Trial: "b", TriesLeft: 1}, "c", State{}, "neither on trial"},
		{State{Good: "a"}, "", State{}, "no booted slot"},
	} {
		got, err := tc.st.Bless(tc.booted)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%+v.Bless(%s): %v, want %q", tc.st, tc.booted, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%+v.Bless(%s) = %+v, %v; want %+v", tc.st, tc.booted, got, err, tc.want)
		}
	}
}

func TestReadStateRejects(t *testing.T) {
	for _, tc := range []struct{ name, content, want string }{
		{"garbage", "{{", "invalid"},
		{"unknown key", `{"good":"a","verify":false}`, "unknown field"},
		{"path in name", `{"good":"../a"}`, "slot name"},
		{"negative tries", `{"trial":"b","tries_left":-1}`, "out of range"},
		{"good on trial", `{"good":"a","trial":"a","tries_left":1}`, "both"},
		{"tries without trial", `{"good":"a","tries_done":1}`, "without a trial"},
		{"too large", `{"good":"a"}` + strings.Repeat(" ", 5000), "larger than"},
		// encoding/json alone took the last of two keys, a key in another
		// case, and the first of two values: a reader could see a
		// different state than a reviewer of the file.
		{"key twice", `{"good":"a","good":"b"}`, "given twice"},
		{"key in another case", `{"Good":"a"}`, "case-sensitive"},
		{"second value", `{"good":"a"} {"good":"b"}`, "more than one JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.MkdirAll(filepath.Join(dir, StateDir), 0o755)
			os.WriteFile(filepath.Join(dir, StateFile), []byte(tc.content), 0o644)
			if _, err := ReadState(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReadState: %v, want %q", err, tc.want)
			}
		})
	}
	if st, err := ReadState(t.TempDir()); err != nil || st != (State{}) {
		t.Errorf("missing state: %+v, %v", st, err)
	}
}

// TestWriteStateLeavesNoTemp: WriteState's temporary file is gone and the
// content round-trips.
func TestWriteStateLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	want := State{Good: "a", Trial: "b", TriesLeft: 2, TriesDone: 1}
	if err := WriteState(dir, want); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, StateDir))
	if len(entries) != 1 || entries[0].Name() != "slots.json" {
		t.Errorf("state dir holds %v", entries)
	}
	if got, err := ReadState(dir); err != nil || got != want {
		t.Errorf("ReadState = %+v, %v", got, err)
	}
	if err := WriteState(dir, State{Good: "a", Trial: "a"}); err == nil {
		t.Error("WriteState accepted an invalid state")
	}
}

// TestGCKeepsObjectSignatures: an object's builtin-signature file
// (objsig.Path) is kept while its object is referenced and removed with an
// unreferenced one.
func TestGCKeepsObjectSignatures(t *testing.T) {
	s := newSigner(t, "image signer")
	trust := signature.NewTrustStore(s.cert)
	srcStore := filepath.Join(t.TempDir(), "objects")
	b1 := build(t, s, srcStore, tree1)
	r, err := Open(filepath.Join(t.TempDir(), "composefs"))
	if err != nil {
		t.Fatal(err)
	}
	install(t, r, trust, "a", b1)
	info := testutil.ComposefsTool(t, "composefs-info")
	objs := strings.Fields(string(testutil.Run(t, info, "objects", b1.image)))
	for _, o := range objs {
		if err := os.WriteFile(r.Path(ObjectsDir, objsig.Path(o)), []byte("sig"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	orphan := objs[0][:3] + strings.Repeat("0", 62) + objsig.Suffix
	if err := os.WriteFile(r.Path(ObjectsDir, orphan), []byte("sig"), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := r.GC([]string{"a"}, false)
	if err != nil || !slices.Equal(g.Removed, []string{orphan}) {
		t.Fatalf("gc: %v, removed %v, want only %s", err, g, orphan)
	}
	for _, o := range objs {
		if _, err := os.Stat(r.Path(ObjectsDir, objsig.Path(o))); err != nil {
			t.Errorf("signature of referenced object %s: %v", o, err)
		}
	}
}

// TestInstallCopiesObjectSignatures: an object's builtin signature beside
// it in the source store (objsig's layout, what `cfsroot sign-objects`
// writes) is installed beside the object; a failed install removes it again.
func TestInstallCopiesObjectSignatures(t *testing.T) {
	s := newSigner(t, "image signer")
	trust := signature.NewTrustStore(s.cert)
	srcStore := filepath.Join(t.TempDir(), "objects")
	b := build(t, s, srcStore, tree1)
	data, _ := os.ReadFile(b.image)
	objs, err := readImageObjects(data)
	if err != nil {
		t.Fatal(err)
	}
	// Signatures of the objects' digests by the test key (the kernel is not
	// involved on tmpfs; the bytes must arrive unchanged).
	want := map[string][]byte{}
	for _, o := range objs[:3] {
		sig, err := signature.SignDigest(o.digest, s.key, s.cert)
		if err != nil {
			t.Fatal(err)
		}
		want[o.path] = sig
		os.WriteFile(filepath.Join(srcStore, objsig.Path(o.path)), sig, 0o644)
	}
	r, err := Open(filepath.Join(t.TempDir(), "composefs"))
	if err != nil {
		t.Fatal(err)
	}
	res := install(t, r, trust, "a", b)
	if res.Signatures != len(want) {
		t.Errorf("installed %d signatures, want %d", res.Signatures, len(want))
	}
	for p, sig := range want {
		got, err := os.ReadFile(r.Path(ObjectsDir, objsig.Path(p)))
		if err != nil || !bytes.Equal(got, sig) {
			t.Errorf("signature of %s: %v", p, err)
		}
	}
	// gc keeps them with their objects.
	if g, err := r.GC(nil, true); err != nil || len(g.Removed) != 0 {
		t.Errorf("gc would remove %v (%v)", g, err)
	}
}
