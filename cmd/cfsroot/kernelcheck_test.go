package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// debianKernelConfig returns the path of Debian SUITE's kernel config,
// fetched by tools/fetch-kernel.sh (a no-op when cached).
func debianKernelConfig(t *testing.T, suite string) string {
	return filepath.Join(testutil.DebianKernel(t, suite), "config")
}

func kernelCheck(args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	err = run(append([]string{"kernel-check"}, args...), &o, &e)
	return o.String(), e.String(), err
}

// The acceptance test of issue 4: trixie's 6.12 passes, bookworm's 6.1
// fails with reasons.
func TestKernelCheckDebian(t *testing.T) {
	trixie := debianKernelConfig(t, "trixie")
	out, _, err := kernelCheck(trixie)
	if err != nil {
		t.Fatalf("trixie: %v\n%s", err, out)
	}
	for _, want := range []string{"Linux 6.12.", "modules the initramfs must load: erofs ext4 overlay virtio_blk",
		"IPE policy modes: digest, signature",
		"missing: 0 required, 0 recommended, 0 optional"} {
		if !strings.Contains(out, want) {
			t.Errorf("trixie output lacks %q:\n%s", want, out)
		}
	}

	bookworm := debianKernelConfig(t, "bookworm")
	out, _, err = kernelCheck(bookworm)
	if err == nil || !strings.Contains(err.Error(), "lacks 5 required item(s)") {
		t.Fatalf("bookworm: err = %v, want 5 required items missing\n%s", err, out)
	}
	for _, want := range []string{
		"MISSING ipe [required]: CONFIG_SECURITY_IPE is not in this config (first in Linux 6.12; this kernel is 6.1.",
		"MISSING overlay-verity [required]: needs Linux 6.6 or later",
		"MISSING overlay-data-only-layers [required]: needs Linux 6.5 or later",
		"MISSING ipe-lsm [required]: CONFIG_LSM=",
		"IPE enforces the signed policy", // the reason is printed
		"loop",                           // the EROFS loop fallback is a module to load
		"IPE policy modes: none",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("bookworm output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "MISSING erofs-source") {
		t.Errorf("bookworm has BLK_DEV_LOOP=m, yet erofs-source is reported missing:\n%s", out)
	}
	// -v lists what is met.
	out, _, _ = kernelCheck("-v", bookworm)
	if !strings.Contains(out, "ok erofs-source [required]: CONFIG_BLK_DEV_LOOP=m (the initramfs must load loop)") {
		t.Errorf("-v output lacks the met erofs-source:\n%s", out)
	}
}

// TestKernelCheckSynthetic covers inputs and flags on small configs.
func TestKernelCheckSynthetic(t *testing.T) {
	dir := t.TempDir()
	const good = "# Linux/x86 6.12.3 Kernel Configuration\n" +
		"CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_DEVTMPFS=y\nCONFIG_PROC_FS=y\nCONFIG_SYSFS=y\nCONFIG_TMPFS=y\n" +
		"CONFIG_FS_VERITY=y\nCONFIG_EXT4_FS=m\nCONFIG_EROFS_FS=m\nCONFIG_EROFS_FS_XATTR=y\nCONFIG_EROFS_FS_BACKED_BY_FILE=y\n" +
		"CONFIG_OVERLAY_FS=m\nCONFIG_SECURITY_IPE=y\nCONFIG_LSM=\"lockdown,ipe\"\nCONFIG_SECURITYFS=y\nCONFIG_IPE_PROP_FS_VERITY=y\n" +
		"CONFIG_SYSTEM_TRUSTED_KEYRING=y\nCONFIG_TCG_TPM=y\nCONFIG_TCG_TIS=y\n"
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(good))
	zw.Close()

	goodPath := write("good", good)
	gzPath := write("config.gz", gz.String())
	noLSM := write("nolsm", strings.Replace(good, `"lockdown,ipe"`, `"lockdown"`, 1))
	verityModule := write("veritym", strings.Replace(good, "CONFIG_FS_VERITY=y", "CONFIG_FS_VERITY=m", 1))
	noIPE := write("noipe", strings.Replace(good, "CONFIG_SECURITY_IPE=y", "# CONFIG_SECURITY_IPE is not set", 1))
	noHeader := write("noheader", strings.SplitN(good, "\n", 2)[1])
	signatureMode := write("sigmode", good+"CONFIG_FS_VERITY_BUILTIN_SIGNATURES=y\nCONFIG_IPE_PROP_FS_VERITY_BUILTIN_SIG=y\n")
	sigPropOnly := write("sigprop", good+"CONFIG_IPE_PROP_FS_VERITY_BUILTIN_SIG=y\n")

	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // "" for success
		usage   bool   // a usage error (exit 2)
		wantOut string
	}{
		{name: "good", args: []string{goodPath}, wantOut: "IPE policy modes: digest\nmissing: 0 required"},
		{name: "signature mode", args: []string{signatureMode}, wantOut: "IPE policy modes: digest, signature\n"},
		{name: "signature property without builtin signatures", args: []string{sigPropOnly}, wantOut: "IPE policy modes: digest\n"},
		{name: "gzip", args: []string{gzPath}, wantOut: "Linux 6.12.3"},
		{name: "no ipe", args: []string{noIPE}, wantErr: "lacks 1 required", wantOut: "CONFIG_SECURITY_IPE is not set"},
		{name: "module where built-in is needed", args: []string{verityModule}, wantErr: "lacks 1 required",
			wantOut: "CONFIG_FS_VERITY=m, but it must be built in (y)"},
		{name: "ipe not in CONFIG_LSM", args: []string{noLSM}, wantErr: "lacks 1 required", wantOut: "lacks ipe"},
		{name: "lsm= fixes it", args: []string{"--cmdline", "quiet lsm=lockdown,ipe", noLSM}, wantOut: "missing: 0 required"},
		{name: "lsm= breaks it", args: []string{goodPath, "--cmdline=lsm=lockdown"}, wantErr: "lacks 1 required",
			wantOut: "lsm=lockdown on the command line replaces CONFIG_LSM and lacks ipe"},
		{name: "no header", args: []string{noHeader}, wantErr: "lacks 2 required", wantOut: "pass --kernel-version"},
		{name: "no header, version given", args: []string{"--kernel-version", "6.12", noHeader}, wantOut: "missing: 0 required"},
		{name: "version override", args: []string{"--kernel-version=6.5", goodPath}, wantErr: "lacks 1 required",
			wantOut: "from --kernel-version; the config says 6.12.3"},
		{name: "bad version", args: []string{"--kernel-version", "x", goodPath}, usage: true, wantErr: "not a kernel version"},
		{name: "two configs", args: []string{goodPath, goodPath}, usage: true, wantErr: "at most one CONFIG"},
		{name: "unknown flag", args: []string{"--bogus", goodPath}, usage: true, wantErr: "bogus"},
		{name: "missing file", args: []string{filepath.Join(dir, "nope")}, wantErr: "no such file"},
		{name: "garbage", args: []string{write("garbage", "hello\nworld\n")}, wantErr: `line 1 is not CONFIG_NAME=VALUE or a comment: "hello"`},
		{name: "binary", args: []string{write("bin", "\x7fELF\x00\x00")}, wantErr: "NUL bytes"},
		{name: "empty", args: []string{write("empty", "")}, wantErr: "no CONFIG_ lines"},
		{name: "truncated gzip", args: []string{write("trunc.gz", gz.String()[:40])}, wantErr: "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := kernelCheck(tc.args...)
			var ue *usageError
			if tc.usage != errors.As(err, &ue) {
				t.Errorf("usage error = %v, want %v (err %v)", !tc.usage, tc.usage, err)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("err = %v\n%s", err, out)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want it to contain %q\n%s", err, tc.wantErr, out)
			}
			if !strings.Contains(out, tc.wantOut) {
				t.Errorf("output lacks %q:\n%s", tc.wantOut, out)
			}
		})
	}
}

