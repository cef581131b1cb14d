package vmtests

import (
	"bytes"
	"crypto"
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
//   - `op=EXECUTE fsverity_signature=TRUE action=ALLOW` (`policy generate
//     --mode signature`), with the objects of a second image signed by
//     `cfsroot sign-objects` and enabled by `cfsroot enable-objects` in the
//     guest, after objsig.TrustSigners (what the init does) added their
//     signer to the .fs-verity keyring and locked it: IPE sees the
//     signature through the overlay — one rule for a whole root, where
//     digest rules stop at about 570 files.
//
// A third image holds one signed object, one enabled without a signature
// before the install and one signed by a key not in the keyring:
// enable-objects enables the first, reports the other two and exits 1,
// `check --signers` reports them too, and under the signature policy the
// unsigned one is denied and the stranger's cannot even be opened
// (verity=require: it has no fs-verity). Running enable-objects again on
// the signed image finds its signatures already in place (read back with
// FS_IOC_READ_VERITY_METADATA), and adding a certificate after the lock
// fails.
func TestIPEComposefs(t *testing.T) {
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "mkfs.ext4", "openssl", "fsverity")
	guestBin := vm.BuildStatic(t, "./vmtests/internal/ipeguest")
	dbCert, dbKey := vm.SigningCert(t, "cfsroot ipe composefs db")
	key, cert := loadSignerTB(t, dbKey, dbCert)
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
	sigPolicy := ipe.Policy{Name: "cfs_signature", Version: "0.0.2", AllowSigned: true}
	sigText, err := sigPolicy.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	writeTB(t, filepath.Join(base, "signature.p7s"), sign(string(sigText)))

	// The other image; its objects get builtin signatures by
	// `cfsroot sign-objects` (same bytes as fsverity sign: TestSignObjects).
	cfsroot := vm.BuildStatic(t, "./cmd/cfsroot")
	tree2 := t.TempDir()
	writeTB(t, filepath.Join(tree2, "bin/sprog"), tinyELF(5))
	if err := os.Chmod(filepath.Join(tree2, "bin/sprog"), 0o755); err != nil {
		t.Fatal(err)
	}
	buildComposefs(t, tree2, filepath.Join(base, "signed.cfs"), filepath.Join(base, "sobjects"))
	fvCert, fvKey := vm.SigningCert(t, "cfsroot fs-verity signer")
	runTool(t, cfsroot, "sign-objects", "--key", fvKey, "--cert", fvCert, "--store", filepath.Join(base, "sobjects"), filepath.Join(base, "signed.cfs"))
	runCmdTB(t, "cp", fvCert, filepath.Join(base, "fsverity-cert.pem"))
	otherCert, otherKey := vm.SigningCert(t, "cfsroot fs-verity intruder")
	runCmdTB(t, "openssl", "x509", "-in", otherCert, "-outform", "der", "-out", filepath.Join(base, "other-cert.der"))

	// The mixed image: bin/stranger's object is signed by the intruder.
	tree3 := t.TempDir()
	for i, name := range []string{"bin/good", "bin/unsigned", "bin/stranger"} {
		writeTB(t, filepath.Join(tree3, name), tinyELF(6+i))
		if err := os.Chmod(filepath.Join(tree3, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mobjects := filepath.Join(base, "mobjects")
	buildComposefs(t, tree3, filepath.Join(base, "mixed.cfs"), mobjects)
	runTool(t, cfsroot, "sign-objects", "--key", fvKey, "--cert", fvCert, "--store", mobjects, filepath.Join(base, "mixed.cfs"))
	mimg, err := reader.Open(filepath.Join(base, "mixed.cfs"))
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := mimg.Lookup("/bin/stranger")
	mimg.Close()
	if err != nil {
		t.Fatal(err)
	}
	strangerObj := filepath.Join(mobjects, stranger.Payload)
	runTool(t, cfsroot, "sign", "--key", otherKey, "--cert", otherCert, strangerObj, strangerObj+".sig")

	image := vm.Ext4(t, disk, "ipecfs", "32M")
	initrd := vm.Initramfs(t, initramfs.Spec{Init: guestBin, ModuleDir: k.Modules, Modules: vm.BootModules,
		Files: []initramfs.File{{Src: cfsroot, Dst: "/bin/cfsroot"}}})
	res := vm.Boot(t, vm.Options{Name: "ipecfs", Kernel: k.Image, Initramfs: initrd, Disks: []string{image}, DBCerts: []string{dbCert}})
	r := res.Require(t, "cfs-setup", "cfs-keyring-lock", "cfs-no-policy", "cfs-digests", "cfs-signature", "done")
	setup := r["cfs-setup"].Data
	for _, c := range []struct {
		name, exit string
		want       []string
	}{
		{"enable-signed", "OK", []string{"1 objects: 1 enabled with their signature, 0 already enabled with it, 0 already enabled with another trusted signature, 0 failed"}},
		{"enable-signed-again", "OK", []string{"1 objects: 0 enabled with their signature, 1 already enabled with it,"}},
		{"check-signed", "OK", []string{"1 objects: 1 present with the right size and a builtin signature by a given signer, 0 missing, 0 corrupt, 0 unsigned, 0 signed by another signer (0 without fs-verity"}},
		{"enable-mixed", "1", []string{"enabled without a builtin signature", "not in the .fs-verity keyring", "3 objects: 1 enabled with their signature, 0 already enabled with it, 0 already enabled with another trusted signature, 2 failed"}},
		{"check-mixed", "1", []string{"unsigned " + composefsObjectOf(t, filepath.Join(base, "mixed.cfs"), "/bin/unsigned") + ": fs-verity is enabled without a builtin signature",
			"untrusted " + stranger.Payload + ".sig", "1 unsigned, 1 signed by another signer (1 without fs-verity"}},
		{"enable-root", "OK", []string{"with fs-verity (no signatures), 0 failed"}},
	} {
		if got := setup[c.name+"-exit"]; got != c.exit {
			t.Errorf("%s: exit %s, want %s\n%s", c.name, got, c.exit, setup[c.name])
		}
		for _, w := range c.want {
			if !strings.Contains(setup[c.name], w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, setup[c.name])
			}
		}
		t.Logf("%s (exit %s):\n%s", c.name, setup[c.name+"-exit"], setup[c.name])
	}
	// The keyring is locked (objsig.TrustSigners): root cannot add a key.
	if got := r["cfs-keyring-lock"].Data["add-after-lock"]; got == "OK" || got == "" {
		t.Errorf("adding a certificate to .fs-verity after the lock: %q, want a refusal", got)
	}
	t.Logf("cfs-keyring-lock: %v", r["cfs-keyring-lock"].Data)

	const ok, denied, noVerity = "OK", "EACCES", "EIO"
	want := map[string]map[string]string{
		"cfs-no-policy": {"image-elf": ok, "image-script": ok, "image-small-script": ok, "tmpfs-copy": ok, "ext4-copy": ok, "signed-image-elf": ok,
			"mixed-signed": ok, "mixed-unsigned": ok, "mixed-stranger": noVerity},
		"cfs-digests": {"image-elf": ok, "image-script": ok, "image-small-script": ok, "tmpfs-copy": denied, "ext4-copy": denied, "signed-image-elf": denied,
			"mixed-signed": denied, "mixed-unsigned": denied, "mixed-stranger": noVerity},
		"cfs-signature": {"image-elf": denied, "image-script": denied, "image-small-script": denied, "tmpfs-copy": denied, "ext4-copy": denied, "signed-image-elf": ok,
			"mixed-signed": ok, "mixed-unsigned": denied, "mixed-stranger": noVerity},
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

// composefsObjectOf returns the object path of the file p in image.
func composefsObjectOf(t *testing.T, image, p string) string {
	t.Helper()
	img, err := reader.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	e, err := img.Lookup(p)
	if err != nil {
		t.Fatal(err)
	}
	return e.Payload
}
