package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// TestSignObjects signs every object of an image built by mkcomposefs and
// checks each signature file against fsverity-utils: `fsverity sign` of the
// object with the same RSA key writes the same bytes (PKCS#1 v1.5 is
// deterministic), so the kernel takes ours as it takes theirs. Signing again
// keeps valid signatures and replaces a damaged one; a missing object and a
// key that does not match its certificate are errors. `cfsroot check
// --signers` reports signature files that are missing or by another signer.
func TestSignObjects(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	mk := composefsTool(t, "mkcomposefs")
	dir := t.TempDir()
	key, cert := opensslKey(t, dir, "objects", "-newkey", "rsa:2048")
	_, otherCert := opensslKey(t, dir, "other", "-newkey", "rsa:2048")
	tree := makeTestTree(t)
	store := filepath.Join(dir, "store")
	img := filepath.Join(dir, "test.cfs")
	testutil.Run(t, mk, "--digest-store="+store, tree, img)
	objects := strings.Fields(string(testutil.Run(t, composefsTool(t, "composefs-info"), "objects", img)))
	if len(objects) < 2 {
		t.Fatalf("composefs-info objects: %v, want at least 2", objects)
	}

	out, _, err := runCLI(t, "sign-objects", "--key", key, "--cert", cert, "--store", store, img)
	want := "3 objects: 3 signed, 0 already signed by CN=objects, 0 failed"
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("sign-objects: %v\n%s\nwant %q", err, out, want)
	}
	for _, o := range objects {
		ref := filepath.Join(dir, "ref.sig")
		testutil.Run(t, "fsverity", "sign", "--key="+key, "--cert="+cert, filepath.Join(store, o), ref)
		wantSig, _ := os.ReadFile(ref)
		got, err := os.ReadFile(filepath.Join(store, o+".sig"))
		if err != nil || !bytes.Equal(got, wantSig) {
			t.Errorf("%s.sig differs from fsverity sign's output (err %v)", o, err)
		}
	}

	// Again: nothing to do. A damaged signature is made again.
	out, _, err = runCLI(t, "sign-objects", "--key", key, "--cert", cert, "--store", store, img)
	if err != nil || !strings.Contains(out, "3 objects: 0 signed, 3 already signed") {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	damaged := filepath.Join(store, objects[0]+".sig")
	if err := os.WriteFile(damaged, []byte("not a signature"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, "sign-objects", "--threads", "1", "--key", key, "--cert", cert, "--store", store, img)
	if err != nil || !strings.Contains(out, "3 objects: 1 signed, 2 already signed") {
		t.Fatalf("after damaging a signature: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(damaged); bytes.Equal(b, []byte("not a signature")) {
		t.Errorf("damaged signature kept")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(store, "*", ".tmp-sig*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// check --signers reads the .sig files here (no fs-verity on the host).
	out, _, err = runCLI(t, "check", "--store", store, "--signers", cert, img)
	if err != nil || !strings.Contains(out, "3 objects: 3 present with the right size and a builtin signature by a given signer, 0 missing, 0 corrupt, 0 unsigned, 0 signed by another signer (3 without fs-verity") {
		t.Errorf("check --signers: %v\n%s", err, out)
	}
	out, _, err = runCLI(t, "check", "--store", store, "--signers", otherCert, img)
	if err == nil || !strings.Contains(out, "0 unsigned, 3 signed by another signer") || !strings.Contains(out, "untrusted "+objects[0]+".sig") {
		t.Errorf("check --signers OTHER: %v\n%s", err, out)
	}
	if err := os.Remove(damaged); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, "check", "--store", store, "--signers", cert, img)
	if err == nil || !strings.Contains(out, "1 unsigned, 0 signed by another signer") || !strings.Contains(out, "unsigned "+objects[0]+": no fs-verity and no signature file") {
		t.Errorf("check --signers with a signature file removed: %v\n%s", err, out)
	}

	if err := os.Remove(filepath.Join(store, objects[1])); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, "sign-objects", "--key", key, "--cert", cert, "--store", store, img)
	if err == nil || !strings.Contains(out, objects[1]+": object missing from the store") || !strings.Contains(out, "1 signed, 1 already signed by CN=objects, 1 failed") {
		t.Errorf("missing object: err %v\n%s", err, out)
	}
	if _, _, err := runCLI(t, "sign-objects", "--key", key, "--cert", otherCert, "--store", store, img); err == nil ||
		!strings.Contains(err.Error(), "does not belong to certificate") {
		t.Errorf("key of another certificate: err %v", err)
	}
}

func TestObjectCommandsUsage(t *testing.T) {
	for _, args := range [][]string{
		{"sign-objects", "--store", "x", "img"},
		{"sign-objects", "--key", "k", "--cert", "c", "img"},
		{"sign-objects", "--key", "k", "--cert", "c", "--store", "x"},
		{"enable-objects", "img"},
		{"enable-objects", "--store", "x"},
		{"enable-objects", "--store", "x", "--unsigned", "--trusted", "c", "img"},
	} {
		_, _, err := runCLI(t, args...)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: err %v, want a usage error", args, err)
		}
	}
}
