// Package vmtests holds the tests that boot the test kernel in QEMU; the
// harness is package vmtests/vm. They skip under go test -short (make
// unittest) and when QEMU or the test kernel are missing (run make deps), and
// fail instead of skipping when CFSROOT_STRICT=1 (make test).
package vmtests

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// Shared with vmtests/internal/smokeguest.
const (
	smokeGuest    = "./vmtests/internal/smokeguest"
	verityFile    = "verity/data.bin"
	erofsImage    = "erofs/test.erofs"
	erofsFile     = "hello.txt"
	unsignedPath  = "/etc/smoke/unsigned-policy.txt"
	untrustedPath = "/etc/smoke/untrusted-policy.p7s"
	extendEvent   = "cfsroot smoke test"
	smokePolicy   = "policy_name=cfsroot_smoke policy_version=0.0.1\nDEFAULT action=ALLOW\n"
	dbCertSubject = "cfsroot smoke test db"
)

func write(t *testing.T, p string, data []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSmoke boots once through OVMF with a TPM and an ext4 disk and checks
// that the kernel and VM give the boot chain what it needs: ipe in the LSM
// list, a working TPM 2.0, fs-verity on ext4 agreeing with fsverity-utils,
// file-backed EROFS (an image made by mkfs.erofs), and IPE policies checked
// against the UEFI db certificate: signed by it loads, unsigned or signed
// by another key does not.
func TestSmoke(t *testing.T) {
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "swtpm", "mkfs.ext4", "mkfs.erofs", "fsverity", "openssl")
	guestBin := vm.BuildStatic(t, smokeGuest)

	cert, key := vm.SigningCert(t, dbCertSubject)
	signed := vm.SignPolicy(t, smokePolicy, cert, key)
	unsigned := write(t, filepath.Join(t.TempDir(), "unsigned.txt"), []byte(smokePolicy))
	otherCert, otherKey := vm.SigningCert(t, "cfsroot smoke test untrusted")
	untrusted := vm.SignPolicy(t, strings.Replace(smokePolicy, "cfsroot_smoke", "cfsroot_untrusted", 1), otherCert, otherKey)

	// The disk: a file for fs-verity (not a whole number of blocks) and
	// an EROFS image.
	tree := t.TempDir()
	data := make([]byte, 1<<20+123)
	rng := rand.NewChaCha8([32]byte{'c', 'f', 's'})
	_, _ = rng.Read(data)
	write(t, filepath.Join(tree, verityFile), data)
	wantDigest := strings.TrimSpace(string(runCmd(t, "fsverity", "digest", "--compact", filepath.Join(tree, verityFile))))
	erofsSrc := t.TempDir()
	hello := "hello from a file-backed EROFS image\n"
	write(t, filepath.Join(erofsSrc, erofsFile), []byte(hello))
	if err := os.MkdirAll(filepath.Join(tree, filepath.Dir(erofsImage)), 0o755); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "mkfs.erofs", "--quiet", filepath.Join(tree, erofsImage), erofsSrc)
	disk := vm.Ext4(t, tree, "smoke", "64M")

	initrd := vm.Initramfs(t, initramfs.Spec{
		Init:      guestBin,
		ModuleDir: k.Modules,
		Modules:   vm.BootModules,
		Certs:     []string{cert},
		Policy:    signed,
		Files:     []initramfs.File{{Src: unsigned, Dst: unsignedPath}, {Src: untrusted, Dst: untrustedPath}},
	})
	res := vm.Boot(t, vm.Options{
		Name:      "smoke",
		Kernel:    k.Image,
		Initramfs: initrd,
		Disks:     []string{disk},
		TPM:       true,
		DBCerts:   []string{cert},
	})
	if res.End != vm.PowerOff {
		t.Errorf("VM ended with %s, want %s", res.End, vm.PowerOff)
	}
	r := res.Require(t, "modules", "ipe-lsm", "tpm-extend", "disk", "verity", "erofs", "ipe-signed", "ipe-unsigned", "ipe-untrusted", "done")

	// The kernel read the certificate from db into .platform.
	if !res.Contains("Loaded X.509 cert '" + dbCertSubject) {
		t.Errorf("console has no \"Loaded X.509 cert '%s...\" line: the db certificate did not reach the kernel", dbCertSubject)
	}
	// PCR extend as the TPM 2.0 spec defines it: new = H(old || digest).
	tpm := r["tpm-extend"].Data
	before, _ := hex.DecodeString(tpm["before"])
	event := sha256.Sum256([]byte(extendEvent))
	want := sha256.Sum256(append(before, event[:]...))
	if tpm["event"] != hex.EncodeToString(event[:]) || tpm["after"] != hex.EncodeToString(want[:]) || len(before) != sha256.Size {
		t.Errorf("PCR %s: before %s, event %s, after %s; want after = sha256(before || sha256(%q)) = %x",
			tpm["pcr"], tpm["before"], tpm["event"], tpm["after"], extendEvent, want)
	}
	if got := r["verity"].Data["digest"]; got != wantDigest {
		t.Errorf("FS_IOC_MEASURE_VERITY in the guest = %s, fsverity digest on the host = %s", got, wantDigest)
	}
	if got := r["erofs"].Data["content"]; got != hello {
		t.Errorf("EROFS file reads %q in the guest, want %q", got, hello)
	}
	for name, want := range map[string]string{"ipe-unsigned": "EBADMSG", "ipe-untrusted": "ENOKEY"} {
		if got := r[name].Data["errno"]; got != want {
			t.Errorf("%s: policy refused with %s, want %s", name, got, want)
		}
	}
	for _, n := range []string{"modules", "tpm-extend", "verity", "erofs", "ipe-signed"} {
		t.Logf("guest %s: %s ms", n, r[n].Data["ms"])
	}
	t.Logf("modules: %s", r["modules"].Data["log"])
}

