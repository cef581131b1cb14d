package vmtests

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// TestBootObjectSignerMismatch: the objects of a signed image were enabled
// with builtin signatures by key A (a provisioning boot that trusted A); an
// initramfs whose fsverity_certs is A boots it, one whose fsverity_certs is
// only B fails closed: the kernel cannot open an object whose signer is not
// in the .fs-verity keyring, the init stops at init-check saying so (with
// the kernel's own message on the console), and nothing from the image
// runs.
func TestBootObjectSignerMismatch(t *testing.T) {
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "swtpm", "mkfs.ext4", "openssl")
	tree := t.TempDir()
	rootinit, err := os.ReadFile(vm.BuildStatic(t, "./vmtests/internal/rootinit"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tree, "sbin/init"), rootinit)
	if err := os.Chmod(filepath.Join(tree, "sbin/init"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tree, "etc/rootinit/read"), []byte("/usr/share/cfsroot/hello.txt\n"))
	write(t, filepath.Join(tree, "usr/share/cfsroot/hello.txt"), bytes.Repeat([]byte("hello from a signed object\n"), 10))
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}

	diskTree := t.TempDir()
	objects := filepath.Join(diskTree, "composefs", "objects")
	img := filepath.Join(diskTree, "composefs", "images", "default.cfs")
	buildComposefs(t, tree, img, objects)
	imgCert, imgKey := vm.SigningCert(t, "cfsroot vmtest image signer")
	d, err := verity.DigestFile(img, verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	writeTB(t, img+".sig", signDigestTB(t, d, imgKey, imgCert))
	certA, keyA := vm.SigningCert(t, "cfsroot vmtest object signer A")
	certB, _ := vm.SigningCert(t, "cfsroot vmtest object signer B")
	err = filepath.WalkDir(objects, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		od, err := verity.DigestFile(p, verity.Params{})
		if err != nil {
			return err
		}
		return os.WriteFile(objsig.Path(p), signDigestTB(t, od, keyA, certA), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}

	disk := vm.Ext4(t, diskTree, "cfsroot-sigobj", "64M")
	provision := vm.BuildStatic(t, "./vmtests/internal/provision")
	pres := vm.Boot(t, vm.Options{Name: "sigobj-provision", Kernel: k.Image, Disks: []string{disk},
		Initramfs: vm.Initramfs(t, initramfs.Spec{Init: provision, ModuleDir: k.Modules, Modules: vm.BootModules, FsverityCerts: []string{certA}})})
	if r, ok := pres.Result("provision"); !ok || !r.OK || pres.Contains(`"name":"provision-refused"`) {
		t.Fatalf("provisioning with A trusted: %+v (console %s)", r, pres.LogFile)
	}

	initBin := vm.BuildStatic(t, "./init")
	cfg := write(t, filepath.Join(t.TempDir(), "config"), []byte(`{"disk": "LABEL=cfsroot-sigobj", "slots": ["default"],
  "tpm": "optional", "fsverity_certs": "/etc/cfsroot/fsverity-certs"}`))
	for _, tc := range []struct {
		name    string
		trusted string
		ok      bool
	}{{"A trusted", certA, true}, {"only B trusted", certB, false}} {
		t.Run(tc.name, func(t *testing.T) {
			initrd := vm.Initramfs(t, initramfs.Spec{Init: initBin, ModuleDir: k.Modules, Modules: vm.BootModules,
				Certs: []string{imgCert}, FsverityCerts: []string{tc.trusted}, Config: cfg})
			res := vm.Boot(t, vm.Options{Name: vmName(t), Kernel: k.Image, Initramfs: initrd, Disks: []string{disk}})
			if res.End != vm.PowerOff {
				t.Errorf("VM ended with %s, want poweroff (console %s)", res.End, res.LogFile)
			}
			if tc.ok {
				r := res.Require(t, "status", "rootinit-done")
				var st boot.Status
				if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil || len(st.FsveritySigners) != 1 ||
					st.FsveritySigners[0].Subject != "CN=cfsroot vmtest object signer A" {
					t.Errorf("status.json (%v): %s", err, r["status"].Data["json"])
				}
				return
			}
			for _, w := range []string{"step init-check failed", "/sbin/init cannot be read", "input/output error",
				"signing cert isn't in the fs-verity keyring", "BOOT FAILED"} {
				if !res.Contains(w) {
					t.Errorf("console lacks %q (log %s)", w, res.LogFile)
				}
			}
			if res.Contains(`"name":"status"`) {
				t.Errorf("the image's init ran (log %s)", res.LogFile)
			}
		})
	}
}

// loadSignerTB loads a signing key and its certificate (as vm.SigningCert or
// openssl writes them), failing the test if either does not load.
func loadSignerTB(t testing.TB, keyPath, certPath string) (crypto.Signer, *x509.Certificate) {
	t.Helper()
	key, err := signature.LoadKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := signature.LoadCertificate(certPath)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

// signDigestTB signs a digest as `cfsroot sign` does, with the key and
// certificate at the given paths.
func signDigestTB(t *testing.T, d verity.Digest, keyPath, certPath string) []byte {
	t.Helper()
	key, cert := loadSignerTB(t, keyPath, certPath)
	sig, err := signature.SignDigest(d, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}
