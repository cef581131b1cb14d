package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// TestCheck builds an image and its object store with mkcomposefs, then
// removes one object and corrupts another (same size, one byte flipped):
// the missing one is reported always, as composefs-info missing-objects
// reports it; the corrupt one only with --verify.
func TestCheck(t *testing.T) {
	mk, info := composefsTool(t, "mkcomposefs"), composefsTool(t, "composefs-info")
	tree := makeTestTree(t)
	store := t.TempDir()
	img := filepath.Join(t.TempDir(), "test.cfs")
	testutil.Run(t, mk, "--digest-store="+store, tree, img)

	check := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(append([]string{"check"}, args...), &out, &errb)
		return out.String(), err
	}

	out, err := check("--store", store, "--verify", img)
	if err != nil || !strings.Contains(out, "3 objects: 3 present with the right size and digest, 0 missing, 0 corrupt") {
		t.Fatalf("intact store: %v\n%s", err, out)
	}

	objs := strings.Fields(string(testutil.Run(t, info, "objects", img)))
	if len(objs) != 3 {
		t.Fatalf("composefs-info objects: %v", objs)
	}
	missing, corrupted := objs[0], objs[1]
	if err := os.Remove(filepath.Join(store, missing)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(store, corrupted)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The oracle for "missing": composefs-info's own missing-objects.
	if got := strings.TrimSpace(string(testutil.Run(t, info, "--basedir="+store, "missing-objects", img))); got != missing {
		t.Fatalf("composefs-info missing-objects = %q, want %q", got, missing)
	}

	out, err = check("--store", store, img)
	if err == nil || !strings.Contains(out, "missing "+missing) || strings.Contains(out, "corrupt "+corrupted) ||
		!strings.Contains(out, "3 objects: 2 present with the right size, 1 missing, 0 corrupt") {
		t.Errorf("without --verify: err %v\n%s", err, out)
	}
	out, err = check("--verify", img, "--store", store)
	if err == nil || !strings.Contains(err.Error(), "2 problem(s)") || !strings.Contains(out, "missing "+missing) ||
		!strings.Contains(out, "corrupt "+corrupted+": fs-verity digest sha256:") ||
		!strings.Contains(out, "3 objects: 1 present with the right size and digest, 1 missing, 1 corrupt") {
		t.Errorf("with --verify: err %v\n%s", err, out)
	}

	// A truncated object is caught by its size, even without --verify.
	if err := os.WriteFile(p, data[:10], 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = check("--store", store, img)
	if err == nil || !strings.Contains(out, "corrupt "+corrupted+": 10 bytes, the image expects") {
		t.Errorf("truncated object: err %v\n%s", err, out)
	}
}

func TestCheckUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run([]string{"check", "x.cfs"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "--store DIR is required") {
		t.Errorf("no --store: %v", err)
	}
	if err := run([]string{"check", "--store", t.TempDir()}, &out, &errb); err == nil || !strings.Contains(err.Error(), "no IMAGE") {
		t.Errorf("no image: %v", err)
	}
	if err := run([]string{"check", "--store", filepath.Join(t.TempDir(), "nope"), "x.cfs"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "object store") {
		t.Errorf("missing store: %v", err)
	}
}
