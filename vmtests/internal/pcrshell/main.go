// Command pcrshell stands in for a program an attacker gets to run after
// cfsroot's init: as the initramfs' /bin/sh it is the emergency shell of
// on_failure "shell"; planted in a persistent upper layer as /sbin/init it
// is what would run as PID 1 if the upper layer could override the image.
// It reports, as a marker line "pcr-shell", its PID, its argv[0] and PCR
// 15 of every bank, then powers off.
package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/vmtests/guest"
)

func main() {
	out := os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		out = f
	}
	data := map[string]string{"pid": fmt.Sprint(os.Getpid()), "argv0": os.Args[0]}
	ctx := context.Background()
	m, err := measure.Open(ctx, "")
	if err == nil {
		var vals map[measure.Alg][]byte
		vals, err = m.Read(ctx, measure.DefaultPCR)
		for a, v := range vals {
			data["pcr:"+a.String()] = hex.EncodeToString(v)
		}
		m.Close()
	}
	for _, p := range []string{"/run/log/systemd/tpm2-measure.log", "/sysroot/run/log/systemd/tpm2-measure.log"} {
		if b, err := os.ReadFile(p); err == nil {
			data["eventlog"] = base64.StdEncoding.EncodeToString(b)
			break
		}
	}
	guest.Check(out, "pcr-shell", data, err)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
