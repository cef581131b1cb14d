// Command demoguest runs inside the Debian root that `make demo` (and
// vmtests' TestDemo) boots through cfsroot. A systemd service starts it
// after multi-user.target; it waits until systemd has finished booting,
// reports what the booted system sees as marker lines on /dev/console
// (package vmtests/guest), and powers the machine off with systemctl.
//
// It reports raw observations (command outputs, file contents); the host
// judges them, so a check cannot pass because the guest said so.
//
// In the minimal demo root (DEMO_ROOT=minimal) it is the image's only
// program and runs as PID 1 itself: it reports the same observations it
// can make without systemd and tpm2-tools (PCRs through go-tpm), then
// powers off.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/vmtests/guest"
)

// ServiceName is the unit the demo installs (see vmtests/demo_test.go).
const ServiceName = "cfsroot-demo-report.service"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		// Executed by reportIPE: reaching this line means the kernel let it run.
		os.Exit(0)
	}
	out := io.Writer(os.Stdout)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		out = f
	}
	if os.Getpid() == 1 {
		minimal(out)
		return
	}
	fmt.Fprintln(out, "cfsroot-demo-report: waiting for systemd to finish booting")

	// The service is Type=simple, so its own start job is done and
	// is-system-running --wait returns once every other job is.
	state, err := command(10*time.Minute, "systemctl", "is-system-running", "--wait")
	guest.Check(out, "system-state", map[string]string{"state": strings.TrimSpace(state)}, nil)
	reportBootTime(out)
	_ = err // is-system-running exits non-zero for "degraded": the host judges the state

	failed, err := command(time.Minute, "systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager")
	guest.Check(out, "failed-units", map[string]string{"units": failed}, err)

	data := map[string]string{}
	exe, err := os.Readlink("/proc/1/exe")
	data["exe"] = exe
	comm, _ := os.ReadFile("/proc/1/comm")
	data["comm"] = strings.TrimSpace(string(comm))
	guest.Check(out, "pid1", data, err)

	def, _ := command(time.Minute, "systemctl", "get-default")
	active, err := command(time.Minute, "systemctl", "is-active", "multi-user.target", strings.TrimSpace(def))
	guest.Check(out, "target", map[string]string{"default": strings.TrimSpace(def), "active": active}, err)

	reportBoot(out)
	reportBless(out)

	// Two independent readers of PCR 15: tpm2-tools and systemd.
	pcrread, err := command(time.Minute, "tpm2_pcrread", "sha1:15+sha256:15+sha384:15+sha512:15")
	guest.Check(out, "tpm2_pcrread", map[string]string{"output": pcrread}, err)
	pcrs, err := command(time.Minute, "systemd-analyze", "pcrs", "15", "--json=short")
	guest.Check(out, "systemd-analyze-pcrs", map[string]string{"output": pcrs}, err)
	pcrsText, _ := command(time.Minute, "systemd-analyze", "pcrs", "15")
	fmt.Fprintf(out, "cfsroot-demo-report: systemd-analyze pcrs 15:\n%s\n", pcrsText)

	// An independent reader of the event log: systemd's own pcrlock parses
	// the firmware log and /run/log/systemd/tpm2-measure.log, replays them
	// and compares with the TPM (JSON on stdout, notices on stderr).
	pcrlock, pcrlockErr, err := commandOut(time.Minute, "/usr/lib/systemd/systemd-pcrlock", "log", "--json=short")
	guest.Check(out, "pcrlock-log", map[string]string{"stdout": pcrlock, "stderr": pcrlockErr}, err)

	reportIPE(out)
	reportSignatureMode(out)

	journal, _ := command(time.Minute, "journalctl", "-b", "--no-pager", "-q", "-p", "warning", "-o", "short-monotonic")
	guest.Check(out, "journal-warnings", map[string]string{"text": tail(journal, 60)}, nil)

	guest.Check(out, "report-done", nil, nil)
	// Hand the shutdown to systemd, which stops the units and unmounts
	// the composefs root as on any Debian machine.
	if _, err := command(time.Minute, "systemctl", "--no-block", "poweroff"); err != nil {
		fmt.Fprintf(out, "cfsroot-demo-report: systemctl poweroff: %v\n", err)
	}
}

// BlessUnit is the shipped examples/systemd unit the demo enables.
const BlessUnit = "cfsroot-bless.service"

