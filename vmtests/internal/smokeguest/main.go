// Command smokeguest is PID 1 of the VM smoke test (vmtests/smoke_test.go):
// it checks, inside the guest, that the test kernel and VM give the boot
// chain what it needs, reports each check as a marker line (package
// vmtests/guest) and powers off. The host test checks the reported values
// against host tools.
//
// Checks: modules from the initramfs load list; ipe in the LSM list; a TPM
// 2.0 extends a PCR; fs-verity enable and measure on ext4; a file-backed
// EROFS mount; an IPE policy signed by the UEFI db certificate loads and
// activates, while an unsigned one and one signed by an unknown key are
// refused. The kernel command line can select another mode, for the
// harness tests that observe how a VM ends: cfsroot.smoke=exit makes it
// exit at once (the kernel then panics), cfsroot.smoke=halt halts the
// machine without powering it off.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/initramfs/kmod"
	"github.com/cfsroot/cfsroot/initramfs/layout"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/guest"

	"github.com/cfsroot/cfsroot/rootfs/ipe"
)

// Paths shared with the host side of the smoke test.
const (
	diskDev      = "/dev/vda"
	diskMount    = "/mnt"
	verityFile   = "verity/data.bin"
	erofsImage   = "erofs/test.erofs"
	erofsMount   = "/erofs"
	erofsFile    = "hello.txt"
	unsignedPath = "/etc/smoke/unsigned-policy.txt"
	// untrustedPath holds a policy signed by a certificate that is not in
	// any kernel keyring.
	untrustedPath = "/etc/smoke/untrusted-policy.p7s"
	policyName    = "cfsroot_smoke"
	extendPCR     = 16 // the debug PCR: resettable, used by nothing else
	extendEvent   = "cfsroot smoke test"
)

var console = os.Stdout

func main() {
	mountBasics()
	cmdline, _ := os.ReadFile("/proc/cmdline")
	switch {
	case strings.Contains(string(cmdline), "cfsroot.smoke=exit"):
		fmt.Fprintln(console, "smokeguest: exiting as PID 1 on request")
		os.Exit(3)
	case strings.Contains(string(cmdline), "cfsroot.smoke=halt"):
		fmt.Fprintln(console, "smokeguest: halting on request")
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_HALT)
		select {}
	}
	// Keep kernel chatter below warnings off the console so that it does
	// not split marker lines.
	_ = os.WriteFile("/proc/sys/kernel/printk", []byte("4"), 0)

	check("modules", loadModules)
	check("ipe-lsm", checkLSM)
	check("tpm-extend", checkTPM)
	diskErr := waitAndMountDisk()
	check("disk", func() (map[string]string, error) { return nil, diskErr })
	if diskErr == nil {
		check("verity", checkVerity)
		check("erofs", checkEROFS)
	}
	check("ipe-signed", checkSignedPolicy)
	check("ipe-unsigned", func() (map[string]string, error) { return refusedPolicy(unsignedPath, unix.EBADMSG) })
	check("ipe-untrusted", func() (map[string]string, error) { return refusedPolicy(untrustedPath, unix.ENOKEY) })
	guest.Check(console, "done", nil, nil)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func check(name string, fn func() (map[string]string, error)) {
	start := time.Now()
	data, err := fn()
	if data == nil {
		data = map[string]string{}
	}
	data["ms"] = fmt.Sprint(time.Since(start).Milliseconds())
	guest.Check(console, name, data, err)
}

func mountBasics() {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"securityfs", "/sys/kernel/security", "securityfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			fmt.Fprintf(console, "smokeguest: mount %s: %v\n", m.dst, err)
		}
	}
}

func loadModules() (map[string]string, error) {
	f, err := os.Open(layout.ModuleList)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	list, err := kmod.ParseList(f)
	if err != nil {
		return nil, err
	}
	var log []string
	err = kmod.Load(list, func(format string, args ...any) {
		log = append(log, fmt.Sprintf(format, args...))
	})
	return map[string]string{"log": strings.Join(log, "; ")}, err
}

func checkLSM() (map[string]string, error) {
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return nil, err
	}
	lsms := strings.TrimSpace(string(b))
	data := map[string]string{"lsm": lsms}
	for _, l := range strings.Split(lsms, ",") {
		if l == "ipe" {
			return data, nil
		}
	}
	return data, fmt.Errorf("ipe is not in the LSM list %q", lsms)
}

