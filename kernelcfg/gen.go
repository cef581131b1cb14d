package kernelcfg

import (
	"bytes"
	"fmt"
	"strings"
)

// Fragment returns cfsroot.config: a kconfig fragment for the kernel's
// scripts/kconfig/merge_config.sh that turns on every required and
// recommended option (all alternatives of a group except those meant for
// other platforms) and the options they directly depend on.
// Everything is set to y so the result works without loading modules;
// tristate options may be switched to m afterwards (see README.md).
func Fragment() []byte {
	var b bytes.Buffer
	b.WriteString(`# cfsroot.config: kernel options for the cfsroot boot chain.
# Generated from kernelcfg/table.go; do not edit. Regenerate with
#   go test ./kernelcfg -run TestGenerated -update
# Merge into a kernel configuration with
#   scripts/kconfig/merge_config.sh -m .config cfsroot.config && make olddefconfig
# merge_config.sh warns about any value that did not survive (a dependency
# missing on your architecture); check the result with
#   cfsroot kernel-check .config
# Required and recommended options only; README.md lists optional ones,
# alternatives and why each option is needed.
`)
	written := map[string]bool{}
	var lines []string
	line := func(name, value string) {
		if written[name] {
			return
		}
		written[name] = true
		if value == "y" {
			lines = append(lines, fmt.Sprintf("CONFIG_%s=y\n", name))
		} else {
			lines = append(lines, fmt.Sprintf("CONFIG_%s=%q\n", name, value))
		}
	}
	for _, req := range table {
		if req.Level == Optional || len(req.AnyOf) == 0 {
			continue
		}
		lines = lines[:0]
		for _, o := range req.AnyOf {
			if o.NotInFragment {
				continue
			}
			for _, d := range o.Deps {
				line(d, "y")
			}
			v := o.Value
			if v == "" {
				v = "y"
			}
			line(o.Name, v)
		}
		if len(lines) > 0 { // else an earlier group's dependencies covered it
			fmt.Fprintf(&b, "\n# %s (%s)\n%s", req.ID, req.Level, strings.Join(lines, ""))
		}
	}
	return b.Bytes()
}

// Markdown returns README.md: every requirement with its options, level,
// first kernel release and reason.
func Markdown() []byte {
	var b bytes.Buffer
	b.WriteString(`# kernelcfg: the kernel options cfsroot needs

<!-- Generated from table.go; do not edit. Regenerate with
     go test ./kernelcfg -run TestGenerated -update -->

Package kernelcfg lists what the cfsroot boot chain needs from the kernel,
why, and since which mainline release; ` + "`cfsroot kernel-check [CONFIG]`" + ` checks a
kernel configuration (a .config, /proc/config.gz or /boot/config-*) against
this list and exits non-zero when a required item is missing.
[cfsroot.config](cfsroot.config) is a fragment for the kernel's
` + "`scripts/kconfig/merge_config.sh`" + ` with every required and recommended option.

In short, cfsroot needs **Linux 6.12 or later** (IPE), built with the
options below. Debian trixie's 6.12 kernel passes; bookworm's 6.1 does not
(no IPE, no overlayfs data-only layers or verity=, no file-backed EROFS).

Levels: **required** — the chain fails or loses a security property without
it; **recommended** — a documented feature or the project's VM tests need it;
**optional** — extra features. Where a row lists several options, **any one**
of them is enough. **Since** is the first mainline release in which the
option does what cfsroot needs ("< 5.4" means older than Linux 5.4).
**m ok** means the option may be a module (m) when the initramfs loads it;
the others must be y (most are bool options that cannot be modules).
`)
	section := ""
	for _, req := range table {
		if req.Section != section {
			section = req.Section
			fmt.Fprintf(&b, "\n## %s\n\n", section)
			b.WriteString("| ID | Level | Options | Since | Why |\n|---|---|---|---|---|\n")
		}
		var opts, sinces []string
		if req.MinKernel != "" {
			opts = append(opts, "(kernel release)")
			sinces = append(sinces, req.MinKernel)
		}
		for _, o := range req.AnyOf {
			s := "`CONFIG_" + o.Name
			if o.Contains != "" {
				s += "` contains `" + o.Contains + "`"
			} else {
				s += "`"
			}
			if o.Build == ModuleOK {
				s += " (m ok: `" + o.Module + "`)"
			}
			opts = append(opts, s)
			if o.Since == "" {
				sinces = append(sinces, "< 5.4")
			} else {
				sinces = append(sinces, o.Since)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", req.ID, req.Level,
			strings.Join(opts, " or "), strings.Join(sinces, " / "), strings.ReplaceAll(req.Why, "|", "\\|"))
	}
	b.WriteString(`
## Notes

- **lsm= and CONFIG_LSM.** IPE is built in or not at all, and a built-in LSM
  starts only when it is listed: CONFIG_LSM is the default list, and the
  ` + "`lsm=`" + ` boot parameter replaces it entirely. ` + "`cfsroot kernel-check`" + ` reads
  ` + "`lsm=`" + ` from ` + "`--cmdline`" + ` (or from /proc/cmdline when it checks the running
  kernel). On a running kernel, /sys/kernel/security/lsm lists the active LSMs.
- **Modules.** Tristate options marked *m ok* work as modules because the
  cfsroot init loads the modules the initramfs carries before it needs them.
  The fragment sets everything to y, which needs no module loading at all.
  ` + "`cfsroot kernel-check`" + ` prints the modules a given kernel needs loaded.
- **TPM.** cfsroot's embedded config may make the TPM optional; this list
  treats it as required because measuring the image is part of the chain.
  TCG_TPM2_HMAC (encrypted and authenticated TPM bus sessions) is not needed
  by cfsroot; Debian's 6.12 kernel leaves it off.
- **overlayfs options.** OVERLAY_FS_METACOPY, OVERLAY_FS_REDIRECT_DIR and
  friends only choose defaults; cfsroot passes ` + "`metacopy=on,redirect_dir=on,verity=require`" + `
  explicitly, so they may stay off (Debian leaves them off).
`)
	return b.Bytes()
}
