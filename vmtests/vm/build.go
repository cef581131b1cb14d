package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/internal/testutil"
)

// run runs a host command for a test and fails the test with its output if
// it fails.
func run(t testing.TB, dir string, env []string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// BuildStatic builds the Go main package pkg (an import path, or a path
// relative to the repository root such as "./vmtests/internal/smokeguest")
// as a static linux/amd64 binary, as the init must be, and returns its path.
func BuildStatic(t testing.TB, pkg string) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	start := time.Now()
	run(t, root, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"},
		testutil.GoTool(), "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, pkg)
	t.Logf("built %s in %v", pkg, time.Since(start).Round(time.Millisecond))
	return out
}

// Initramfs builds an initramfs from s into the test's temporary directory
// and logs its size and build time.
func Initramfs(t testing.TB, s initramfs.Spec) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initramfs.img")
	start := time.Now()
	res, err := initramfs.WriteFile(out, s)
	if err != nil {
		t.Fatal(err)
	}
	var mods []string
	for _, m := range res.Modules {
		mods = append(mods, m.Name)
	}
	t.Logf("initramfs: %d bytes (%d uncompressed), %d entries, built in %v; modules %v",
		res.Size, res.CPIOSize, len(res.Paths), time.Since(start).Round(time.Millisecond), mods)
	return out
}

// Ext4 makes an ext4 image of size (mkfs.ext4 syntax, e.g. "64M") holding
// the files of tree, with label and the verity feature, and returns its
// path. The block size is 4096: fs-verity fails with EINVAL on the 1 KiB
// blocks mkfs.ext4 picks for small filesystems. Files are owned as on the
// host. fs-verity itself can only be enabled by a kernel that has it, i.e.
// inside the guest.
func Ext4(t testing.TB, tree, label, size string) string {
	t.Helper()
	RequireTools(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), label+".img")
	run(t, "", nil, "mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", "-L", label, "-d", tree, img, size)
	return img
}

// SigningCert makes a self-signed RSA-2048 certificate with the code
// signing usage, the kind UEFI db holds and the kernel loads into its
// .platform keyring, and returns the paths of the PEM certificate and its
// unencrypted key in the test's temporary directory.
func SigningCert(t testing.TB, cn string) (cert, key string) {
	t.Helper()
	RequireTools(t, "openssl")
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	run(t, "", nil, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
		"-days", "3650", "-subj", "/CN="+cn, "-keyout", key, "-out", cert,
		"-addext", "keyUsage=critical,digitalSignature",
		"-addext", "extendedKeyUsage=codeSigning")
	return cert, key
}

// SignPolicy signs an IPE policy with openssl the way IPE wants it (PKCS#7
// with the policy attached, no signed attributes, DER) and returns the
// path of the signed policy.
func SignPolicy(t testing.TB, policy, cert, key string) string {
	t.Helper()
	RequireTools(t, "openssl")
	in := filepath.Join(t.TempDir(), "policy.txt")
	if err := os.WriteFile(in, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	out := in + ".p7s"
	run(t, "", nil, "openssl", "smime", "-sign", "-nodetach", "-noattr", "-binary", "-outform", "der",
		"-in", in, "-signer", cert, "-inkey", key, "-out", out)
	return out
}

// OVMF firmware files of Debian's ovmf package (4 MiB flash layout).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// dbOwner is the owner GUID recorded with the test certificates in db.
const dbOwner = "6c3f4e2a-8f1b-4c5d-9e7a-cf5000000001"

// ovmfVars writes a copy of OVMF's variable store with certs (PEM) added to
// the UEFI db, for a VM that gets its own writable copy.
func ovmfVars(t testing.TB, dir string, certs []string) string {
	t.Helper()
	RequireOVMF(t)
	out := filepath.Join(dir, "OVMF_VARS.fd")
	if len(certs) == 0 {
		data, err := os.ReadFile(OVMFVars)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return out
	}
	args := []string{"--input", OVMFVars, "--output", out}
	for _, c := range certs {
		args = append(args, "--add-db", dbOwner, c)
	}
	run(t, "", nil, "virt-fw-vars", args...)
	return out
}

// RequireOVMF ends the test (skip, or failure under CFSROOT_STRICT=1) unless OVMF's
// firmware files (OVMFCode, OVMFVars) and virt-fw-vars are installed.
func RequireOVMF(t testing.TB) {
	t.Helper()
	RequireTools(t, "virt-fw-vars")
	for _, f := range []string{OVMFCode, OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			testutil.Unavailable(t, "OVMF firmware %s is missing (Debian package ovmf): run make deps", f)
		}
	}
}