// reportBless reports how the bless unit ended and what it printed. It is
// a oneshot unit wanted by multi-user.target, so its start job is over when
// systemd is running; it is still waited for, a little, in case it is not.
func reportBless(out io.Writer) {
	var show string
	var err error
	for i := 0; i < 60; i++ {
		show, err = command(time.Minute, "systemctl", "show", "-p", "Result,ActiveState,ExecMainStatus,InactiveExitTimestampMonotonic", BlessUnit)
		if err != nil || !strings.Contains(show, "ActiveState=activating") && !strings.Contains(show, "ActiveState=deactivating") {
			break
		}
		time.Sleep(time.Second)
	}
	reached, _ := command(time.Minute, "systemctl", "show", "--value", "-p", "ActiveEnterTimestampMonotonic", "boot-complete.target")
	journal, _ := command(time.Minute, "journalctl", "-b", "--no-pager", "-q", "-o", "cat", "-u", BlessUnit)
	guest.Check(out, "bless-unit", map[string]string{"show": show, "boot-complete": strings.TrimSpace(reached),
		"journal": tail(journal, 20)}, err)
}

// minimal is the report of the minimal root, where this program is PID 1.
func minimal(out io.Writer) {
	fmt.Fprintln(out, "cfsroot-demo-report: running as PID 1 of the minimal root")
	exe, err := os.Readlink("/proc/self/exe")
	guest.Check(out, "pid1", map[string]string{"exe": exe, "comm": "cfsroot-demo-report"}, err)
	reportBoot(out)
	ctx := context.Background()
	data := map[string]string{}
	m, err := measure.Open(ctx, "")
	if err == nil {
		var vals map[measure.Alg][]byte
		vals, err = m.Read(ctx, measure.DefaultPCR)
		for a, v := range vals {
			data[a.String()] = fmt.Sprintf("%x", v)
		}
		m.Close()
	}
	guest.Check(out, "pcr", data, err)
	reportIPE(out)
	guest.Check(out, "report-done", nil, nil)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// reportBoot reports cfsroot's status file, the root mount and the event log.
func reportBoot(out io.Writer) {
	status, err := os.ReadFile("/run/cfsroot/status.json")
	guest.Check(out, "status", map[string]string{"json": string(status)}, err)

	mounts, err := os.ReadFile("/proc/self/mountinfo")
	root := ""
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/" {
			root = l // the last one is the visible root
		}
	}
	guest.Check(out, "root-mount", map[string]string{"mountinfo": root}, err)

	evlog, err := os.ReadFile("/run/log/systemd/tpm2-measure.log")
	guest.Check(out, "eventlog", map[string]string{"base64": base64.StdEncoding.EncodeToString(evlog)}, err)

	// The host damaged this file's object on the disk after signing.
	_, err = os.ReadFile(tamperedFile)
	guest.Check(out, "read-tampered", nil, err)
}

// tamperedFile is vmtests' demoTampered.
const tamperedFile = "/usr/share/cfsroot-demo/tampered.txt"

// reportIPE reports the IPE state from securityfs (cfsroot's init mounts
// it, and it moves with /sys into the new root) and, when IPE enforces,
// executes this program from the image (allowed) and a copy of it on tmpfs,
// outside the signed image: the kernel must refuse the copy.
func reportIPE(out io.Writer) {
	const dir = "/sys/kernel/security/ipe"
	data := map[string]string{}
	read := func(p string) string {
		b, _ := os.ReadFile(p)
		return strings.TrimSpace(string(b))
	}
	if _, err := os.Stat(dir); err != nil {
		guest.Check(out, "ipe", nil, err)
		return
	}
	data["enforce"] = read(filepath.Join(dir, "enforce"))
	policies, _ := filepath.Glob(filepath.Join(dir, "policies", "*"))
	for _, p := range policies {
		if read(filepath.Join(p, "active")) == "1" {
			data["active"] = filepath.Base(p)
			data["version"] = read(filepath.Join(p, "version"))
		}
	}
	guest.Check(out, "ipe", data, nil)
	if data["enforce"] != "1" || data["active"] == "" {
		return
	}
	self, err := os.Executable()
	r := map[string]string{"path": self}
	if err == nil {
		err = exec.Command(self, "probe").Run()
	}
	if err != nil {
		r["error"] = err.Error()
	}
	guest.Check(out, "ipe-exec-image", r, nil)

	// /run is a tmpfs, not the signed image: no rule can match this copy.
	const cp = "/run/cfsroot-demo-copy"
	src, err := os.ReadFile(self)
	if err == nil {
		err = os.WriteFile(cp, src, 0o755)
	}
	if err == nil {
		err = exec.Command(cp, "probe").Run()
	}
	r = map[string]string{"path": cp}
	if err != nil {
		r["error"] = err.Error()
	}
	guest.Check(out, "ipe-exec-outside-image", r, nil)
}

// command runs a program and returns its standard output and error.
func command(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var b bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return b.String(), err
}

// commandOut runs a program and returns its standard output and standard
// error apart.
func commandOut(timeout time.Duration, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return o.String(), e.String(), err
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
