package vmtests

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

const rollbackLabel = "cfsroot-rb"

// TestBootRollback boots one disk and one swtpm state (kept across boots,
// as a machine's TPM is) through the anti-rollback life cycle. The disk
// holds three validly signed images of the same tree: new (security
// version 3, product appliance), old (version 2) and debug (version 9,
// product debug); the booted root carries the host tool as
// /usr/bin/cfsroot, which rootinit runs as rootinit.run= says.
//
//  1. rollback_nv required, no NV counter yet: fails closed at step version.
//  2. rollback_nv optional: boots new, status.json says the counter is
//     missing; in the booted system `cfsroot tpm provision` defines it
//     (floor 1), `cfsroot bless` raises it to 3, a bless claiming the older
//     version 2 leaves it at 3.
//  3. required, cfsroot.image=old with fallback: old (2 < 3) is refused at
//     step version naming both versions, new boots; version and floor are
//     measured (PCR = prediction) and in status.json.
//  4. An attacker replaces slot new by the validly signed version 2 (a hard
//     link to old's fs-verity file): with fallback every slot is refused,
//     new and old below the floor, debug for its product; nothing mounts.
func TestBootRollback(t *testing.T) {
	start := time.Now()
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "swtpm", "mkfs.ext4", "debugfs")
	dir := t.TempDir()

	// The tree: rootinit as /sbin/init, the host tool, mount points.
	tree := filepath.Join(dir, "tree")
	for _, d := range []string{"sbin", "usr/bin", "dev", "proc", "sys", "run", "tmp"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	copyFile(t, vm.BuildStatic(t, "./vmtests/internal/rootinit"), filepath.Join(tree, "sbin/init"))
	// The booted system reads the version file through the overlay.
	write(t, filepath.Join(tree, "etc/rootinit/read"), []byte(secversion.VersionPath+"\n"))
	copyFile(t, vm.BuildStatic(t, "./cmd/cfsroot"), filepath.Join(tree, "usr/bin/cfsroot"))

	diskTree := filepath.Join(dir, "disk")
	images := filepath.Join(diskTree, "composefs", "images")
	os.MkdirAll(images, 0o755)
	store, err := composefs.OpenStore(filepath.Join(diskTree, "composefs", "objects"))
	if err != nil {
		t.Fatal(err)
	}
	root, err := composefs.FromDir(tree, &composefs.BuildOptions{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := vm.SigningCert(t, "cfsroot rollback test signer")
	key, cert := loadSignerTB(t, keyPath, certPath)
	digests := map[string]verity.Digest{}
	for name, info := range map[string]secversion.Info{
		"new":   {Version: 3, Product: "appliance"},
		"old":   {Version: 2, Product: "appliance"},
		"debug": {Version: 9, Product: "debug"},
	} {
		if err := secversion.Add(root, info); err != nil {
			t.Fatal(err)
		}
		var img bytes.Buffer
		res, err := composefs.Write(&img, root, nil)
		if err != nil {
			t.Fatal(err)
		}
		root.Remove(".cfsroot")
		sig, err := signature.SignDigest(res.Digest, key, cert)
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(images, name+".cfs"), img.Bytes())
		write(t, filepath.Join(images, name+".cfs.sig"), sig)
		digests[name] = res.Digest
	}
	disk := vm.Ext4(t, diskTree, rollbackLabel, "96M")
	prov := vm.Initramfs(t, initramfs.Spec{Init: vm.BuildStatic(t, "./vmtests/internal/provision"), ModuleDir: k.Modules, Modules: vm.BootModules})
	if r, ok := vm.Boot(t, vm.Options{Name: "provision", Kernel: k.Image, Initramfs: prov, Disks: []string{disk}}).Result("provision"); !ok || !r.OK {
		t.Fatalf("provisioning boot failed: %+v", r)
	}

	initBin := vm.BuildStatic(t, "./init")
	tpmState := filepath.Join(dir, "tpm")
	initrds := map[string]string{}
	bootWith := func(name, nv string, appendArgs ...string) *vm.Result {
		t.Helper()
		if initrds[nv] == "" {
			cfg := write(t, filepath.Join(dir, "config-"+nv), []byte(`{"disk": "LABEL=`+rollbackLabel+`",
				"slots": ["new", "old", "debug"], "fallback": true, "tpm": "required",
				"product": "appliance", "rollback_nv": "`+nv+`"}`))
			initrds[nv] = vm.Initramfs(t, initramfs.Spec{Init: initBin, ModuleDir: k.Modules, Modules: vm.BootModules,
				Certs: []string{certPath}, Config: cfg})
		}
		return vm.Boot(t, vm.Options{Name: name, Kernel: k.Image, Initramfs: initrds[nv], Disks: []string{disk},
			TPM: true, TPMState: tpmState, Append: appendArgs})
	}
	status := func(res *vm.Result) boot.Status {
		t.Helper()
		r := res.Require(t, "status")
		var st boot.Status
		if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
			t.Fatalf("status.json: %v (console %s)", err, res.LogFile)
		}
		if st.Rollback == nil {
			t.Fatalf("status.json has no rollback: %s", r["status"].Data["json"])
		}
		return st
	}
	wantConsole := func(res *vm.Result, want ...string) {
		t.Helper()
		for _, w := range want {
			if !res.Contains(w) {
				t.Errorf("console lacks %q (log %s)", w, res.LogFile)
			}
		}
	}
	refusedBoot := func(res *vm.Result, want ...string) {
		t.Helper()
		wantConsole(res, append(want, "BOOT FAILED")...)
		for _, never := range []string{"composefs root mounted", `CFSROOT-RESULT {"name":"status"`} {
			if res.Contains(never) {
				t.Errorf("console has %q: a refused image was mounted or ran (log %s)", never, res.LogFile)
			}
		}
	}

	// 1. required, no counter: fail closed.
	res := bootWith("nv-required-missing", "required")
	refusedBoot(res, "step version failed: TPM NV index 0x0180cf50: rollback_nv is required", "is not defined")

	// 2. optional, no counter: boots and says so; provision and bless.
	res = bootWith("nv-optional-bless", "optional", "rootinit.run=provision,bless,bless-older,floor")
	st := status(res)
	if st.Image != "new" || st.Rollback.Version != 3 || st.Rollback.Product != "appliance" || st.Rollback.NVState != "missing" ||
		!strings.Contains(st.Rollback.NVError, "not defined") || st.Rollback.Floor != 0 {
		t.Errorf("optional boot without a counter: image %s, rollback %+v", st.Image, *st.Rollback)
	}
	run := res.Require(t, "run:provision", "run:bless", "run:bless-older", "run:floor")
	for name, want := range map[string]string{
		"run:provision":   "defined NV counter 0x0180cf50; the floor is 1",
		"run:bless":       "raised from 1 to 3",
		"run:bless-older": "stays at 3: the booted version 2 is below it",
		"run:floor":       "3\n",
	} {
		if out := run[name].Data["output"]; !strings.Contains(out, want) {
			t.Errorf("%s said %q, want %q", name, out, want)
		}
	}

	// 3. required, the older slot first: refused, falls back to new.
	res = bootWith("older-slot-refused", "required", "cfsroot.image=old")
	st = status(res)
	if st.Image != "new" || st.Rollback.Version != 3 || st.Rollback.Floor != 3 || st.Rollback.NV != 3 || st.Rollback.NVState != "read" {
		t.Errorf("after bless: image %s, rollback %+v", st.Image, *st.Rollback)
	}
	if len(st.Refused) != 1 || st.Refused[0].Slot != "old" || !strings.Contains(st.Refused[0].Reason, "step version failed") ||
		!strings.Contains(st.Refused[0].Reason, "image security version 2 is below the floor 3") {
		t.Errorf("refused = %+v, want old refused at step version", st.Refused)
	}
	wantConsole(res, "slot old refused", "old.cfs: image security version 2 is below the floor 3")
	if r, ok := res.Result("read:" + secversion.VersionPath); !ok || !r.OK || r.Data["sha256"] != fmt.Sprintf("%x", sha256.Sum256([]byte("3\n"))) {
		t.Errorf("the booted system reads %s as %+v, want \"3\\n\"", secversion.VersionPath, r)
	}
	evs, err := measure.Events(measure.ImageInfo{Name: "new", Digest: digests["new"], Signer: cert,
		Rollback: &measure.RollbackInfo{Version: 3, Product: "appliance", Floor: 3, NV: "read"}})
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, e := range evs {
		texts = append(texts, e.Data)
	}
	if !slices.Equal(st.TPM.Events, texts) {
		t.Errorf("measured events %q, want %q", st.TPM.Events, texts)
	}
	pcr := res.Require(t, "pcr")["pcr"].Data
	if want, err := measure.Predict(evs, []measure.Alg{measure.SHA256}); err != nil || pcr["sha256"] == "" || pcr["sha256"] != hex.EncodeToString(want[measure.SHA256]) {
		t.Errorf("PCR 15 sha256 in the guest %s, predicted %x (%v)", pcr["sha256"], want[measure.SHA256], err)
	}

	// 4. The attacker replaces slot new by the signed version 2 image.
	debugfs(t, disk, "rm /composefs/images/new.cfs", "rm /composefs/images/new.cfs.sig",
		"ln /composefs/images/old.cfs /composefs/images/new.cfs", "sif /composefs/images/old.cfs links_count 2",
		"ln /composefs/images/old.cfs.sig /composefs/images/new.cfs.sig", "sif /composefs/images/old.cfs.sig links_count 2")
	res = bootWith("replaced-slot-refused", "required")
	refusedBoot(res, "step version failed",
		"new.cfs: image security version 2 is below the floor 3",
		"old.cfs: image security version 2 is below the floor 3",
		`debug.cfs: image is for product "debug", this system boots product "appliance"`)
	t.Logf("TestBootRollback: 1 provisioning and 4 cfsroot boots, %.0fs wall time", time.Since(start).Seconds())
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// debugfs runs debugfs commands on a (not mounted) ext4 image.
func debugfs(t *testing.T, disk string, cmds ...string) {
	t.Helper()
	f := write(t, filepath.Join(t.TempDir(), "debugfs.cmds"), []byte(strings.Join(cmds, "\n")+"\n"))
	out, err := exec.Command("debugfs", "-w", "-f", f, disk).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("debugfs: ")) && bytes.Contains(out, []byte("not found")) {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
}
