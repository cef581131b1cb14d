// Command appliance is the whole userspace of the tiny appliance that
// README.md's "Build a signed appliance with your own keys" builds: the
// signed image's /sbin/init, which cfsroot's init executes as PID 1 after
// it has verified, measured and mounted the image and switched root into it.
//
// It says hello, prints what cfsroot's init left in
// /run/cfsroot/status.json (image, digest, signer, PCR values, IPE policy)
// on one line, tries to execute a copy of itself from outside the image (an
// enforced IPE policy that allows only the image's files denies it), and
// powers the machine off. Build it static, as any PID 1 without a libc in
// its root must be:
//
//	CGO_ENABLED=0 go build -o myroot/sbin/init ./examples/appliance
//
// A real appliance puts its own program (or systemd) here.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// statusFile is where cfsroot's init reports the boot (README "status.json").
const statusFile = "/run/cfsroot/status.json"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		return // run by tryCopy: getting here means the kernel let the copy execute
	}
	out := io.Writer(os.Stdout)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		out = f
	}
	fmt.Fprintf(out, "appliance: hello from the signed image, running as PID %d\n", os.Getpid())
	report(out)
	tryCopy(out)
	fmt.Fprintln(out, "appliance: powering off")
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintf(out, "appliance: power off: %v\n", err)
	}
}

// report prints status.json, compacted to one line.
func report(out io.Writer) {
	raw, err := os.ReadFile(statusFile)
	if err != nil {
		fmt.Fprintf(out, "appliance: %v\n", err)
		return
	}
	var line bytes.Buffer
	if err := json.Compact(&line, raw); err != nil {
		fmt.Fprintf(out, "appliance: %s: %v\n", statusFile, err)
		return
	}
	fmt.Fprintf(out, "appliance: status.json %s\n", line.Bytes())
}

// tryCopy copies this program to /run (a tmpfs, not the signed image) and
// executes the copy: under an enforced IPE policy that allows only the
// image's files, the kernel refuses with "permission denied".
func tryCopy(out io.Writer) {
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		fmt.Fprintf(out, "appliance: read myself: %v\n", err)
		return
	}
	const cp = "/run/appliance-copy"
	if err := os.WriteFile(cp, self, 0o755); err != nil {
		fmt.Fprintf(out, "appliance: write %s: %v\n", cp, err)
		return
	}
	defer os.Remove(cp)
	if err := exec.Command(cp, "probe").Run(); err != nil {
		fmt.Fprintf(out, "appliance: a copy of me outside the image: %v\n", err)
		return
	}
	fmt.Fprintln(out, "appliance: a copy of me outside the image: ran (no IPE policy enforced)")
}
