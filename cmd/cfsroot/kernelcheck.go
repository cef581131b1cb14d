package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cfsroot/cfsroot/kernelcfg"
)

func init() {
	register(&command{
		name:    "kernel-check",
		args:    "[--cmdline STRING] [--kernel-version X.Y] [-v] [CONFIG]",
		summary: "check a kernel config for the options cfsroot needs; exit 1 if a required one is missing",
		run:     runKernelCheck,
	})
}

const kernelCheckHelp = `CONFIG is a .config, a /boot/config-* file or a gzipped /proc/config.gz. Without it,
the running kernel's is read: /proc/config.gz, else /boot/config-$(uname -r), and its
command line (/proc/cmdline) is used for lsm= unless --cmdline is given.

Prints each missing required, recommended and optional item with the reason (and, when
the kernel predates an option, the release that added it), then the modules the
initramfs must load for this kernel. Exit status: 0 if every required item is there,
1 if one is missing or CONFIG cannot be read or parsed, 2 for usage errors.
Features without an option of their own (overlayfs data-only layers, verity=) are
checked against the kernel release in the config's header comment. The full list, with
reasons, is kernelcfg/README.md; kernelcfg/cfsroot.config is a merge_config.sh fragment.
`

// Where the running kernel's config and command line are; tests point
// these elsewhere.
var (
	procConfigGz  = "/proc/config.gz"
	bootDir       = "/boot"
	osReleasePath = "/proc/sys/kernel/osrelease"
	procCmdline   = "/proc/cmdline"
)

func runKernelCheck(args []string, stdout, stderr io.Writer) error {
	c := commands["kernel-check"]
	fs := newFlagSet(c, stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: cfsroot %s %s\n\n%s.\n\n%s\nFlags:\n", c.name, c.args, c.summary, kernelCheckHelp)
		fs.PrintDefaults()
	}
	cmdline := fs.String("cmdline", "", "kernel command line the kernel boots with; its lsm= replaces CONFIG_LSM "+
		"(default: /proc/cmdline when checking the running kernel, else none)")
	kver := fs.String("kernel-version", "", "kernel release X.Y to assume when the config has no version header (overrides the header)")
	verbose := fs.Bool("v", false, "also list the items that are met, and how")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("kernel-check: at most one CONFIG, got %d", len(pos))
	}
	var opt kernelcfg.CheckOptions
	if *kver != "" {
		if opt.Version, err = kernelcfg.ParseVersion(*kver); err != nil {
			return usagef("--kernel-version: %v", err)
		}
	}
	cmdlineSet := false
	fs.Visit(func(f *flag.Flag) { cmdlineSet = cmdlineSet || f.Name == "cmdline" })
	opt.Cmdline = *cmdline

	var path string
	if len(pos) == 1 {
		path = pos[0]
	} else {
		if path, err = runningConfig(); err != nil {
			return err
		}
		if !cmdlineSet {
			b, err := os.ReadFile(procCmdline)
			if err != nil {
				return fmt.Errorf("kernel-check: reading the running kernel's command line: %w (pass --cmdline)", err)
			}
			opt.Cmdline = strings.TrimSpace(string(b))
		}
	}
	cfg, err := kernelcfg.ReadFile(path)
	if err != nil {
		return fmt.Errorf("kernel-check: %w", err)
	}
	rep := kernelcfg.Check(cfg, opt)
	printKernelReport(stdout, path, cfg, opt, rep, *verbose)
	if n := len(rep.Missing(kernelcfg.Required)); n > 0 {
		return fmt.Errorf("kernel-check: %s lacks %d required item(s); see above", path, n)
	}
	return nil
}

// runningConfig finds the running kernel's configuration.
func runningConfig() (string, error) {
	if _, err := os.Stat(procConfigGz); err == nil {
		return procConfigGz, nil
	}
	rel, err := os.ReadFile(osReleasePath)
	if err != nil {
		return "", fmt.Errorf("kernel-check: reading the running kernel's release: %w; pass a CONFIG path", err)
	}
	boot := filepath.Join(bootDir, "config-"+strings.TrimSpace(string(rel)))
	if _, err := os.Stat(boot); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("kernel-check: no config for the running kernel: neither %s (needs CONFIG_IKCONFIG_PROC, "+
				"or modprobe configs) nor %s exists; pass a CONFIG path", procConfigGz, boot)
		}
		return "", fmt.Errorf("kernel-check: %w", err)
	}
	return boot, nil
}

func printKernelReport(w io.Writer, path string, cfg *kernelcfg.Config, opt kernelcfg.CheckOptions, rep *kernelcfg.Report, verbose bool) {
	ver := "Linux " + rep.Version.String()
	switch {
	case !opt.Version.IsZero() && !cfg.Version.IsZero():
		ver += fmt.Sprintf(" (from --kernel-version; the config says %s)", cfg.Version)
	case !opt.Version.IsZero():
		ver += " (from --kernel-version)"
	case rep.Version.IsZero():
		ver = "Linux version unknown (no version header; pass --kernel-version)"
	}
	fmt.Fprintf(w, "%s: %s\n", path, ver)
	for _, res := range rep.Results {
		if res.OK && !verbose {
			continue
		}
		status := "MISSING"
		if res.OK {
			status = "ok"
		}
		fmt.Fprintf(w, "\n%s %s [%s]: %s\n", status, res.ID, res.Level, res.Detail)
		if !res.OK {
			fmt.Fprintf(w, "    %s\n", res.Why)
		}
	}
	fmt.Fprintln(w)
	if mods := rep.Modules(); len(mods) > 0 {
		fmt.Fprintf(w, "modules the initramfs must load: %s\n", strings.Join(mods, " "))
	}
	if modes := rep.Modes(); len(modes) > 0 {
		fmt.Fprintf(w, "IPE policy modes: %s\n", strings.Join(modes, ", "))
	} else {
		fmt.Fprintln(w, "IPE policy modes: none (required options are missing)")
	}
	fmt.Fprintf(w, "missing: %d required, %d recommended, %d optional\n",
		len(rep.Missing(kernelcfg.Required)), len(rep.Missing(kernelcfg.Recommended)), len(rep.Missing(kernelcfg.Optional)))
}
