// Package vm boots test VMs for cfsroot's VM tests: QEMU under TCG (KVM
// does not work on the machines this runs on), optionally with a software
// TPM (swtpm), OVMF firmware with test certificates in the UEFI db, and
// ext4 disks with fs-verity, supervised by github.com/hugelgupf/vmtest's
// qemu package. The console streams to the test log and to a file, and
// results come back as marker lines (package vmtests/guest).
//
// A test typically does
//
//	k := vm.RequireKernel(t)
//	init := vm.BuildStatic(t, "./vmtests/internal/mytest")
//	initrd := vm.Initramfs(t, initramfs.Spec{Init: init, ModuleDir: k.Modules, Modules: vm.BootModules})
//	res := vm.Boot(t, vm.Options{Kernel: k.Image, Initramfs: initrd, Disks: []string{disk}, TPM: true})
//	res.Require(t, "check-a", "check-b")
//
// Environment:
//
//	go test -short        skips VM tests (make unittest)
//	CFSROOT_STRICT=1      fail instead of skipping when QEMU, swtpm, OVMF,
//	                      virt-fw-vars, mkfs.ext4 or the kernel are missing
//	                      (make test; see testutil.Strict)
//	VMTEST_KERNEL         kernel image (bzImage) to boot instead of the cached
//	                      Debian trixie kernel (.cache/kernel/trixie, make deps)
//	VMTEST_MODULES        its module tree (lib/modules/KVER, or a root holding one);
//	                      default: the kernel image's directory if it holds lib/modules
//	VMTEST_QEMU           QEMU command and first arguments (default
//	                      "qemu-system-x86_64 -accel tcg -cpu max")
//	CFSROOT_VMTEST_LOGDIR where console logs go (default out/vmtest in the repository)
//
// VMTEST_KERNEL_APPEND and VMTEST_QEMU_APPEND are honoured as vmtest does.
package vm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/initramfs/kmod"
	"github.com/cfsroot/cfsroot/internal/testutil"
)

// BootModules are the modules cfsroot's boot chain loads: ext4 for the
// backing filesystem, virtio_blk for the test disks, erofs and overlay for
// the composefs mount. Their dependencies (crc16, mbcache, jbd2, libcrc32c
// and its crc32c providers) are resolved by the initramfs builder.
var BootModules = []string{"ext4", "virtio_blk", "erofs", "overlay"}

// Kernel is the kernel the VM tests boot.
type Kernel struct {
	// Image is the bzImage.
	Image string
	// Modules is its module tree, for initramfs.Spec.ModuleDir.
	Modules string
	// Version is the kernel release (KVER).
	Version string
}

// RepoRoot returns the directory holding go.mod, found by walking up from
// the working directory (a package directory under go test).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("vm: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("vm: no go.mod in %s or above", dir)
		}
	}
}

// errMissing marks something that make deps installs.
var errMissing = errors.New("missing")

// FindKernel returns the kernel named by VMTEST_KERNEL and VMTEST_MODULES,
// or else the Debian trixie kernel that tools/fetch-kernel.sh caches.
func FindKernel() (Kernel, error) {
	var k Kernel
	if img := os.Getenv("VMTEST_KERNEL"); img != "" {
		k.Image = img
		k.Modules = os.Getenv("VMTEST_MODULES")
		if k.Modules == "" {
			k.Modules = filepath.Dir(img)
			if _, err := os.Stat(filepath.Join(k.Modules, "lib", "modules")); err != nil {
				return k, fmt.Errorf("vm: VMTEST_KERNEL=%s is set but not VMTEST_MODULES, and %s has no lib/modules: set VMTEST_MODULES to the kernel's module tree", img, k.Modules)
			}
		}
		if _, err := os.Stat(img); err != nil {
			return k, fmt.Errorf("vm: VMTEST_KERNEL: %w", err)
		}
	} else {
		cache := os.Getenv("CFSROOT_CACHE")
		if cache == "" {
			root, err := RepoRoot()
			if err != nil {
				return k, err
			}
			cache = filepath.Join(root, ".cache")
		}
		dir := filepath.Join(cache, "kernel", "trixie")
		if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
			return k, fmt.Errorf("vm: %w: no test kernel in %s (run make deps, or tools/fetch-kernel.sh; or set VMTEST_KERNEL)", errMissing, dir)
		}
		k.Image, k.Modules = filepath.Join(dir, "vmlinuz"), dir
	}
	tree, err := kmod.Open(k.Modules)
	if err != nil {
		return k, fmt.Errorf("vm: kernel modules: %w", err)
	}
	k.Version = tree.Version
	return k, nil
}

// Enabled reports whether VM tests run: not under go test -short (make
// unittest).
func Enabled() bool { return !testing.Short() }

// Required reports whether missing VM test dependencies are failures
// rather than reasons to skip (CFSROOT_STRICT=1, as make test sets).
func Required() bool { return testutil.Strict() }

// RequireTools ends the test (skip, or failure under CFSROOT_STRICT=1; see
// testutil.Unavailable) unless each command is installed. It skips under
// go test -short.
func RequireTools(t testing.TB, cmds ...string) {
	t.Helper()
	if !Enabled() {
		t.Skip("VM tests skipped by go test -short (make unittest)")
	}
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			testutil.Unavailable(t, "%s is not installed: run make deps", c)
		}
	}
}

// RequireKernel returns the test kernel, after checking that QEMU is
// installed; otherwise the test ends as RequireTools says.
func RequireKernel(t testing.TB) Kernel {
	t.Helper()
	RequireTools(t, qemuBinary())
	k, err := FindKernel()
	if err != nil {
		if errors.Is(err, errMissing) {
			testutil.Unavailable(t, "%v", err)
		}
		t.Fatal(err)
	}
	return k
}

// qemuBinary is the QEMU program the tests run.
func qemuBinary() string {
	if q := os.Getenv("VMTEST_QEMU"); q != "" {
		if f := strings.Fields(q); len(f) > 0 {
			return f[0]
		}
	}
	return "qemu-system-x86_64"
}
