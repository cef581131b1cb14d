package vmtests

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/measure/eventlog"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// The images on the test disk. All come from one tree and share objects.
const (
	goodImage      = "default"   // signed by the trusted key
	tamperedImage  = "tampered"  // one byte changed after signing
	untrustedImage = "untrusted" // signed by a key the initramfs does not trust
	unsignedImage  = "nosig"     // no .sig file
	ramImage       = "ramcopy"   // signed, but left without fs-verity on disk
	runLinkImage   = "runlink"   // signed; its /run is a symlink to /var/run
	diskLabel      = "cfsroot-test"
)

// Files the booted root reads through the overlay (see rootinit). The
// object of badObjectFile is left without fs-verity, so verity=require must
// make reading it fail.
var rootFiles = map[string][]byte{
	"/usr/share/cfsroot/hello.txt": bytes.Repeat([]byte("hello from a verified composefs root\n"), 100),
	"/etc/small":                   []byte("inline: 64 bytes or less\n"),
}

const badObjectFile = "/usr/share/cfsroot/unverified.bin"

// fixture is a provisioned disk (fs-verity enabled in a first VM boot)
// and what the tests need to check against.
type fixture struct {
	kernel   vm.Kernel
	disk     string // provisioned disk image; copy it before booting
	cert     string // trusted certificate (PEM)
	certX509 *signature.TrustStore
	digest   verity.Digest // of the good image
	initBin  string
	// extraDisks are attached after the (copied) disk, as they are.
	extraDisks []string
}

var (
	fixtureOnce sync.Once
	theFixture  *fixture
	fixtureErr  string
)

// bootFixture builds the root tree, images, signatures and disk once, and
// provisions fs-verity on it in a VM.
func bootFixture(t *testing.T) *fixture {
	t.Helper()
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "swtpm", "mkfs.ext4", "fsverity")
	fixtureOnce.Do(func() { theFixture, fixtureErr = buildFixture(t, k) })
	if theFixture == nil {
		t.Fatalf("boot fixture: %s", fixtureErr)
	}
	return theFixture
}