func waitFor(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkTPM() (map[string]string, error) {
	if err := waitFor("/dev/tpmrm0", 10*time.Second); err != nil {
		return nil, err
	}
	tpm, err := linuxtpm.Open("/dev/tpmrm0")
	if err != nil {
		return nil, err
	}
	defer tpm.Close()
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(extendPCR),
	}}}
	read := func() ([]byte, error) {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(tpm)
		if err != nil {
			return nil, fmt.Errorf("PCR_Read: %w", err)
		}
		if len(rsp.PCRValues.Digests) != 1 {
			return nil, fmt.Errorf("PCR_Read returned %d digests, want 1", len(rsp.PCRValues.Digests))
		}
		return rsp.PCRValues.Digests[0].Buffer, nil
	}
	before, err := read()
	if err != nil {
		return nil, err
	}
	event := sha256.Sum256([]byte(extendEvent))
	_, err = tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(extendPCR), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: event[:]}}},
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("PCR_Extend: %w", err)
	}
	after, err := read()
	if err != nil {
		return nil, err
	}
	data := map[string]string{
		"pcr":    fmt.Sprint(extendPCR),
		"before": hex.EncodeToString(before),
		"event":  hex.EncodeToString(event[:]),
		"after":  hex.EncodeToString(after),
	}
	if bytes.Equal(before, after) {
		return data, errors.New("PCR did not change on extend")
	}
	return data, nil
}

func waitAndMountDisk() error {
	if err := waitFor(diskDev, 10*time.Second); err != nil {
		return err
	}
	if err := os.MkdirAll(diskMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(diskDev, diskMount, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", diskDev, diskMount, err)
	}
	return nil
}

func checkVerity() (map[string]string, error) {
	p := filepath.Join(diskMount, verityFile)
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := verity.Enable(f, verity.Params{}, nil); err != nil {
		return nil, err
	}
	d, err := verity.Measure(f)
	if err != nil {
		return nil, err
	}
	return map[string]string{"digest": hex.EncodeToString(d.Sum), "algorithm": d.Algorithm.String()}, nil
}

func checkEROFS() (map[string]string, error) {
	img := filepath.Join(diskMount, erofsImage)
	if err := os.MkdirAll(erofsMount, 0o755); err != nil {
		return nil, err
	}
	// File-backed: the source is the image file itself, no loop device
	// (Linux 6.12, EROFS_FS_BACKED_BY_FILE).
	if err := unix.Mount(img, erofsMount, "erofs", unix.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("mount -t erofs %s: %w", img, err)
	}
	defer unix.Unmount(erofsMount, 0)
	content, err := os.ReadFile(filepath.Join(erofsMount, erofsFile))
	if err != nil {
		return nil, err
	}
	data := map[string]string{"content": string(content), "source": mountSource(erofsMount)}
	if data["source"] != img {
		return data, fmt.Errorf("EROFS mounted from %q, not file-backed from %s", data["source"], img)
	}
	return data, nil
}

// mountSource returns the source of the mount at dir, from mountinfo.
func mountSource(dir string) string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for line := range strings.Lines(string(b)) {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && f[4] == dir && len(g) >= 2 {
			return g[1]
		}
	}
	return ""
}

const ipeDir = "/sys/kernel/security/ipe"

func checkSignedPolicy() (map[string]string, error) {
	p7s, err := os.ReadFile(layout.Policy)
	if err != nil {
		return nil, err
	}
	if err := ipe.WriteOnce(ipeDir+"/new_policy", p7s); err != nil {
		return nil, fmt.Errorf("loading the signed policy: %w", err)
	}
	active := filepath.Join(ipeDir, "policies", policyName, "active")
	if err := ipe.WriteOnce(active, []byte("1")); err != nil {
		return nil, fmt.Errorf("activating: %w", err)
	}
	b, err := os.ReadFile(active)
	if err != nil {
		return nil, err
	}
	data := map[string]string{"active": strings.TrimSpace(string(b))}
	if data["active"] != "1" {
		return data, fmt.Errorf("%s reads %q after activation", active, data["active"])
	}
	return data, nil
}

// refusedPolicy checks that the kernel refuses the policy in path with
// errno want.
func refusedPolicy(path string, want unix.Errno) (map[string]string, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	err = ipe.WriteOnce(ipeDir+"/new_policy", text)
	data := map[string]string{"errno": fmt.Sprint(err)}
	var errno unix.Errno
	if errors.As(err, &errno) {
		data["errno"] = unix.ErrnoName(errno)
	}
	switch {
	case err == nil:
		return data, fmt.Errorf("the kernel accepted the policy %s", path)
	case !errors.Is(err, want):
		return data, fmt.Errorf("policy %s refused with %v, want %s", path, err, unix.ErrnoName(want))
	}
	return data, nil
}
