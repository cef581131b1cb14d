// Command mkinitramfs builds a cfsroot initramfs; mkinitramfs.sh at the top
// of the repository builds and runs it. See usage for the flags and the
// layout, and package initramfs for the work.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs"
)

const usage = `usage: mkinitramfs.sh -o OUT -init INIT [flags]

Builds a cfsroot initramfs: a compressed newc cpio archive with the static
init, its config, trusted certificates, an optional signed IPE policy and
kernel modules. The same inputs give the same bytes: entries are sorted,
owned by root and stamped with SOURCE_DATE_EPOCH (default 0).

Flags:
  -o FILE          write the initramfs to FILE (replaced atomically)
  -init FILE       the static init binary; becomes /init
  -kernel-modules DIR
                   kernel module tree with modules.dep: lib/modules/KVER, or a
                   root holding one lib/modules/KVER (e.g. .cache/kernel/trixie)
  -modules LIST    module names to load, comma or space separated (repeatable);
                   hard dependencies (modules.dep) and soft dependencies
                   (modules.softdep, e.g. libcrc32c -> crc32c) are added,
                   built-in modules skipped
  -cert FILE       trusted certificate, PEM or DER (repeatable)
  -fsverity-cert FILE
                   certificate of a key that signs objects' builtin fs-verity
                   signatures, PEM or DER (repeatable); the init adds it to the
                   .fs-verity keyring when the config says "fsverity_certs"
  -config FILE     the init's config; it is loaded with the init's own parser
                   (boot.LoadConfig) and any error stops the build, so a typo
                   is found here rather than when the device boots
  -policy FILE     signed IPE policy: DER PKCS#7 from
                   openssl smime -sign -nodetach -noattr -binary -outform der
  -file SRC:DST[:MODE]
                   extra file SRC at absolute path DST, octal MODE (repeatable)
  -compress C      zstd (default; the kernel needs CONFIG_RD_ZSTD), gzip or none
  -shell auto|yes|no
                   carry an emergency shell for on_failure "shell": u-root's
                   gosh at /bin/sh and its core commands (cat cp dmesg grep ls
                   mkdir mount ps umount) in /bin, built static with the Go
                   toolchain from the u-root version in go.mod (the first
                   build downloads it). auto (default): when -config sets
                   allow_shell
  -q               do not print the summary

Layout (package initramfs/layout):
  /init                          the static init binary (mode 0755)
  /etc/cfsroot/config            the init's config, copied byte for byte
  /etc/cfsroot/certs/NAME        trusted certificates, file names kept
  /etc/cfsroot/fsverity-certs/NAME  object signers (-fsverity-cert), names kept
  /etc/cfsroot/ipe/policy.p7s    the signed IPE policy, if given
  /etc/cfsroot/modules.list      modules to load, in order: one absolute
                                 path per line; "optional" after the path
                                 marks a soft dependency that may fail
  /lib/modules/KVER/PATH.ko      modules, decompressed, at their modules.dep
                                 paths; modules.dep for them alongside
  /dev/console, /dev/null        device nodes; /proc /sys /run /tmp empty
  /bin/sh, /bin/NAME             with -shell: gosh and u-root core commands
`

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n(see mkinitramfs.sh -help)\n", err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mkinitramfs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stdout, usage) }
	var (
		out, init, modDir, config, policy, comp string
		shell                                   string
		modules, certs, fvCerts, files          multi
		quiet                                   bool
	)
	fs.StringVar(&out, "o", "", "")
	fs.StringVar(&init, "init", "", "")
	fs.StringVar(&modDir, "kernel-modules", "", "")
	fs.Var(&modules, "modules", "")
	fs.Var(&certs, "cert", "")
	fs.Var(&fvCerts, "fsverity-cert", "")
	fs.StringVar(&config, "config", "", "")
	fs.StringVar(&policy, "policy", "", "")
	fs.Var(&files, "file", "")
	fs.StringVar(&comp, "compress", string(initramfs.Zstd), "")
	fs.BoolVar(&quiet, "q", false, "")
	fs.StringVar(&shell, "shell", "auto", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if out == "" || init == "" {
		return usageError{errors.New("-o and -init are required")}
	}
	s := initramfs.Spec{
		Init:          init,
		ModuleDir:     modDir,
		Certs:         certs,
		FsverityCerts: fvCerts,
		Config:        config,
		Policy:        policy,
		Compression:   initramfs.Compression(comp),
	}
	for _, m := range modules {
		s.Modules = append(s.Modules, strings.FieldsFunc(m, func(r rune) bool { return r == ',' || r == ' ' })...)
	}
	for _, f := range files {
		file, err := parseFile(f)
		if err != nil {
			return usageError{err}
		}
		s.Files = append(s.Files, file)
	}
	switch shell {
	case "auto", "yes", "no":
	default:
		return usageError{fmt.Errorf("-shell %q: want auto, yes or no", shell)}
	}
	allowShell := false
	if config != "" {
		// The init refuses a config its parser rejects, at boot, with the
		// device powering off: refuse to build such an initramfs instead.
		cfg, err := boot.LoadConfig(config)
		if err != nil {
			return fmt.Errorf("-config: the init would refuse this config at boot, so no initramfs was built: %w", err)
		}
		allowShell = cfg.AllowShell
	}
	if shell == "auto" {
		shell = map[bool]string{true: "yes", false: "no"}[allowShell]
	}
	if shell == "yes" {
		dir, err := os.MkdirTemp("", "mkinitramfs-shell-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		sh, err := initramfs.BuildShell(dir)
		if err != nil {
			return err
		}
		s.Files = append(s.Files, sh...)
	}
	if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
		t, err := strconv.ParseInt(e, 10, 64)
		if err != nil || t < 0 {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds since 1970", e)
		}
		s.ModTime = t
	}
	start := time.Now()
	res, err := initramfs.WriteFile(out, s)
	if err != nil {
		return err
	}
	if !quiet {
		var names []string
		for _, m := range res.Modules {
			n := m.Name
			if m.Optional {
				n += "(optional)"
			}
			names = append(names, n)
		}
		fmt.Fprintf(stdout, "%s: %d entries, %d bytes (%d uncompressed), built in %v\n",
			out, len(res.Paths), res.Size, res.CPIOSize, time.Since(start).Round(time.Millisecond))
		if len(names) > 0 {
			fmt.Fprintf(stdout, "modules for %s: %s\n", res.KernelVersion, strings.Join(names, " "))
		}
		if len(res.Builtin) > 0 {
			fmt.Fprintf(stdout, "built into the kernel, not carried: %s\n", strings.Join(res.Builtin, " "))
		}
	}
	return nil
}

// parseFile parses SRC:DST[:MODE].
func parseFile(arg string) (initramfs.File, error) {
	parts := strings.Split(arg, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return initramfs.File{}, fmt.Errorf("-file %q: want SRC:DST or SRC:DST:MODE", arg)
	}
	f := initramfs.File{Src: parts[0], Dst: parts[1]}
	if len(parts) == 3 {
		m, err := strconv.ParseUint(parts[2], 8, 32)
		if err != nil || m == 0 || m > 0o777 {
			return f, fmt.Errorf("-file %q: MODE %q is not octal permission bits such as 0755", arg, parts[2])
		}
		f.Mode = os.FileMode(m)
	}
	return f, nil
}