// TestVMEndObserved checks that the harness sees how a guest ends, as the
// init's fail-closed tests need: when PID 1 exits the kernel panics, and
// panic=-1 with -no-reboot ends QEMU instead of hanging; a guest that halts
// keeps QEMU running, and the test sees the kernel's halt line and stops it.
func TestVMEndObserved(t *testing.T) {
	k := vm.RequireKernel(t)
	guestBin := vm.BuildStatic(t, smokeGuest)
	initrd := vm.Initramfs(t, initramfs.Spec{Init: guestBin})
	for _, tc := range []struct {
		mode, guestLine, kernelLine string
		end                         vm.End
	}{
		{"exit", "exiting as PID 1", "Attempted to kill init", vm.Panic},
		{"halt", "halting on request", "reboot: System halted", vm.Stopped},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			// A TPM whose state outlives the VM, as tests of NV counters
			// need; the kernel's TPM driver starts it up, so swtpm writes
			// its state file.
			tpmState := t.TempDir()
			m := vm.Start(t, vm.Options{
				Name:      tc.mode,
				Kernel:    k.Image,
				Initramfs: initrd,
				Append:    []string{"cfsroot.smoke=" + tc.mode},
				Timeout:   2 * time.Minute,
				TPM:       true,
				TPMState:  tpmState,
			})
			for _, want := range []string{tc.guestLine, tc.kernelLine} {
				if _, err := m.WaitLine(want, time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			var res *vm.Result
			if tc.end == vm.Stopped {
				// A halted machine does not exit by itself.
				if _, err := m.WaitLine("never printed", 2*time.Second); err == nil || !strings.Contains(err.Error(), "within") {
					t.Errorf("halted VM: WaitLine = %v, want a timeout", err)
				}
				res = m.Stop()
			} else {
				res = m.Wait()
			}
			if res.End != tc.end {
				t.Errorf("VM ended with %s, want %s", res.End, tc.end)
			}
			if _, err := m.WaitLine("never printed", time.Second); err == nil || !strings.Contains(err.Error(), "VM ended") {
				t.Errorf("WaitLine after the end = %v, want a \"VM ended\" error", err)
			}
			if _, err := os.Stat(filepath.Join(tpmState, "tpm2-00.permall")); err != nil {
				t.Errorf("swtpm kept no state in Options.TPMState: %v", err)
			}
		})
	}
}

func runCmd(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return out
}
