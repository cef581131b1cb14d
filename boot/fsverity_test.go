package boot

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// TestRunFsveritySigners: with fsverity_certs, the init hands the object
// signers to the .fs-verity keyring before it mounts the disk, lists them in
// status.json and measures each one's fingerprint right after the image
// signer (as measure.Events and so `cfsroot pcr predict --fsverity-signers`
// do); if the keyring cannot take them, or the certificates are missing,
// the boot stops at step fsverity-keys.
func TestRunFsveritySigners(t *testing.T) {
	h := newHostEnv(t)
	h.withTPM()
	_, objCert := testKey(t, "cfsroot object signer")
	_, objCert2 := testKey(t, "cfsroot object signer 2")
	h.writeCert("etc/cfsroot/fsverity-certs/a.pem", objCert)
	h.writeCert("etc/cfsroot/fsverity-certs/b.pem", objCert2)
	var trusted []*x509.Certificate
	var trustErr error
	h.env.TrustFsveritySigners = func(certs []*x509.Certificate) error {
		if h.called("mount", "disk") {
			return errors.New("called after the disk was mounted")
		}
		trusted = certs
		return trustErr
	}
	d := h.addImage("default", h.key, h.cert)
	cfg := h.config(baseConfig + `, "fsverity_certs": "/etc/cfsroot/fsverity-certs"}`)
	st, err := h.run(cfg, "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	if len(trusted) != 2 {
		t.Fatalf("keyring got %d certificates, want 2", len(trusted))
	}
	want := []CertStatus{{trusted[0].Subject.String(), signature.Fingerprint(trusted[0])}, {trusted[1].Subject.String(), signature.Fingerprint(trusted[1])}}
	if !slices.Equal(st.FsveritySigners, want) || !slices.Equal(h.readStatus().FsveritySigners, want) {
		t.Errorf("status fsverity_signers %v, want %v", st.FsveritySigners, want)
	}
	evs, err := measure.Events(measure.ImageInfo{Name: "default", Digest: d, Signer: h.cert, FsveritySigners: trusted})
	if err != nil {
		t.Fatal(err)
	}
	if evs[2].Data != "cfsroot-fsverity-signer:sha256:"+signature.Fingerprint(trusted[0]) {
		t.Errorf("third event %q, want the first object signer", evs[2].Data)
	}
	h.wantEvents(st, evs)
	if st.Steps[1].Step != "fsverity-keys" {
		t.Errorf("steps %v: want fsverity-keys right after config", st.Steps)
	}

	trustErr = errors.New("keyring says no")
	h.mounter.calls = nil
	if _, err := h.run(cfg, ""); err == nil || !strings.Contains(err.Error(), "step fsverity-keys failed: /etc/cfsroot/fsverity-certs: keyring says no") {
		t.Errorf("keyring refusal: %v", err)
	}
	trustErr = nil
	os.RemoveAll(filepath.Join(h.root, "etc/cfsroot/fsverity-certs"))
	if _, err := h.run(cfg, ""); err == nil || !strings.Contains(err.Error(), "step fsverity-keys failed") {
		t.Errorf("missing certificates: %v", err)
	}
}

// TestRunProvisionSigned: with fsverity_certs, provision_verity enables each
// object with the builtin signature beside it (exactly its bytes), the
// image without one; an object without a signature file is not enabled
// (enabled unsigned it could never be signed) and the error is recorded.
func TestRunProvisionSigned(t *testing.T) {
	h := newHostEnv(t)
	_, objCert := testKey(t, "cfsroot object signer")
	h.writeCert("etc/cfsroot/fsverity-certs/a.pem", objCert)
	h.env.TrustFsveritySigners = func([]*x509.Certificate) error { return nil }
	objects := h.addThreeObjectImage("default")
	sigs := map[string][]byte{}
	for i, o := range objects[:2] {
		sigs[filepath.Base(o)] = []byte(fmt.Sprintf("signature %d", i))
		h.write(strings.TrimPrefix(objsig.Path(o), h.root), sigs[filepath.Base(o)], 0o444)
	}
	h.noVeri["default.cfs"] = true
	for _, o := range objects {
		h.noVeri[filepath.Base(o)] = true
	}
	got := map[string][]byte{}
	h.env.EnableVerity = func(f *os.File, sig []byte) error {
		got[filepath.Base(f.Name())] = sig
		delete(h.noVeri, filepath.Base(f.Name()))
		return nil
	}
	st, err := h.run(h.config(baseConfig+`, "tpm": "optional", "provision_verity": true, "fsverity_certs": "/etc/cfsroot/fsverity-certs"}`), "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	unsigned := filepath.Base(objects[2])
	for name, want := range sigs {
		if !bytes.Equal(got[name], want) {
			t.Errorf("object %s enabled with %q, want its signature file %q", name, got[name], want)
		}
	}
	if s, ok := got["default.cfs"]; !ok || s != nil {
		t.Errorf("image enabled %v with signature %q, want enabled without one", ok, s)
	}
	if _, ok := got[unsigned]; ok {
		t.Errorf("object %s without a signature file was enabled", unsigned)
	}
	if p := st.Provision; p == nil || p.Objects != 2 || len(p.Errors) != 1 || !strings.Contains(p.Errors[0], "no builtin signature") {
		t.Errorf("provision status %+v", p)
	}
}

// addStoreImage builds image NAME of tree with its objects in the
// repository's store, signs it with h's key, and returns the store and the
// image's digest.
// addThreeObjectImage adds slot name: a signed image of three 100-byte
// files (external, so each is an object in the store) and returns the
// objects' paths, sorted.
func (h *hostEnv) addThreeObjectImage(name string) []string {
	h.t.Helper()
	tree := h.t.TempDir()
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(tree, fmt.Sprintf("file%d", i)), bytes.Repeat([]byte{byte('a' + i)}, 100), 0o644); err != nil {
			h.t.Fatal(err)
		}
	}
	store, _ := h.addStoreImage(name, tree)
	var objects []string
	err := filepath.Walk(store.Dir(), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			objects = append(objects, p)
		}
		return err
	})
	if err != nil || len(objects) != 3 {
		h.t.Fatalf("store holds %v (%v), want 3 objects", objects, err)
	}
	slices.Sort(objects)
	return objects
}

func (h *hostEnv) addStoreImage(name, tree string) (*composefs.Store, verity.Digest) {
	h.t.Helper()
	store, err := composefs.OpenStore(filepath.Join(h.repoDir(), "objects"))
	if err != nil {
		h.t.Fatal(err)
	}
	root, err := composefs.FromDir(tree, &composefs.BuildOptions{Store: store})
	if err != nil {
		h.t.Fatal(err)
	}
	var img bytes.Buffer
	res, err := composefs.Write(&img, root, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	sig, err := signature.SignDigest(res.Digest, h.key, h.cert)
	if err != nil {
		h.t.Fatal(err)
	}
	h.write(strings.TrimPrefix(h.imagePath(name), h.root), img.Bytes(), 0o444)
	h.write(strings.TrimPrefix(h.imagePath(name), h.root)+".sig", sig, 0o444)
	return store, res.Digest
}