func buildFixture(t *testing.T, k vm.Kernel) (*fixture, string) {
	// The fixture outlives the test that builds it: use a directory of
	// its own, removed at the end of the package's tests (TestMain).
	dir, err := os.MkdirTemp("", "cfsroot-vmtest-")
	if err != nil {
		return nil, err.Error()
	}
	fixtureDirs = append(fixtureDirs, dir)
	f := &fixture{kernel: k}

	// The root tree: rootinit as /sbin/init, files to read, mount points.
	tree := filepath.Join(dir, "tree")
	rootinit := vm.BuildStatic(t, "./vmtests/internal/rootinit")
	var readList []string
	files := map[string][]byte{badObjectFile: bytes.Repeat([]byte("this object will lack fs-verity\n"), 10)}
	for p, b := range rootFiles {
		files[p] = b
		readList = append(readList, p)
	}
	readList = append(readList, badObjectFile)
	files["/etc/rootinit/read"] = []byte(strings.Join(readList, "\n") + "\n")
	for p, b := range files {
		write(t, filepath.Join(tree, p), b)
	}
	initData, err := os.ReadFile(rootinit)
	if err != nil {
		return nil, err.Error()
	}
	if err := os.MkdirAll(filepath.Join(tree, "sbin"), 0o755); err != nil {
		return nil, err.Error()
	}
	if err := os.WriteFile(filepath.Join(tree, "sbin/init"), initData, 0o755); err != nil {
		return nil, err.Error()
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}

	// Images and objects, as an installer lays them out.
	diskTree := filepath.Join(dir, "disk")
	images := filepath.Join(diskTree, "composefs", "images")
	os.MkdirAll(images, 0o755)
	store, err := composefs.OpenStore(filepath.Join(diskTree, "composefs", "objects"))
	if err != nil {
		return nil, err.Error()
	}
	root, err := composefs.FromDir(tree, &composefs.BuildOptions{Store: store})
	if err != nil {
		return nil, err.Error()
	}
	var img bytes.Buffer
	res, err := composefs.Write(&img, root, nil)
	if err != nil {
		return nil, err.Error()
	}
	f.digest = res.Digest

	// The same root with /run a symlink to /var/run (TestBootRunSymlink).
	runTree := filepath.Join(dir, "tree-runlink")
	if err := os.CopyFS(runTree, os.DirFS(tree)); err != nil {
		return nil, err.Error()
	}
	os.Remove(filepath.Join(runTree, "run"))
	os.MkdirAll(filepath.Join(runTree, "var/run"), 0o755)
	if err := os.Symlink("/var/run", filepath.Join(runTree, "run")); err != nil {
		return nil, err.Error()
	}
	runRoot, err := composefs.FromDir(runTree, &composefs.BuildOptions{Store: store})
	if err != nil {
		return nil, err.Error()
	}
	var runImg bytes.Buffer
	runRes, err := composefs.Write(&runImg, runRoot, nil)
	if err != nil {
		return nil, err.Error()
	}

	// Keys and everything the tests boot with live in dir: the vm helpers'
	// temporary directories end with the test that builds the fixture.
	certTmp, keyTmp := vm.SigningCert(t, "cfsroot vmtest image signer")
	keyPath := keep(t, dir, keyTmp)
	f.cert = keep(t, dir, certTmp)
	sig := signDigestTB(t, f.digest, keyPath, f.cert)
	otherCert, otherKey := vm.SigningCert(t, "cfsroot vmtest untrusted signer")
	for name, content := range map[string][]byte{
		goodImage + ".cfs":          img.Bytes(),
		goodImage + ".cfs.sig":      sig,
		tamperedImage + ".cfs":      tamper(img.Bytes()),
		tamperedImage + ".cfs.sig":  sig,
		untrustedImage + ".cfs":     img.Bytes(),
		untrustedImage + ".cfs.sig": signDigestTB(t, f.digest, otherKey, otherCert),
		unsignedImage + ".cfs":      img.Bytes(),
		ramImage + ".cfs":           img.Bytes(),
		ramImage + ".cfs.sig":       sig,
		runLinkImage + ".cfs":       runImg.Bytes(),
		runLinkImage + ".cfs.sig":   signDigestTB(t, runRes.Digest, keyPath, f.cert),
	} {
		write(t, filepath.Join(images, name), content)
	}
	// The object of badObjectFile stays without fs-verity (provision skips it).
	d, err := verity.DigestReader(bytes.NewReader(files[badObjectFile]), verity.Params{})
	if err != nil {
		return nil, err.Error()
	}
	write(t, filepath.Join(diskTree, "composefs", "noverity.list"),
		[]byte("objects/"+composefs.ObjectPath(d.Sum)+"\nimages/"+ramImage+".cfs\n"))

	f.disk = keep(t, dir, vm.Ext4(t, diskTree, diskLabel, "96M"))
	provision := vm.BuildStatic(t, "./vmtests/internal/provision")
	initrd := vm.Initramfs(t, initramfs.Spec{Init: provision, ModuleDir: k.Modules, Modules: vm.BootModules})
	pres := vm.Boot(t, vm.Options{Name: "provision", Kernel: k.Image, Initramfs: initrd, Disks: []string{f.disk}})
	r, ok := pres.Result("provision")
	if !ok || !r.OK {
		return nil, "provisioning boot failed: " + r.Error + " (console " + pres.LogFile + ")"
	}
	// The kernel's digest of the good image equals ours and fsverity-utils'.
	for _, rr := range pres.Results {
		if rr.Name == "provisioned" && rr.Data["path"] == "composefs/images/"+goodImage+".cfs" && rr.Data["digest"] != f.digest.String() {
			return nil, "kernel measured " + rr.Data["digest"] + ", writer said " + f.digest.String()
		}
	}
	f.initBin = keep(t, dir, vm.BuildStatic(t, "./init"))
	return f, ""
}

