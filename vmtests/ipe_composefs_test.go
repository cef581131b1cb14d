package vmtests

import (
	"bytes"
	"crypto"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// buildComposefs writes the image of tree to image and its objects to
// objects, keeping executables external, as `cfsroot mkimage
// --external-exec --digest-store` does.
func buildComposefs(t *testing.T, tree, image, objects string) {
	t.Helper()
	store, err := composefs.OpenStore(objects)
	if err != nil {
		t.Fatal(err)
	}
	root, err := composefs.FromDir(tree, &composefs.BuildOptions{UseEpoch: true, ExternalExec: true, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := composefs.Write(&b, root, nil); err != nil {
		t.Fatal(err)
	}
	writeTB(t, image, b.Bytes())
}

// TestIPEComposefs boots the test kernel (policy signer in UEFI db), mounts
// composefs images as the init does (file-backed EROFS, overlay
// verity=require) and runs programs under three regimes:
//
//   - no policy: everything runs;
//   - the policy `ipe.Generate` makes for the image (--files exec, with the
//     image built with ExternalExec): the image's ELF program, its #! script
//     and its 16-byte #! script run; a copy of the program on tmpfs or on
//     ext4 without fs-verity, and a program of another image, are denied;
//   - `op=EXECUTE fsverity_signature=TRUE action=ALLOW`, with the other
//     image's objects enabled with builtin fs-verity signatures (made by
//     fsverity-utils, signer added to the .fs-verity keyring, which is then
//     restricted so that no other signer can be added): IPE sees the
//     signature through the overlay — one rule for a whole root, where
//     digest rules stop at about 570 files.
func TestIPEComposefs(t *testing.T) {
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "mkfs.ext4", "openssl", "fsverity")
	guestBin := vm.BuildStatic(t, "./vmtests/internal/ipeguest")
	dbCert, dbKey := vm.SigningCert(t, "cfsroot ipe composefs db")
	key, err := signature.LoadKey(dbKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := signature.LoadCertificate(dbCert)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(text string) []byte {
		if _, err := ipe.Check([]byte(text)); err != nil {
			t.Fatal(err)
		}
		p7, err := signature.Sign([]byte(text), key, cert, signature.Options{Hash: crypto.SHA256, IncludeCertificate: true})
		if err != nil {
			t.Fatal(err)
		}
		return p7
	}

	disk := t.TempDir()
	base := filepath.Join(disk, "composefs")
	tree := t.TempDir()
	writeTB(t, filepath.Join(tree, "bin/prog"), tinyELF(0))
	writeTB(t, filepath.Join(tree, "bin/script"), []byte("#!/cfs/bin/prog\n"+strings.Repeat("# a script longer than 64 bytes\n", 4)))
	writeTB(t, filepath.Join(tree, "bin/small"), []byte("#!/cfs/bin/prog\n"))
	writeTB(t, filepath.Join(tree, "etc/motd"), []byte("data, not a program\n"))
	for _, p := range []string{"bin/prog", "bin/script", "bin/small"} {
		if err := os.Chmod(filepath.Join(tree, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	buildComposefs(t, tree, filepath.Join(base, "root.cfs"), filepath.Join(base, "objects"))
	img, err := reader.Open(filepath.Join(base, "root.cfs"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := ipe.Generate(img, ipe.GenerateOptions{Name: "cfs_digests", Version: "0.0.1", Files: ipe.ExecFiles, Source: os.DirFS(tree)})
	img.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Policy.Digests) != 3 || len(g.InlineExecutables) != 0 {
		t.Fatalf("generated %d rules, inline executables %q; want 3 rules, none inline", len(g.Policy.Digests), g.InlineExecutables)
	}
	text, err := g.Policy.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	writeTB(t, filepath.Join(base, "digests.p7s"), sign(string(text)))
	writeTB(t, filepath.Join(base, "signature.p7s"), sign("policy_name=cfs_signature policy_version=0.0.2\n"+
		"DEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=DENY\nop=EXECUTE fsverity_signature=TRUE action=ALLOW\n"))

	// The other image; its objects get builtin signatures by fsverity-utils.
	tree2 := t.TempDir()
	writeTB(t, filepath.Join(tree2, "bin/sprog"), tinyELF(5))
	if err := os.Chmod(filepath.Join(tree2, "bin/sprog"), 0o755); err != nil {
		t.Fatal(err)
	}
	buildComposefs(t, tree2, filepath.Join(base, "signed.cfs"), filepath.Join(base, "sobjects"))
	fvCert, fvKey := vm.SigningCert(t, "cfsroot fs-verity signer")
	sobjects := filepath.Join(base, "sobjects")
	err = filepath.WalkDir(sobjects, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(sobjects, p)
		out := filepath.Join(base, "sigs", rel+".sig")
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		runCmdTB(t, "fsverity", "sign", "--key="+fvKey, "--cert="+fvCert, p, out)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	runCmdTB(t, "openssl", "x509", "-in", fvCert, "-outform", "der", "-out", filepath.Join(base, "fsverity-cert.der"))
	otherCert, _ := vm.SigningCert(t, "cfsroot fs-verity intruder")
	runCmdTB(t, "openssl", "x509", "-in", otherCert, "-outform", "der", "-out", filepath.Join(base, "other-cert.der"))

	image := vm.Ext4(t, disk, "ipecfs", "32M")
	initrd := vm.Initramfs(t, initramfs.Spec{Init: guestBin, ModuleDir: k.Modules, Modules: vm.BootModules})
	res := vm.Boot(t, vm.Options{Name: "ipecfs", Kernel: k.Image, Initramfs: initrd, Disks: []string{image}, DBCerts: []string{dbCert}})
	r := res.Require(t, "cfs-setup", "cfs-keyring-lock", "cfs-no-policy", "cfs-digests", "cfs-signature", "done")
	// Root can add keys to .fs-verity until the keyring is restricted; then
	// a certificate not signed by a builtin key is refused.
	if lock := r["cfs-keyring-lock"].Data; lock["restrict"] != "OK" || lock["add-after-lock"] == "OK" {
		t.Errorf("locking .fs-verity: restrict %s, adding a certificate afterwards %s; want OK and a refusal", lock["restrict"], lock["add-after-lock"])
	}
	t.Logf("cfs-keyring-lock: %v", r["cfs-keyring-lock"].Data)

	const ok, denied = "OK", "EACCES"
	want := map[string]map[string]string{
		"cfs-no-policy": {"image-elf": ok, "image-script": ok, "image-small-script": ok, "tmpfs-copy": ok, "ext4-copy": ok, "signed-image-elf": ok},
		"cfs-digests":   {"image-elf": ok, "image-script": ok, "image-small-script": ok, "tmpfs-copy": denied, "ext4-copy": denied, "signed-image-elf": denied},
		"cfs-signature": {"image-elf": denied, "image-script": denied, "image-small-script": denied, "tmpfs-copy": denied, "ext4-copy": denied, "signed-image-elf": ok},
	}
	for _, regime := range []string{"cfs-no-policy", "cfs-digests", "cfs-signature"} {
		for prog, w := range want[regime] {
			if got := r[regime].Data[prog]; got != w {
				t.Errorf("%s: %s: %s, want %s", regime, prog, got, w)
			}
		}
		t.Logf("%s: %v", regime, r[regime].Data)
	}
}

func runCmdTB(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}
