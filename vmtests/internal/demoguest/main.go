// Command demoguest runs inside the Debian root that `make demo` (and
// vmtests' TestDemo) boots through cfsroot. A systemd service starts it
// after multi-user.target; it waits until systemd has finished booting,
// reports what the booted system sees as marker lines on /dev/console
// (package vmtests/guest), and powers the machine off with systemctl.
//
// It reports raw observations (command outputs, file contents); the host
// judges them, so a check cannot pass because the guest said so.
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

	"github.com/cfsroot/cfsroot/vmtests/guest"
)

// ServiceName is the unit the demo installs (see vmtests/demo_test.go).
const ServiceName = "cfsroot-demo-report.service"

func main() {
	out := io.Writer(os.Stdout)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		out = f
	}
	fmt.Fprintln(out, "cfsroot-demo-report: waiting for systemd to finish booting")

	// The service is Type=simple, so its own start job is done and
	// is-system-running --wait returns once every other job is.
	state, err := command(10*time.Minute, "systemctl", "is-system-running", "--wait")
	guest.Check(out, "system-state", map[string]string{"state": strings.TrimSpace(state)}, nil)
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

	// Two independent readers of PCR 15: tpm2-tools and systemd.
	pcrread, err := command(time.Minute, "tpm2_pcrread", "sha1:15+sha256:15+sha384:15+sha512:15")
	guest.Check(out, "tpm2_pcrread", map[string]string{"output": pcrread}, err)
	pcrs, err := command(time.Minute, "systemd-analyze", "pcrs", "15", "--json=short")
	guest.Check(out, "systemd-analyze-pcrs", map[string]string{"output": pcrs}, err)
	pcrsText, _ := command(time.Minute, "systemd-analyze", "pcrs", "15")
	fmt.Fprintf(out, "cfsroot-demo-report: systemd-analyze pcrs 15:\n%s\n", pcrsText)

	reportIPE(out)

	journal, _ := command(time.Minute, "journalctl", "-b", "--no-pager", "-q", "-p", "warning", "-o", "short-monotonic")
	guest.Check(out, "journal-warnings", map[string]string{"text": tail(journal, 60)}, nil)

	guest.Check(out, "report-done", nil, nil)
	// Hand the shutdown to systemd, which stops the units and unmounts
	// the composefs root as on any Debian machine.
	if _, err := command(time.Minute, "systemctl", "--no-block", "poweroff"); err != nil {
		fmt.Fprintf(out, "cfsroot-demo-report: systemctl poweroff: %v\n", err)
	}
}

// reportIPE reports the IPE state from securityfs (systemd mounts it at
// /sys/kernel/security) and, when IPE enforces, tries to execute a copy of
// a binary that is outside the signed image: the kernel must refuse it.
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
	// /run is a tmpfs, not the signed image: no rule can match this copy.
	src, err := os.ReadFile("/usr/bin/true")
	if err == nil {
		err = os.WriteFile("/run/cfsroot-demo-true", src, 0o755)
	}
	if err == nil {
		err = exec.Command("/run/cfsroot-demo-true").Run()
	}
	r := map[string]string{}
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

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