// vmName makes a file-name-safe VM name from the test's name.
func vmName(t *testing.T) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, t.Name())
}

// keep moves a file out of a test's temporary directory into dir.
func keep(t *testing.T, dir, p string) string {
	t.Helper()
	dst := filepath.Join(dir, filepath.Base(filepath.Dir(p))+"-"+filepath.Base(p))
	if err := os.Rename(p, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

var fixtureDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range fixtureDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// tamper changes one byte in the middle of the image.
func tamper(img []byte) []byte {
	b := bytes.Clone(img)
	b[len(b)/2] ^= 0x01
	return b
}

// bootCfsroot boots the cfsroot init on a copy of the provisioned disk.
func bootCfsroot(t *testing.T, f *fixture, config string, appendArgs ...string) *vm.Result {
	t.Helper()
	return bootWith(t, f, config, nil, f.extraDisks, appendArgs...)
}

const testConfig = `{
  "disk": "LABEL=` + diskLabel + `",
  "slots": ["default", "tampered", "untrusted", "nosig", "ramcopy"],
  "tpm": "required"
}`

// TestBootSignedImage: a signed image boots, its init runs as PID 1 and
// sees a correct status.json, files read through the overlay are intact,
// and PCR 15 equals the host's prediction on every bank, as does the
// replayed event log.
func TestBootSignedImage(t *testing.T) {
	f := bootFixture(t)
	res := bootCfsroot(t, f, testConfig)
	r := res.Require(t, "status", "root-mount", "pcr", "eventlog", "rootinit-done")
	if res.End != vm.PowerOff {
		t.Errorf("VM ended with %s, want poweroff by the new root's init", res.End)
	}
	if pid := r["status"].Data["pid"]; pid != "1" {
		t.Errorf("the image's init runs as PID %s, want 1", pid)
	}
	var st boot.Status
	if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	if st.Image != goodImage || st.Digest != f.digest.String() || st.VerifiedBy != "signature" ||
		st.Signer != "CN=cfsroot vmtest image signer" || st.DigestSource != "kernel" || !st.TPM.Measured {
		t.Errorf("status.json: %+v", st)
	}
	// The digest the init used is the one fsverity-utils computes.
	want := fsverityDigestOfImage(t)
	if st.Digest != want {
		t.Errorf("status digest %s, fsverity digest of the image %s", st.Digest, want)
	}
	mountinfo := r["root-mount"].Data["mountinfo"]
	if !strings.Contains(mountinfo, " overlay ") || !strings.Contains(mountinfo, "verity=require") {
		t.Errorf("root is not an overlay with verity=require: %s", mountinfo)
	}
	for p, content := range rootFiles {
		rr, ok := res.Result("read:" + p)
		sum := sha256.Sum256(content)
		if !ok || !rr.OK || rr.Data["sha256"] != hex.EncodeToString(sum[:]) {
			t.Errorf("read %s through the overlay: %+v", p, rr)
		}
	}
	if rr, _ := res.Result("write"); rr.OK || !strings.Contains(rr.Error, "read-only file system") {
		t.Errorf("writing to the root without an upper layer: %+v; want EROFS", rr)
	}
	// verity=require: an object without fs-verity cannot be read.
	if rr, ok := res.Result("read:" + badObjectFile); !ok || rr.OK || !strings.Contains(rr.Error, "input/output error") {
		t.Errorf("read of %s, whose object lacks fs-verity: %+v; want EIO", badObjectFile, rr)
	}

	// Measured boot: PCR 15 as read in the guest = predicted on the host =
	// replay of the event log the init wrote.
	cert, err := signature.LoadCertificate(f.cert)
	if err != nil {
		t.Fatal(err)
	}
	events, err := measure.Events(measure.ImageInfo{Name: goodImage, Digest: f.digest, Signer: cert})
	if err != nil {
		t.Fatal(err)
	}
	pcr := r["pcr"].Data
	var banks []measure.Alg
	for name := range pcr {
		a, err := measure.ParseAlg(name)
		if err != nil {
			t.Fatalf("guest reported bank %q: %v", name, err)
		}
		banks = append(banks, a)
	}
	if len(banks) == 0 {
		t.Fatal("guest reported no PCR banks")
	}
	predicted, err := measure.Predict(events, banks)
	if err != nil {
		t.Fatal(err)
	}
	logBytes, _ := base64.StdEncoding.DecodeString(r["eventlog"].Data["base64"])
	recs, err := eventlog.Parse(bytes.NewReader(logBytes))
	if err != nil {
		t.Fatalf("event log: %v", err)
	}
	replayed, err := measure.Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range banks {
		got := pcr[a.String()]
		if want := hex.EncodeToString(predicted[a]); got != want {
			t.Errorf("PCR 15 %s: guest %s, predicted %s", a, got, want)
		}
		if rp := hex.EncodeToString(replayed[15][a]); rp != got {
			t.Errorf("PCR 15 %s: replayed log %s, guest %s", a, rp, got)
		}
		if st.TPM.Banks[a.String()] != got {
			t.Errorf("status.json PCR %s = %s, guest read %s", a, st.TPM.Banks[a.String()], got)
		}
	}
	t.Logf("PCR 15 banks %v, boot took %v", banks, res.Elapsed)
}

func fsverityDigestOfImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	// Rebuild the disk's good image from the fixture would be circular;
	// extract it from the disk instead with debugfs.
	p := filepath.Join(dir, "img.cfs")
	out, err := exec.Command("debugfs", "-R", "dump /composefs/images/"+goodImage+".cfs "+p, theFixture.disk).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	out, err = exec.Command("fsverity", "digest", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}

// TestBootRefused: images that must not boot are refused before anything
// from them is mounted, the console names the step, the file and the
// reason, and the machine powers off (on_failure: halt).
func TestBootRefused(t *testing.T) {
	f := bootFixture(t)
	for _, tc := range []struct {
		name   string
		append []string
		want   []string
	}{
		{"tampered", []string{"cfsroot.image=" + tamperedImage},
			[]string{"step verify:tampered failed", "tampered.cfs.sig", "signature does not match the digest"}},
		{"untrusted", []string{"cfsroot.image=" + untrustedImage},
			[]string{"step verify:untrusted failed", "untrusted.cfs.sig", "signer is not in the trust store"}},
		{"unsigned", []string{"cfsroot.image=" + unsignedImage},
			[]string{"step verify:nosig failed", "nosig.cfs.sig", "no signature"}},
		{"unsigned with cfsroot.verify=0", []string{"cfsroot.image=" + unsignedImage, "cfsroot.verify=0"},
			[]string{"step cmdline failed", "unknown key cfsroot.verify"}},
		{"image=../x", []string{"cfsroot.image=../x"},
			[]string{"step cmdline failed", `contains ".."`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := bootCfsroot(t, f, testConfig, tc.append...)
			if res.End != vm.PowerOff {
				t.Errorf("VM ended with %s, want poweroff", res.End)
			}
			for _, w := range append(tc.want, "BOOT FAILED", "powering off (on_failure: halt)") {
				if !res.Contains(w) {
					t.Errorf("console lacks %q (log %s)", w, res.LogFile)
				}
			}
			for _, never := range []string{"composefs root mounted", "CFSROOT-RESULT {\"name\":\"status\""} {
				if res.Contains(never) {
					t.Errorf("console has %q: the refused image was mounted or ran", never)
				}
			}
		})
	}
}

// TestBootFallback: with fallback allowed, a refused slot is skipped and the
// next one boots; status.json says which slot booted and why the other was
// refused.
func TestBootFallback(t *testing.T) {
	f := bootFixture(t)
	cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["tampered", "default"], "fallback": true, "tpm": "optional"}`
	res := bootCfsroot(t, f, cfg)
	r := res.Require(t, "status", "rootinit-done")
	var st boot.Status
	if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	if st.Image != goodImage || len(st.Refused) != 1 || st.Refused[0].Slot != tamperedImage ||
		!strings.Contains(st.Refused[0].Reason, "signature does not match the digest") {
		t.Errorf("status.json image %q, refused %+v", st.Image, st.Refused)
	}
	if !res.Contains("slot tampered refused") {
		t.Errorf("console does not say why slot tampered was refused")
	}
}

// TestBootTmpfsUpper: with upper "tmpfs" the root is writable.
func TestBootTmpfsUpper(t *testing.T) {
	f := bootFixture(t)
	cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["default"], "upper": "tmpfs", "tpm": "optional"}`
	res := bootCfsroot(t, f, cfg)
	r := res.Require(t, "status", "write", "rootinit-done")
	if !r["write"].OK {
		t.Errorf("root with a tmpfs upper layer is not writable: %s", r["write"].Error)
	}
	if m := res.Results; !strings.Contains(r["status"].Data["json"], `"upper": "tmpfs"`) {
		t.Errorf("status.json does not record the tmpfs upper layer (%d results)", len(m))
	}
}

// TestBootRAMCopy: an image on disk without fs-verity is refused unless the
// config allows a RAM copy; then the copy is digested in user space, checked
// against the signature and mounted.
func TestBootRAMCopy(t *testing.T) {
	f := bootFixture(t)
	t.Run("refused", func(t *testing.T) {
		res := bootCfsroot(t, f, testConfig, "cfsroot.image="+ramImage)
		for _, w := range []string{"step verify:ramcopy failed", "fs-verity not enabled", "allow_ram_copy", "BOOT FAILED"} {
			if !res.Contains(w) {
				t.Errorf("console lacks %q (log %s)", w, res.LogFile)
			}
		}
	})
	t.Run("allowed", func(t *testing.T) {
		cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["ramcopy"], "allow_ram_copy": true, "tpm": "optional"}`
		res := bootCfsroot(t, f, cfg)
		r := res.Require(t, "status", "rootinit-done")
		var st boot.Status
		if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
			t.Fatal(err)
		}
		if st.DigestSource != "ram-copy" || st.Digest != f.digest.String() || st.VerifiedBy != "signature" {
			t.Errorf("status.json: %+v", st)
		}
	})
}

// TestBootPinnedDigest: a digest pinned in the config replaces the
// signature (the unsigned image boots), a wrong pin refuses the image, and
// on_failure reboot reboots instead of powering off.
func TestBootPinnedDigest(t *testing.T) {
	f := bootFixture(t)
	t.Run("pinned", func(t *testing.T) {
		cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["nosig"], "tpm": "required",
			"pinned_digests": {"nosig": "` + f.digest.String() + `"}}`
		res := bootCfsroot(t, f, cfg)
		r := res.Require(t, "status", "rootinit-done")
		var st boot.Status
		if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
			t.Fatal(err)
		}
		if st.Image != unsignedImage || st.VerifiedBy != "pinned-digest" || st.Signer != "" ||
			!strings.Contains(strings.Join(st.TPM.Events, "\n"), "cfsroot-signer:pinned-digest") {
			t.Errorf("status.json: %+v", st)
		}
	})
	t.Run("wrong pin, reboot", func(t *testing.T) {
		other := "sha256:" + strings.Repeat("0", 64)
		cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["default"], "tpm": "optional", "on_failure": "reboot",
			"pinned_digests": {"default": "` + other + `"}}`
		res := bootCfsroot(t, f, cfg)
		if res.End != vm.Reboot {
			t.Errorf("VM ended with %s, want reboot (on_failure: reboot)", res.End)
		}
		for _, w := range []string{"step verify:default failed", "is not the pinned " + other, "rebooting (on_failure: reboot)"} {
			if !res.Contains(w) {
				t.Errorf("console lacks %q (log %s)", w, res.LogFile)
			}
		}
	})
}
