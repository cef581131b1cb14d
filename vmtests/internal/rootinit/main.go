// Command rootinit is /sbin/init of the composefs images the VM tests boot.
// It runs after cfsroot's switch_root and reports, as marker lines, what
// the booted system sees: the status file, the root mount, the PID, and the
// content of files read through the overlay (each read checked by the kernel
// against its object's fs-verity digest). Then it powers off.
//
// Files to read are listed in /etc/rootinit/read, one path per line. It
// also reports PCR 15 of every bank and the systemd-format event log, for
// the measured-boot test.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
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
	if f, err := os.Open("/etc/rootinit/read"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			p := strings.TrimSpace(s.Text())
			if p == "" {
				continue
			}
			b, err := os.ReadFile(p)
			sum := sha256.Sum256(b)
			guest.Check(out, "read:"+p, map[string]string{"sha256": hex.EncodeToString(sum[:])}, err)
		}
		f.Close()
	}
	// Is the root writable (an upper layer) or read-only?
	err = os.WriteFile("/var-write-test", []byte("x"), 0o644)
	guest.Check(out, "write", nil, err)
	guest.Check(out, "rootinit-done", nil, nil)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
