package vmtests

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/initramfs/layout"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/measure/eventlog"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// bootWith boots the cfsroot init on a copy of the provisioned disk, with
// extra initramfs files and extra disks (after the provisioned one, which
// is /dev/vda).
func bootWith(t *testing.T, f *fixture, config string, files []initramfs.File, disks []string, appendArgs ...string) *vm.Result {
	t.Helper()
	disk := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("cp", "--sparse=always", f.disk, disk).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v\n%s", err, out)
	}
	initrd := vm.Initramfs(t, initramfs.Spec{
		Init:      f.initBin,
		ModuleDir: f.kernel.Modules,
		Modules:   append([]string{"loop"}, vm.BootModules...), // loop: RAM copies live on tmpfs
		Certs:     []string{f.cert},
		Config:    write(t, filepath.Join(t.TempDir(), "config"), []byte(config)),
		Files:     files,
	})
	return vm.Boot(t, vm.Options{
		Name:      vmName(t),
		Kernel:    f.kernel.Image,
		Initramfs: initrd,
		Disks:     append([]string{disk}, disks...),
		TPM:       true,
		Append:    appendArgs,
	})
}

// pcrOf returns the PCR 15 banks a guest reported ("pcr:ALG" keys of a
// pcr-shell result, or the keys of rootinit's "pcr" result).
func pcrOf(t *testing.T, data map[string]string, prefix string) map[measure.Alg]string {
	t.Helper()
	out := map[measure.Alg]string{}
	for k, v := range data {
		name, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		a, err := measure.ParseAlg(name)
		if err != nil {
			t.Fatalf("guest reported bank %q: %v", name, err)
		}
		out[a] = v
	}
	if len(out) == 0 {
		t.Fatalf("guest reported no PCR banks: %v", data)
	}
	return out
}

// wantPCR checks reported PCR values against the prediction from events.
func wantPCR(t *testing.T, got map[measure.Alg]string, events []measure.Event) {
	t.Helper()
	var banks []measure.Alg
	for a := range got {
		banks = append(banks, a)
	}
	want, err := measure.Predict(events, banks)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range banks {
		if w := hex.EncodeToString(want[a]); got[a] != w {
			t.Errorf("PCR 15 %s = %s, predicted %s from %d events", a, got[a], w, len(events))
		}
	}
}

func goodEvents(t *testing.T, f *fixture, info measure.ImageInfo) []measure.Event {
	t.Helper()
	cert, err := signature.LoadCertificate(f.cert)
	if err != nil {
		t.Fatal(err)
	}
	info.Name, info.Digest, info.Signer = goodImage, f.digest, cert
	evs, err := measure.Events(info)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestBootFailureCapsPCR (issue 12, finding 2): with on_failure "shell",
// the shell must never see PCR 15 at the value of a good boot, nor at a
// value it could extend to the good one. The initramfs' /bin/sh is
// pcrshell, which reports PCR 15. A failure before anything was measured
// (an unsigned image) and one after the image was measured (the init
// missing from the root) each leave PCR 15 capped with a failure event
// naming the step.
func TestBootFailureCapsPCR(t *testing.T) {
	f := bootFixture(t)
	shell := vm.BuildStatic(t, "./vmtests/internal/pcrshell")
	files := []initramfs.File{{Src: shell, Dst: "/bin/sh", Mode: 0o755}}
	good := goodEvents(t, f, measure.ImageInfo{})
	cert, _ := signature.LoadCertificate(f.cert)
	measured, err := measure.ImageEvents(measure.ImageInfo{Name: goodImage, Digest: f.digest, Signer: cert})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		config string
		append []string
		events []measure.Event // what PCR 15 must hold in the shell
	}{
		{
			name:   "before measuring",
			config: `{"disk": "LABEL=` + diskLabel + `", "slots": ["default", "nosig"], "on_failure": "shell", "allow_shell": true}`,
			append: []string{"cfsroot.image=" + unsignedImage},
			events: []measure.Event{measure.FailureEvent("verify:" + unsignedImage)},
		},
		{
			name:   "after measuring",
			config: `{"disk": "LABEL=` + diskLabel + `", "slots": ["default"], "init": "/sbin/missing", "on_failure": "shell", "allow_shell": true}`,
			events: append(measured, measure.FailureEvent("init-check")),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := bootWith(t, f, tc.config, files, nil, tc.append...)
			r := res.Require(t, "pcr-shell")
			if !res.Contains("starting an emergency shell") {
				t.Errorf("console does not say the shell started (log %s)", res.LogFile)
			}
			got := pcrOf(t, r["pcr-shell"].Data, "pcr:")
			var banks []measure.Alg
			for a := range got {
				banks = append(banks, a)
			}
			goodVals, _ := measure.Predict(good, banks)
			for a, v := range got {
				if v == hex.EncodeToString(goodVals[a]) {
					t.Errorf("PCR 15 %s in the emergency shell holds the good boot's value %s", a, v)
				}
				if strings.Trim(v, "0") == "" {
					t.Errorf("PCR 15 %s in the emergency shell is at reset (%s): the shell could extend it to the good value", a, v)
				}
			}
			wantPCR(t, got, tc.events)
		})
	}
}

