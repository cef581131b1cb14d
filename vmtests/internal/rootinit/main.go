// Command rootinit is /sbin/init of the composefs images the VM tests boot.
// It runs after cfsroot's switch_root and reports, as marker lines, what
// the booted system sees: the status file, the root mount, the PID, and the
// content of files read through the overlay (each read checked by the kernel
// against its object's fs-verity digest). Then it powers off.
//
// Files to read are listed in /etc/rootinit/read, one path per line. It
// also reports PCR 15 of every bank and the systemd-format event log, for
// the measured-boot test. With rootinit.run=A,B on the kernel command line
// (ignored by cfsroot's init, which reads only cfsroot.* keys) it runs the
// host tool /usr/bin/cfsroot for each named action, in order (see actions),
// and reports its output as result "run:A".
package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/vmtests/guest"
)

// reportTPM reads PCR 15 on every bank from /dev/tpmrm0 as the booted
// system sees it.
func reportTPM(out io.Writer) {
	ctx := context.Background()
	m, err := measure.Open(ctx, "")
	if err != nil {
		guest.Check(out, "pcr", nil, err)
		return
	}
	defer m.Close()
	vals, err := m.Read(ctx, measure.DefaultPCR)
	data := map[string]string{}
	for a, v := range vals {
		data[a.String()] = hex.EncodeToString(v)
	}
	guest.Check(out, "pcr", data, err)
}

func main() {
	out := os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		out = f
	}
	status, err := os.ReadFile("/run/cfsroot/status.json")
	guest.Check(out, "status", map[string]string{"json": string(status), "pid": fmt.Sprint(os.Getpid())}, err)

	mounts, err := os.ReadFile("/proc/self/mountinfo")
	root := ""
	for _, l := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == "/" {
			root = l // the last one is the visible root
		}
	}
	guest.Check(out, "root-mount", map[string]string{"mountinfo": root}, err)

	reportTPM(out)
	if log, err := os.ReadFile("/run/log/systemd/tpm2-measure.log"); err == nil {
		guest.Check(out, "eventlog", map[string]string{"base64": base64.StdEncoding.EncodeToString(log)}, nil)
	} else {
		guest.Check(out, "eventlog", nil, err)
	}
	guest.ReadFiles(out, "/etc/rootinit/read")
	runActions(out)
	// Is the root writable (an upper layer) or read-only?
	err = os.WriteFile("/var-write-test", []byte("x"), 0o644)
	guest.Check(out, "write", nil, err)
	// /usr stays read-only even with a persistent upper layer.
	err = os.WriteFile("/usr/.write-test", []byte("x"), 0o644)
	guest.Check(out, "write-usr", nil, err)
	guest.Check(out, "rootinit-done", nil, nil)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// actions are the rootinit.run= actions: arguments of /usr/bin/cfsroot.
var actions = map[string][]string{
	"provision": {"tpm", "provision"},
	"floor":     {"tpm", "floor"},
	// bless with a repository of its own on /run: the test is about the
	// anti-rollback floor, not the disk's slot state.
	"bless": {"bless", "--repo", "/run/rootinit-repo"},
	// bless-older: root lies in the status file, claiming an older booted
	// version: the floor must not go down.
	"bless-older": {"bless", "--repo", "/run/rootinit-repo", "--status", "/run/rootinit-older.json"},
}

func runActions(out io.Writer) {
	cmdline, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(cmdline)) {
		list, ok := strings.CutPrefix(f, "rootinit.run=")
		if !ok {
			continue
		}
		for _, a := range strings.Split(list, ",") {
			args, ok := actions[a]
			if !ok {
				guest.Check(out, "run:"+a, nil, fmt.Errorf("unknown action %q", a))
				continue
			}
			if a == "bless-older" {
				if err := writeOlderStatus(); err != nil {
					guest.Check(out, "run:"+a, nil, err)
					continue
				}
			}
			b, err := exec.Command("/usr/bin/cfsroot", args...).CombinedOutput()
			guest.Check(out, "run:"+a, map[string]string{"output": string(b)}, err)
		}
	}
}

// writeOlderStatus copies the init's status file with the booted security
// version lowered by one.
func writeOlderStatus() error {
	b, err := os.ReadFile("/run/cfsroot/status.json")
	if err != nil {
		return err
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	r, ok := st["rollback"].(map[string]any)
	if !ok {
		return fmt.Errorf("status.json has no rollback object")
	}
	v, _ := r["version"].(float64)
	if v < 1 {
		return fmt.Errorf("booted version %v cannot be lowered", v)
	}
	r["version"] = v - 1
	b, err = json.Marshal(st)
	if err != nil {
		return err
	}
	return os.WriteFile("/run/rootinit-older.json", b, 0o644)
}
