// Command ipeguest is PID 1 of the IPE VM tests. It loads the kernel
// modules of the initramfs, mounts the test disk and runs what the disk
// holds, reporting marker lines (package vmtests/guest), then powers off:
//
//   - parser/NAME.p7s (vmtests/ipe_parser_test.go): writes each signed
//     policy to IPE's new_policy and reports whether the kernel's parser
//     took it, or its errno, so the host can compare with ipe.Check.
//   - composefs/ (vmtests/ipe_composefs_test.go): mounts composefs images
//     as the init does and runs programs from them and from elsewhere under
//     no policy, a generated fsverity_digest policy and an
//     fsverity_signature=TRUE policy (composefs.go).
//   - policies/RULES.p7s (vmtests/ipe_bench_test.go): enables fs-verity on
//     two tiny static programs, times executing one of them with no IPE
//     policy, then loads (package rootfs/ipe), activates and enforces each
//     policy in increasing RULES order — policies whose only rule matching
//     the program is the last one, so IPE walks every rule — and times it
//     again. It checks that the other program, which no rule names, is
//     denied, and reports how the kernel answers policies too large to load.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/initramfs/kmod"
	"github.com/cfsroot/cfsroot/initramfs/layout"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/guest"
	"github.com/cfsroot/cfsroot/vmtests/internal/guestrun"
)

// Shared with the host side.
const (
	diskDev     = "/dev/vda"
	diskMount   = "/mnt"
	firstProg   = "bin/first"   // named by the first rule of every policy
	allowedProg = "bin/allowed" // named by the last rule of every policy
	deniedProg  = "bin/denied"  // named by no rule
	policyDir   = "policies"    // RULES.p7s, loaded in increasing RULES order
	parserDir   = "parser"      // NAME.p7s, each loaded once
)

// Each measurement runs the program at least minRuns times and until
// minTime has passed (at most maxRuns times).
const (
	minRuns = 30
	maxRuns = 2000
	minTime = 5 * time.Second
)

var console = os.Stdout

func main() {
	mountBasics()
	_ = os.WriteFile("/proc/sys/kernel/printk", []byte("4"), 0)
	if err := loadModules(); err != nil {
		guest.Check(console, "setup", nil, err)
	} else if err := mountDisk(); err != nil {
		guest.Check(console, "setup", nil, err)
	} else {
		if _, err := os.Stat(filepath.Join(diskMount, parserDir)); err == nil {
			check("parser", parser)
		}
		if _, err := os.Stat(filepath.Join(diskMount, policyDir)); err == nil {
			check("setup", bench)
		}
		if _, err := os.Stat(filepath.Join(diskMount, cfsDir)); err == nil {
			composefsMode()
		}
	}
	guest.Check(console, "done", nil, nil)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func check(name string, fn func() (map[string]string, error)) {
	data, err := fn()
	guest.Check(console, name, data, err)
}

// parser loads every policy of parserDir and reports, per file name, "OK"
// or the errno the kernel answered with.
func parser() (map[string]string, error) {
	dir := filepath.Join(diskMount, parserDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	data := map[string]string{}
	for _, e := range entries {
		signed, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return data, err
		}
		err = ipe.WriteOnce(filepath.Join(ipe.DefaultDir, "new_policy"), signed)
		var errno unix.Errno
		switch {
		case err == nil:
			data[e.Name()] = "OK"
		case errors.As(err, &errno):
			data[e.Name()] = unix.ErrnoName(errno)
		default:
			data[e.Name()] = err.Error()
		}
	}
	return data, nil
}

func bench() (map[string]string, error) {
	data := map[string]string{}
	for _, p := range []string{firstProg, allowedProg, deniedProg} {
		d, err := enableVerity(filepath.Join(diskMount, p))
		if err != nil {
			return nil, err
		}
		data[p] = d.String()
	}
	first := filepath.Join(diskMount, firstProg)
	allowed, denied := filepath.Join(diskMount, allowedProg), filepath.Join(diskMount, deniedProg)
	// Warm up (page cache, first-exec costs) before the baseline.
	for range 50 {
		if err := guestrun.Run(allowed); err != nil {
			return data, err
		}
	}
	// Without a policy IPE allows everything: both run.
	check("exec-0", func() (map[string]string, error) { return measure(first, allowed, "0") })
	if err := guestrun.Run(denied); err != nil {
		return data, fmt.Errorf("%s without a policy: %w", deniedProg, err)
	}

	entries, err := os.ReadDir(filepath.Join(diskMount, policyDir))
	if err != nil {
		return data, err
	}
	var sizes []int
	for _, e := range entries {
		n, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".p7s"))
		if err != nil {
			return data, fmt.Errorf("policy file %s: want RULES.p7s", e.Name())
		}
		sizes = append(sizes, n)
	}
	sort.Ints(sizes)
	for _, n := range sizes {
		name := fmt.Sprintf("exec-%d", n)
		check(name, func() (map[string]string, error) {
			signed, err := os.ReadFile(filepath.Join(diskMount, policyDir, fmt.Sprintf("%d.p7s", n)))
			if err != nil {
				return nil, err
			}
			start := time.Now()
			h, err := ipe.Load(ipe.DefaultDir, signed, true)
			loadTime := time.Since(start)
			if err != nil {
				d := map[string]string{"rules": fmt.Sprint(n), "bytes": fmt.Sprint(len(signed)), "load_error": err.Error()}
				var errno unix.Errno
				if errors.As(err, &errno) {
					d["errno"] = unix.ErrnoName(errno)
				}
				return d, err
			}
			d, err := measure(first, allowed, fmt.Sprint(n))
			d["bytes"] = fmt.Sprint(len(signed))
			d["load_ms"] = fmt.Sprint(loadTime.Milliseconds())
			d["policy"] = h.Name
			if err != nil {
				return d, err
			}
			// Enforcement: the program no rule names must be refused.
			derr := guestrun.Run(denied)
			d["denied"] = fmt.Sprint(derr)
			if !errors.Is(derr, unix.EACCES) {
				return d, fmt.Errorf("%s under policy %s: %v, want EACCES", deniedProg, h.Name, derr)
			}
			return d, nil
		})
	}
	return data, nil
}

