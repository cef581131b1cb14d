package boot

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// Choice is what the kernel command line selected within the config.
type Choice struct {
	// Slots to try, in order: the config's, or the one cfsroot.image= named
	// first (followed by the others only if the config allows fallback).
	Slots []string
	// Image is set when cfsroot.image= chose the slot: then the slot
	// state's trial order does not apply (the choice is still one of the
	// config's slots, still verified).
	Image string
	// Debug turns on verbose logging (cfsroot.debug).
	Debug bool
	// Digest pins the first slot's digest (cfsroot.digest=, only with a
	// signed command line).
	Digest *verity.Digest
	// Disk overrides the config's disk (cfsroot.disk=, only with a signed
	// command line).
	Disk string
}

// ParseCmdline applies the cfsroot.* keys of a kernel command line to cfg.
// The command line can only choose among what cfg allows: an unknown
// cfsroot.* key, a value with "..", an image that is not a slot, or a key
// that needs a signed command line when the config does not say it is
// signed, a key given twice, and a key whose prefix is not lower case
// (CFSROOT.image) are errors, and the boot stops. Keys outside cfsroot.*
// are ignored.
func ParseCmdline(cmdline string, cfg *Config) (Choice, error) {
	ch := Choice{Slots: slices.Clone(cfg.Slots)}
	if !cfg.Fallback {
		ch.Slots = ch.Slots[:1]
	}
	seen := map[string]bool{}
	for _, arg := range splitCmdline(cmdline) {
		if arg == "--" {
			break // the rest belongs to init
		}
		key, value, hasValue := strings.Cut(arg, "=")
		if !strings.HasPrefix(key, "cfsroot.") {
			if len(key) >= len("cfsroot.") && strings.EqualFold(key[:len("cfsroot.")], "cfsroot.") {
				return Choice{}, fmt.Errorf("kernel command line: %s: cfsroot keys are lower case (cfsroot.%s)", key, strings.ToLower(key[len("cfsroot."):]))
			}
			continue
		}
		if seen[key] {
			// Last-wins would let an appended cfsroot.image= override
			// the one a reviewed command line set.
			return Choice{}, fmt.Errorf("kernel command line: %s given twice; give each cfsroot key at most once", key)
		}
		seen[key] = true
		if hasDotDot(value) || strings.Contains(value, "..") {
			return Choice{}, fmt.Errorf("kernel command line: %s: value %q contains \"..\"", key, value)
		}
		needValue := func() error {
			if !hasValue || value == "" {
				return fmt.Errorf("kernel command line: %s needs a value", key)
			}
			return nil
		}
		needSigned := func() error {
			if !cfg.CmdlineSigned {
				return fmt.Errorf("kernel command line: %s is only accepted when the config says the command line is signed (cmdline_signed)", key)
			}
			return nil
		}
		switch key {
		case "cfsroot.image":
			if err := needValue(); err != nil {
				return Choice{}, err
			}
			if !slices.Contains(cfg.Slots, value) {
				return Choice{}, fmt.Errorf("kernel command line: cfsroot.image=%s is not one of the configured slots %v", value, cfg.Slots)
			}
			rest := slices.DeleteFunc(slices.Clone(cfg.Slots), func(s string) bool { return s == value })
			ch.Slots = []string{value}
			ch.Image = value
			if cfg.Fallback {
				ch.Slots = append(ch.Slots, rest...)
			}
		case "cfsroot.debug":
			if hasValue && value != "1" && value != "0" {
				return Choice{}, fmt.Errorf("kernel command line: cfsroot.debug takes no value (or 0/1), got %q", value)
			}
			ch.Debug = value != "0"
		case "cfsroot.digest":
			if err := needValue(); err != nil {
				return Choice{}, err
			}
			if err := needSigned(); err != nil {
				return Choice{}, err
			}
			d, err := verity.ParseDigest(value)
			if err != nil {
				return Choice{}, fmt.Errorf("kernel command line: cfsroot.digest: %w", err)
			}
			ch.Digest = &d
		case "cfsroot.disk":
			if err := needValue(); err != nil {
				return Choice{}, err
			}
			if err := needSigned(); err != nil {
				return Choice{}, err
			}
			if _, err := ParseDiskSelector(value); err != nil {
				return Choice{}, fmt.Errorf("kernel command line: cfsroot.disk: %w", err)
			}
			ch.Disk = value
		default:
			return Choice{}, fmt.Errorf("kernel command line: unknown key %s (known: cfsroot.image, cfsroot.debug, cfsroot.digest, cfsroot.disk)", key)
		}
	}
	return ch, nil
}

// splitCmdline splits a kernel command line as the kernel does: at spaces
// outside double quotes, with the quotes removed.
func splitCmdline(s string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}