// TestKernelCheckRunningKernel checks the default sources: /proc/config.gz
// first, then /boot/config-RELEASE, with /proc/cmdline for lsm=.
func TestKernelCheckRunningKernel(t *testing.T) {
	dir := t.TempDir()
	old := []string{procConfigGz, bootDir, osReleasePath, procCmdline}
	t.Cleanup(func() { procConfigGz, bootDir, osReleasePath, procCmdline = old[0], old[1], old[2], old[3] })
	procConfigGz = filepath.Join(dir, "config.gz")
	bootDir = dir
	osReleasePath = filepath.Join(dir, "osrelease")
	procCmdline = filepath.Join(dir, "cmdline")
	os.WriteFile(osReleasePath, []byte("6.12.9-test\n"), 0o644)
	os.WriteFile(procCmdline, []byte("console=ttyS0 lsm=lockdown\n"), 0o644)

	_, _, err := kernelCheck()
	if err == nil || !strings.Contains(err.Error(), "no config for the running kernel") {
		t.Fatalf("no config: err = %v", err)
	}
	const cfg = "# Linux/x86 6.12.9 Kernel Configuration\nCONFIG_SECURITY_IPE=y\nCONFIG_LSM=\"ipe\"\n"
	os.WriteFile(filepath.Join(dir, "config-6.12.9-test"), []byte(cfg), 0o644)
	out, _, _ := kernelCheck()
	if !strings.Contains(out, filepath.Join(dir, "config-6.12.9-test")+": Linux 6.12.9") {
		t.Errorf("did not read /boot/config-RELEASE:\n%s", out)
	}
	if !strings.Contains(out, "lsm=lockdown on the command line") {
		t.Errorf("did not apply the running kernel's lsm=:\n%s", out)
	}
	// --cmdline replaces /proc/cmdline, and /proc/config.gz wins over /boot.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(strings.Replace(cfg, "6.12.9", "6.13.1", 1)))
	zw.Close()
	os.WriteFile(procConfigGz, gz.Bytes(), 0o644)
	out, _, _ = kernelCheck("--cmdline", "")
	if !strings.Contains(out, procConfigGz+": Linux 6.13.1") || strings.Contains(out, "ipe-lsm") {
		t.Errorf("want /proc/config.gz and CONFIG_LSM without the command line:\n%s", out)
	}
}

func TestKernelCheckHelp(t *testing.T) {
	_, stderr, err := kernelCheck("--help")
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"usage: cfsroot kernel-check", "/proc/config.gz", "--kernel-version", "Exit status"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("help lacks %q:\n%s", want, stderr)
		}
	}
}