// measure runs first and last alternately, so that both see the same
// background load, and reports the time per execution of each and the
// median of the differences of consecutive pairs: under a policy whose
// first rule names first and whose last rule names last, that difference
// is the cost of evaluating the rules in between.
func measure(first, last, rules string) (map[string]string, error) {
	var a, b, diff []time.Duration
	start := time.Now()
	for len(a) < maxRuns && (len(a) < minRuns || time.Since(start) < minTime) {
		t0 := time.Now()
		if err := guestrun.Run(first); err != nil {
			return map[string]string{"rules": rules}, fmt.Errorf("run %s: %w", first, err)
		}
		t1 := time.Now()
		if err := guestrun.Run(last); err != nil {
			return map[string]string{"rules": rules}, fmt.Errorf("run %s: %w", last, err)
		}
		t2 := time.Now()
		a, b, diff = append(a, t1.Sub(t0)), append(b, t2.Sub(t1)), append(diff, t2.Sub(t1)-t1.Sub(t0))
	}
	var sum time.Duration
	for _, t := range b {
		sum += t
	}
	for _, ts := range [][]time.Duration{a, b, diff} {
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
	}
	us := func(d time.Duration) string { return fmt.Sprint(d.Microseconds()) }
	return map[string]string{
		"rules":           rules,
		"runs":            fmt.Sprint(len(b)),
		"mean_us":         fmt.Sprint(int64(sum/time.Duration(len(b))) / 1000),
		"median_us":       us(b[len(b)/2]),
		"min_us":          us(b[0]),
		"p10_us":          us(b[len(b)/10]),
		"first_median_us": us(a[len(a)/2]),
		"first_p10_us":    us(a[len(a)/10]),
		"diff_median_us":  us(diff[len(diff)/2]),
	}, nil
}

// run forks, executes prog and waits for it; a refused execve comes back as
// its errno.

func enableVerity(p string) (verity.Digest, error) {
	f, err := os.Open(p)
	if err != nil {
		return verity.Digest{}, err
	}
	defer f.Close()
	if err := verity.Enable(f, verity.Params{}, nil); err != nil {
		return verity.Digest{}, fmt.Errorf("enable fs-verity on %s: %w", p, err)
	}
	return verity.Measure(f)
}

func mountBasics() {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"securityfs", "/sys/kernel/security", "securityfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			fmt.Fprintf(console, "ipebenchguest: mount %s: %v\n", m.dst, err)
		}
	}
}

func loadModules() error {
	f, err := os.Open(layout.ModuleList)
	if err != nil {
		return err
	}
	defer f.Close()
	list, err := kmod.ParseList(f)
	if err != nil {
		return err
	}
	return kmod.Load(list, func(string, ...any) {})
}

func mountDisk() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(diskDev); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", diskDev)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.MkdirAll(diskMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(diskDev, diskMount, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", diskDev, err)
	}
	return nil
}
