// Command init is cfsroot's PID 1 for the initramfs. It boots only the
// composefs image its embedded config trusts: it finds the image, checks its
// fs-verity digest against a signature (or a pinned digest), measures it
// into the TPM, mounts it with overlayfs verity=require, loads the signed
// IPE policy and switches root into it. Any failure stops the boot, and the
// config (never the kernel command line) says what happens then.
//
// Build it static: CGO_ENABLED=0 go build -trimpath ./init
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs/kmod"
	"github.com/cfsroot/cfsroot/initramfs/layout"
)

func main() {
	console := openConsole()
	if os.Getpid() != 1 {
		fmt.Fprintln(console, "cfsroot init: not PID 1; this program only runs as the initramfs' /init")
		os.Exit(2)
	}
	log := boot.NewLogger(console)
	b := &boot.Boot{Log: log, Env: boot.SystemEnv()}
	err := run(b)
	// run returns only on failure: SwitchRoot does not return on success.
	log.Errorf("failed", "BOOT FAILED: %v", err)
	// Cap the PCR before anything else runs (Run did already for its own
	// failures; Fail runs once).
	capErr := b.Fail(context.Background(), err)
	fail(log, b.Config, capErr)
}

// openConsole returns /dev/console once devtmpfs is mounted, falling back
// to the stdout the kernel gave PID 1.
func openConsole() io.Writer {
	if err := boot.EarlyMounts(); err != nil {
		fmt.Fprintf(os.Stdout, "cfsroot: [early] %v\n", err)
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		return f
	}
	return os.Stdout
}

// run boots, filling in b as it goes; it returns only on failure. A panic
// becomes an error: PID 1 must not die.
func run(b *boot.Boot) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &boot.StepError{Step: "init", Err: fmt.Errorf("panic: %v", r)}
		}
	}()
	log := b.Log
	cfg, err := boot.LoadConfig(boot.ConfigPath)
	if err != nil {
		return &boot.StepError{Step: "config", File: boot.ConfigPath, Err: err}
	}
	b.Config = cfg
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return &boot.StepError{Step: "cmdline", File: "/proc/cmdline", Err: err}
	}
	choice, err := boot.ParseCmdline(string(cmdline), cfg)
	if err != nil {
		return &boot.StepError{Step: "cmdline", Err: err}
	}
	log.Debug = choice.Debug

	if f, err := os.Open(layout.ModuleList); err == nil {
		entries, err := kmod.ParseList(f)
		f.Close()
		if err != nil {
			return &boot.StepError{Step: "modules", File: layout.ModuleList, Err: err}
		}
		start := time.Now()
		if err := kmod.Load(entries, func(format string, a ...any) { log.Debugf("modules", format, a...) }); err != nil {
			return &boot.StepError{Step: "modules", Err: err}
		}
		log.Infof("modules", "loaded %d modules in %v", len(entries), time.Since(start).Round(time.Millisecond))
	}

	b.Choice = choice
	st, err := b.Run(context.Background())
	if err != nil {
		return err
	}
	log.Infof("switch_root", "booting %s (%s) with %s", st.Image, st.Digest, cfg.Init)
	if err := boot.SwitchRoot(boot.NewRoot, cfg.Init, cfg.InitArgs); err != nil {
		return &boot.StepError{Step: "switch_root", Err: err}
	}
	return errors.New("switch_root returned")
}

// fail carries out the config's on_failure action. PID 1 must not exit
// (the kernel would panic), so every path ends in power-off, reboot, a
// shell or an endless sleep. A shell runs only once the PCR is capped
// (capErr nil): otherwise it might find, or extend the PCR to, a good
// boot's value and unseal what is bound to it.
func fail(log *boot.Logger, cfg *boot.Config, capErr error) {
	action := "halt"
	if cfg != nil {
		action = cfg.OnFailure
	}
	unix.Sync()
	switch action {
	case "reboot":
		log.Errorf("failed", "rebooting (on_failure: reboot)")
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	case "shell":
		if capErr != nil {
			log.Errorf("failed", "not starting a shell: the PCR is not capped (%v); powering off", capErr)
			unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
			break
		}
		log.Errorf("failed", "starting an emergency shell (on_failure: shell)")
		// The kernel starts PID 1 without PATH; the shell needs one to find
		// the initramfs' commands in /bin.
		env := append(os.Environ(), "PATH=/bin:/sbin:/usr/bin:/usr/sbin")
		for _, sh := range []string{"/bin/sh", "/bin/busybox"} {
			if _, err := os.Stat(sh); err == nil {
				unix.Exec(sh, []string{sh}, env)
			}
		}
		log.Errorf("failed", "no shell in the initramfs; powering off")
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	default:
		log.Errorf("failed", "powering off (on_failure: halt)")
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	for {
		time.Sleep(time.Hour)
	}
}