// TestBootPersistentUpper (issue 12, finding 1): a persistent upper layer
// ("upper": "DISK:DIR") on a second disk. An /sbin/init planted in it
// (pcrshell, which reports as PID 1) must not run: the boot is refused,
// naming the planted file. A clean upper layer boots, its presence and
// filesystem UUID are measured (PCR 15 equals the prediction with the upper
// event, unlike a boot without one), the root is writable and /usr is
// read-only.
func TestBootPersistentUpper(t *testing.T) {
	f := bootFixture(t)
	vm.RequireTools(t, "mkfs.ext4")
	shell := vm.BuildStatic(t, "./vmtests/internal/pcrshell")
	const uuid = "c0ffee00-1234-4567-89ab-0123456789ab"
	cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["default"], "upper": "LABEL=cfsroot-data:state", "tpm": "required"}`
	dataDisk := func(t *testing.T, plant bool) string {
		tree := t.TempDir()
		os.MkdirAll(filepath.Join(tree, "state/upper/etc"), 0o755)
		os.WriteFile(filepath.Join(tree, "state/upper/etc/kept"), []byte("written by an earlier boot\n"), 0o644)
		if plant {
			b, err := os.ReadFile(shell)
			if err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(filepath.Join(tree, "state/upper/sbin"), 0o755)
			if err := os.WriteFile(filepath.Join(tree, "state/upper/sbin/init"), b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		img := filepath.Join(t.TempDir(), "data.img")
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "cfsroot-data", "-U", uuid, "-d", tree, img, "32M").CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v\n%s", err, out)
		}
		return img
	}
	t.Run("planted init", func(t *testing.T) {
		res := bootWith(t, f, cfg, nil, []string{dataDisk(t, true)})
		if r, ok := res.Result("pcr-shell"); ok {
			t.Errorf("the /sbin/init planted in the upper layer ran as PID %s", r.Data["pid"])
		}
		for _, w := range []string{"step upper-check failed", "/sbin/init", "BOOT FAILED"} {
			if !res.Contains(w) {
				t.Errorf("console lacks %q (log %s)", w, res.LogFile)
			}
		}
	})
	t.Run("clean upper", func(t *testing.T) {
		res := bootWith(t, f, cfg, nil, []string{dataDisk(t, false)})
		r := res.Require(t, "status", "pcr", "eventlog", "write", "rootinit-done")
		var st boot.Status
		if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
			t.Fatalf("status.json: %v", err)
		}
		if st.Upper != "LABEL=cfsroot-data:state" || st.Image != goodImage {
			t.Errorf("status.json: %+v", st)
		}
		if !r["write"].OK {
			t.Errorf("root with a persistent upper layer is not writable: %s", r["write"].Error)
		}
		if rr, _ := res.Result("write-usr"); rr.OK || !strings.Contains(rr.Error, "read-only file system") {
			t.Errorf("writing under /usr with a persistent upper: %+v; want EROFS", rr)
		}
		// `cfsroot pcr predict --upper --upper-uuid` predicts it; a boot
		// without the upper layer would not.
		vm.RequireTools(t, "debugfs")
		dir := t.TempDir()
		img := filepath.Join(dir, goodImage+".cfs")
		for _, p := range []string{img, img + ".sig"} {
			if out, err := exec.Command("debugfs", "-R", "dump /composefs/images/"+filepath.Base(p)+" "+p, f.disk).CombinedOutput(); err != nil {
				t.Fatalf("debugfs: %v\n%s", err, out)
			}
		}
		cfsroot := vm.BuildStatic(t, "./cmd/cfsroot")
		out, _ := runTool(t, cfsroot, "pcr", "predict", "--image", img, "--sig", img+".sig", "--trusted", f.cert,
			"--upper", "LABEL=cfsroot-data:state", "--upper-uuid", uuid)
		predicted := parsePredict(t, out)
		without, _ := runTool(t, cfsroot, "pcr", "predict", "--image", img, "--sig", img+".sig", "--trusted", f.cert)
		for bank, got := range r["pcr"].Data {
			if got != predicted[bank] {
				t.Errorf("PCR 15 %s: guest %s, cfsroot pcr predict --upper %s", bank, got, predicted[bank])
			}
			if got == parsePredict(t, without)[bank] {
				t.Errorf("PCR 15 %s with a persistent upper layer equals a boot without one", bank)
			}
		}
		logBytes, _ := base64.StdEncoding.DecodeString(r["eventlog"].Data["base64"])
		recs, err := eventlog.Parse(bytes.NewReader(logBytes))
		if err != nil {
			t.Fatalf("event log: %v", err)
		}
		if err := measure.VerifyRecords(recs); err != nil {
			t.Errorf("event log: %v", err)
		}
	})
}

// TestBootRunSymlink (issue 12, finding 10): an image whose /run is a
// symlink (to /var/run) boots: switch_root resolves the mount targets
// inside the new root, so /run lands on the image's /var/run (moving onto
// the joined path made mount(2) follow the link from the initramfs' root,
// where /var/run does not exist), and the booted init finds status.json
// through the link.
func TestBootRunSymlink(t *testing.T) {
	f := bootFixture(t)
	res := bootCfsroot(t, f, `{"disk": "LABEL=`+diskLabel+`", "slots": ["`+runLinkImage+`"], "tpm": "required"}`)
	r := res.Require(t, "status", "rootinit-done")
	var st boot.Status
	if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	if st.Image != runLinkImage || !st.TPM.Measured {
		t.Errorf("status.json: %+v", st)
	}
}

// TestBootIPEMissing (issue 12, finding 3): `lsm=` on an unsigned kernel
// command line leaves IPE out. With ipe_optional the boot goes on, and
// what is measured is the distinct cfsroot-ipe-failed event, never the
// "policy loaded" one (which was measured before the policy was loaded);
// status.json says the policy is not active.
func TestBootIPEMissing(t *testing.T) {
	f := bootFixture(t)
	cert, key := vm.SigningCert(t, "cfsroot vmtest IPE signer")
	policy := vm.SignPolicy(t, "policy_name=cfsroot_missing policy_version=0.0.1\nDEFAULT action=ALLOW\n", cert, key)
	cfg := `{"disk": "LABEL=` + diskLabel + `", "slots": ["default"], "tpm": "required",
		"ipe_policy": "` + layout.Policy + `", "ipe_enforce": true, "ipe_optional": true}`
	res := bootWith(t, f, cfg, []initramfs.File{{Src: policy, Dst: layout.Policy}}, nil, "lsm=capability")
	r := res.Require(t, "status", "pcr", "rootinit-done")
	var st boot.Status
	if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	if st.IPE == nil || st.IPE.Active || st.IPE.Enforced || !strings.Contains(st.IPE.Error, "IPE is not available") {
		t.Errorf("status.json ipe: %+v; want not active, not enforced (no IPE), with the error", st.IPE)
	}
	data, err := os.ReadFile(policy)
	if err != nil {
		t.Fatal(err)
	}
	good := goodEvents(t, f, measure.ImageInfo{})
	want := []measure.Event{good[0], good[1], measure.PolicyFailedEvent(data), measure.Separator()}
	var texts []string
	for _, e := range want {
		texts = append(texts, e.Data)
	}
	if strings.Join(st.TPM.Events, "\n") != strings.Join(texts, "\n") {
		t.Errorf("measured %q, want %q", st.TPM.Events, texts)
	}
	wantPCR(t, pcrOf(t, r["pcr"].Data, ""), want)
}
