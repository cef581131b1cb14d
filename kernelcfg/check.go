package kernelcfg

import (
	"fmt"
	"sort"
	"strings"
)

// CheckOptions adjusts Check.
type CheckOptions struct {
	// Cmdline is the kernel command line the kernel will boot with. An lsm=
	// parameter in it replaces CONFIG_LSM, as the kernel does.
	Cmdline string
	// Version, if set, overrides the release read from the config's header.
	Version Version
}

// Result is the outcome of one requirement.
type Result struct {
	Requirement
	// OK is true when the requirement is met.
	OK bool
	// Detail says which option met it, or why none did.
	Detail string
	// Modules lists the modules (for options built as m) that the
	// initramfs must load for this requirement.
	Modules []string
}

// Report is the outcome of Check.
type Report struct {
	// Version is the kernel release the check assumed (zero if unknown).
	Version Version
	Results []Result
}

// Missing returns the requirements of level l that are not met.
func (r *Report) Missing(l Level) []Result {
	var out []Result
	for _, res := range r.Results {
		if !res.OK && res.Level == l {
			out = append(out, res)
		}
	}
	return out
}

// Modes returns the IPE policy modes of cfsroot that the kernel supports,
// "digest" (a fsverity_digest rule per executable) and "signature" (one
// fsverity_signature rule, objects enabled with builtin signatures), in that
// order. The signature mode needs everything the digest mode needs.
func (r *Report) Modes() []string {
	if !r.OK() {
		return nil
	}
	modes := []string{"digest"}
	ok := map[string]bool{}
	for _, res := range r.Results {
		ok[res.ID] = res.OK
	}
	if ok["ipe-fs-verity-signature"] && ok["fs-verity-builtin-signatures"] {
		modes = append(modes, "signature")
	}
	return modes
}

// OK reports whether every required requirement is met.
func (r *Report) OK() bool { return len(r.Missing(Required)) == 0 }

// Modules returns the sorted, deduplicated modules the initramfs must load
// for the met requirements.
func (r *Report) Modules() []string {
	seen := map[string]bool{}
	var out []string
	for _, res := range r.Results {
		for _, m := range res.Modules {
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Check compares c with every requirement in the table.
func Check(c *Config, opt CheckOptions) *Report {
	rep := &Report{Version: c.Version}
	if !opt.Version.IsZero() {
		rep.Version = opt.Version
	}
	for _, req := range table {
		rep.Results = append(rep.Results, checkOne(c, rep.Version, opt.Cmdline, req))
	}
	return rep
}

func checkOne(c *Config, kver Version, cmdline string, req Requirement) Result {
	res := Result{Requirement: req}
	if req.MinKernel != "" {
		min, err := ParseVersion(req.MinKernel)
		if err != nil {
			panic("kernelcfg: bad MinKernel in table: " + req.MinKernel) // table bug, caught by tests
		}
		switch {
		case kver.IsZero():
			res.Detail = fmt.Sprintf("needs Linux %s or later, and the kernel version is unknown (the config has no "+
				"\"# Linux/ARCH VERSION Kernel Configuration\" header; give it with --kernel-version)", req.MinKernel)
		case kver.Less(min):
			res.Detail = fmt.Sprintf("needs Linux %s or later; this kernel is %s", req.MinKernel, kver)
		default:
			res.OK = true
			res.Detail = fmt.Sprintf("Linux %s >= %s", kver, req.MinKernel)
		}
		return res
	}
	var why []string
	for _, o := range req.AnyOf {
		ok, detail, module := checkOption(c, kver, cmdline, o)
		if ok {
			res.OK = true
			res.Detail = detail
			if module != "" {
				res.Modules = []string{module}
			}
			return res
		}
		why = append(why, detail)
	}
	res.Detail = strings.Join(why, "; ")
	return res
}

// checkOption reports whether o is satisfied, a one-line explanation, and
// the module to load if it is satisfied by m.
func checkOption(c *Config, kver Version, cmdline string, o Option) (ok bool, detail, module string) {
	name := "CONFIG_" + o.Name
	v, present := c.Values[o.Name]
	if o.Contains != "" {
		if lsm, given := cmdlineParam(cmdline, "lsm"); given {
			if listHas(lsm, o.Contains) {
				return true, fmt.Sprintf("lsm=%s on the command line includes %s", lsm, o.Contains), ""
			}
			return false, fmt.Sprintf("lsm=%s on the command line replaces %s and lacks %s", lsm, name, o.Contains), ""
		}
		if !present || v == "n" {
			return false, name + " is not set" + since(o, kver), ""
		}
		if listHas(v, o.Contains) {
			return true, fmt.Sprintf("%s=%q includes %s", name, v, o.Contains), ""
		}
		return false, fmt.Sprintf("%s=%q lacks %s (add it, or boot with lsm=%s,%s)", name, v, o.Contains, v, o.Contains), ""
	}
	switch v {
	case "y":
		return true, name + "=y", ""
	case "m":
		if o.Build == ModuleOK {
			return true, fmt.Sprintf("%s=m (the initramfs must load %s)", name, o.Module), o.Module
		}
		return false, name + "=m, but it must be built in (y)", ""
	case "n":
		return false, name + " is not set" + since(o, kver), ""
	case "":
		if !present {
			return false, name + " is not in this config" + since(o, kver), ""
		}
	}
	return false, fmt.Sprintf("%s=%q, want y", name, v), ""
}

// since tells, for a missing option, which release first has it when that
// matters, i.e. when the kernel is older or its version unknown.
func since(o Option, kver Version) string {
	if o.Since == "" {
		return ""
	}
	s, err := ParseVersion(o.Since)
	if err != nil {
		panic("kernelcfg: bad Since in table: " + o.Since)
	}
	switch {
	case kver.IsZero():
		return fmt.Sprintf(" (first in Linux %s)", o.Since)
	case kver.Less(s):
		return fmt.Sprintf(" (first in Linux %s; this kernel is %s)", o.Since, kver)
	}
	return ""
}

func listHas(list, item string) bool {
	for _, s := range strings.Split(list, ",") {
		if strings.TrimSpace(s) == item {
			return true
		}
	}
	return false
}

// cmdlineParam returns the value of the last key=value parameter on a
// kernel command line, as the kernel's early parameter parsing lets later
// ones win. Quoted values are not needed for lsm= and not handled.
func cmdlineParam(cmdline, key string) (string, bool) {
	val, found := "", false
	for _, f := range strings.Fields(cmdline) {
		if f == "--" {
			break // the rest goes to init
		}
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			val, found = v, true
		}
	}
	return val, found
}
