package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// The guide's markers in README.md, and the lines the test may replace.
const (
	guideBegin = "<!-- guide:begin"
	guideEnd   = "<!-- guide:end -->"
)

// TestReadmeGuide runs README.md's "Build a signed appliance with your own
// keys" as a user would: the ```sh block between the guide markers, as
// written, from the top of the repository, with only the W= (work
// directory) and KEYS= (keys) lines pointed at a temporary directory. The
// guide builds the appliance (examples/appliance as /sbin/init), keys,
// image, signature, IPE policy, PCR prediction, config, initramfs and disk,
// and boots it with its own QEMU command line (OVMF, swtpm); the first boot
// enables fs-verity (provision_verity). The test then checks what the
// appliance printed: it ran as PID 1, the init verified the signature of
// the image whose digest fsverity-utils computes, by the guide's key,
// measured PCR 15 to the value `cfsroot pcr predict` printed, and enforced
// the IPE policy (a copy of the appliance outside the image is denied).
func TestReadmeGuide(t *testing.T) {
	vm.RequireKernel(t) // the guide's tools/fetch-kernel.sh finds this cache
	vm.RequireTools(t, "bash", "make", "openssl", "fsverity", "swtpm", "mkfs.ext4", "qemu-system-x86_64", "git")
	vm.RequireOVMF(t)
	repo, err := vm.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	script, err := guideScript(string(readme))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	w, keys := filepath.Join(tmp, "appliance"), filepath.Join(tmp, "keys")
	script, err = substituteLine(script, "W=", "W="+w)
	if err == nil {
		script, err = substituteLine(script, "KEYS=", "KEYS="+keys)
	}
	if err != nil {
		t.Fatalf("README.md guide: %v", err)
	}

	// Run it, the console included, into a log file; kill everything it
	// started (QEMU, swtpm) if it runs too long or the test ends early.
	logPath := vm.ConsoleLogPath(t, "vm")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euxo", "pipefail", "-c", script)
	cmd.Dir = repo
	cmd.Stdout = io.MultiWriter(logFile, &out)
	cmd.Stderr = cmd.Stdout
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second // a swtpm left running must not hold the output pipe
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		// swtpm --daemon runs in a session of its own; with --terminate it
		// ends with QEMU's connection, but not if QEMU never connected.
		if b, err := os.ReadFile(filepath.Join(w, "tpm", "swtpm.pid")); err == nil {
			killIfCmdline(strings.TrimSpace(string(b)), w)
		}
	})
	runErr := cmd.Wait()
	t.Logf("README guide ran in %.1fs (output and console: %s)", time.Since(start).Seconds(), logPath)
	if runErr != nil {
		t.Fatalf("README guide failed: %v (ctx: %v); last lines:\n%s", runErr, ctx.Err(), lastLines(out.String(), 40))
	}

	// What the appliance printed.
	console := out.String()
	lines := map[string]string{}
	var order []string
	s := bufio.NewScanner(strings.NewReader(console))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		l := strings.TrimRight(s.Text(), "\r")
		if i := strings.Index(l, "appliance: "); i >= 0 && !strings.HasPrefix(l, "+") {
			rest := l[i+len("appliance: "):]
			key, _, _ := strings.Cut(rest, " ")
			lines[key] = rest
			order = append(order, rest)
		}
	}
	t.Logf("the appliance printed:\n%s", strings.Join(order, "\n"))
	if l := lines["hello"]; !strings.HasSuffix(l, "running as PID 1") {
		t.Errorf("the appliance did not run as PID 1: %q", l)
	}
	var st boot.Status
	if err := json.Unmarshal([]byte(strings.TrimPrefix(lines["status.json"], "status.json ")), &st); err != nil {
		t.Fatalf("status.json as the appliance printed it: %v (%q)", err, lines["status.json"])
	}
	img := filepath.Join(w, "disk/composefs/images/prod.cfs")
	fsverityDigest := strings.Fields(string(runCmd(t, "fsverity", "digest", img)))[0]
	if st.Image != "prod" || st.Digest != fsverityDigest || st.DigestSource != "kernel" {
		t.Errorf("booted %s %s (from %s), want prod %s from the kernel (fsverity digest)", st.Image, st.Digest, st.DigestSource, fsverityDigest)
	}
	if p := st.Provision; p == nil || p.Images != 1 || p.Objects != 1 || len(p.Errors) > 0 {
		t.Errorf("first boot: want fs-verity enabled by provision_verity on 1 image and 1 object, status.json says %+v", p)
	}
	if signer := certSHA256(t, filepath.Join(keys, "image.pem")); st.VerifiedBy != "signature" ||
		st.Signer != "CN=my image signer" || st.SignerSHA256 != signer {
		t.Errorf("verified by %s, signer %s (sha256 %s); want signature by CN=my image signer (sha256 %s)",
			st.VerifiedBy, st.Signer, st.SignerSHA256, signer)
	}
	predicted, err := os.ReadFile(filepath.Join(w, "pcr15.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := parsePredict(t, string(predicted))
	if !st.TPM.Measured || st.TPM.Banks["sha256"] == "" {
		t.Errorf("not measured into the TPM: %+v", st.TPM)
	}
	for bank, v := range st.TPM.Banks {
		if want[bank] != v {
			t.Errorf("PCR 15 %s after the boot is %s, the guide's cfsroot pcr predict said %s", bank, v, want[bank])
		}
	}
	if st.IPE == nil || !st.IPE.Active || !st.IPE.Enforced {
		t.Errorf("IPE policy not active and enforced: %+v", st.IPE)
	}
	if l := lines["a"]; !strings.Contains(l, "outside the image") || !strings.HasSuffix(l, "permission denied") {
		t.Errorf("a copy of the appliance outside the image was not denied: %q", l)
	}
	if strings.Contains(console, "cfsroot mkimage: warning") {
		t.Errorf("the guide's root tree made mkimage warn (see %s)", logPath)
	}
	if !strings.Contains(console, "reboot: Power down") {
		t.Errorf("the appliance did not power the machine off")
	}

	// The keys' and the build's default places are ignored by git.
	if _, err := os.Stat(filepath.Join(repo, ".git")); err == nil {
		for _, p := range []string{"keys/image.key", "out/appliance/disk.img"} {
			if b, err := exec.Command("git", "-C", repo, "check-ignore", "-q", p).CombinedOutput(); err != nil {
				t.Errorf("git does not ignore %s (the guide's default place): %v %s", p, err, b)
			}
		}
	}
}

// guideScript returns the shell commands of README.md's guide: the ```sh
// blocks between the guide markers, which must appear once each.
func guideScript(readme string) (string, error) {
	if strings.Count(readme, guideBegin) != 1 || strings.Count(readme, guideEnd) != 1 {
		return "", fmt.Errorf("README.md: want one %q and one %q marker", guideBegin, guideEnd)
	}
	_, rest, _ := strings.Cut(readme, guideBegin)
	body, _, _ := strings.Cut(rest, guideEnd)
	var script []string
	in := false
	for _, l := range strings.Split(body, "\n") {
		switch {
		case !in && l == "```sh":
			in = true
		case in && l == "```":
			in = false
		case in:
			script = append(script, l)
		}
	}
	if in || len(script) == 0 {
		return "", errors.New("README.md: no complete ```sh block between the guide markers")
	}
	return strings.Join(script, "\n") + "\n", nil
}

// substituteLine replaces the one line that starts with prefix.
func substituteLine(script, prefix, with string) (string, error) {
	lines := strings.Split(script, "\n")
	n := 0
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			lines[i] = with
			n++
		}
	}
	if n != 1 {
		return "", fmt.Errorf("want one line starting with %q, found %d", prefix, n)
	}
	return strings.Join(lines, "\n"), nil
}

// certSHA256 is the SHA-256 of a PEM certificate's DER, as status.json
// reports the signer.
func certSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	sum := sha256.Sum256(blk.Bytes)
	return hex.EncodeToString(sum[:])
}

// killIfCmdline kills process pid if its command line mentions mark (so a
// stale pid file cannot make the test kill another process).
func killIfCmdline(pid, mark string) {
	cmdline, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if err != nil || !bytes.Contains(cmdline, []byte(mark)) {
		return
	}
	if n, err := strconv.Atoi(pid); err == nil && n > 1 {
		_ = syscall.Kill(n, syscall.SIGKILL)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
