package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/guest"
	"github.com/cfsroot/cfsroot/vmtests/internal/guestrun"
)

// The signature mode of the Debian demo (vmtests/demo_test.go): a second
// disk, an ext4 with the verity feature labelled ScratchLabel, holds
//
//	unsigned-true                 a copy of /usr/bin/true (fs-verity enabled here, no signature)
//	signed-true, signed-true.sig  another copy, signed by the demo's object signer
//	stranger-true, .sig           another copy, signed by a key the init did not trust
//	stranger.der                  that key's certificate
//	bench/NN-KIND.p7s             signed policies, KIND allow-all or signature, that the
//	                              exec timing activates in turn
//
// and the image holds StrangerObject, whose object carries the stranger's
// signature.
const (
	ScratchLabel   = "cfsroot-scratch"
	StrangerObject = "/usr/local/bin/cfsroot-stranger"
	scratchMount   = "/run/cfsroot-scratch"
)

// reportSignatureMode runs the signature mode's checks, then times a
// dynamically linked program's execution under the enforced signature
// policy and under an allow-all policy, alternating; it leaves the last
// one active (the demo powers off right after).
func reportSignatureMode(out io.Writer) {
	dev := "/dev/disk/by-label/" + ScratchLabel
	if _, err := os.Stat(dev); err != nil {
		return // not the signature mode
	}
	d := map[string]string{}
	run := func(name, prog string) { d[name] = guestrun.ErrName(guestrun.Run(prog)) }

	// A copy of /usr/bin/true on tmpfs: no fs-verity, no signature.
	const tmpCopy = "/run/cfsroot-true-copy"
	err := copyFile("/usr/bin/true", tmpCopy)
	d["tmpfs-copy"] = guestrun.ErrName(err)
	if err == nil {
		run("tmpfs-copy", tmpCopy)
	}
	if err := os.MkdirAll(scratchMount, 0o755); err != nil {
		guest.Check(out, "ipe-signature", d, err)
		return
	}
	if err := unix.Mount(dev, scratchMount, "ext4", unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		guest.Check(out, "ipe-signature", d, fmt.Errorf("mount %s: %w", dev, err))
		return
	}
	p := func(name string) string { return filepath.Join(scratchMount, name) }
	// fs-verity on the verity ext4, without a signature.
	d["unsigned-enable"] = guestrun.ErrName(enable(p("unsigned-true"), nil))
	run("unsigned-exec", p("unsigned-true"))
	// Signed by a key outside the (locked) .fs-verity keyring.
	sig, err := os.ReadFile(objsig.Path(p("stranger-true")))
	if err == nil {
		err = enable(p("stranger-true"), sig)
	}
	d["stranger-enable"] = guestrun.ErrName(err)
	run("stranger-exec", p("stranger-true"))
	// The image's object signed by the stranger: provisioning could not
	// enable fs-verity on it, so the verity=require overlay refuses it.
	run("stranger-object-exec", StrangerObject)
	_, err = os.ReadFile(StrangerObject)
	d["stranger-object-read"] = guestrun.ErrName(err)
	// Signed by the trusted object signer: enabled and run here, after boot.
	sig, err = os.ReadFile(objsig.Path(p("signed-true")))
	if err == nil {
		err = enable(p("signed-true"), sig)
	}
	d["signed-enable"] = guestrun.ErrName(err)
	run("signed-exec", p("signed-true"))
	// The keyring is locked: root cannot add the stranger.
	der, err := os.ReadFile(p("stranger.der"))
	if err == nil {
		var ring int
		if ring, err = objsig.FindKeyring(objsig.KeyringName); err == nil {
			_, err = unix.AddKey("asymmetric", "", der, ring)
		}
	}
	d["add-key"] = guestrun.ErrName(err)
	guest.Check(out, "ipe-signature", d, nil)

	// Exec latency of /usr/bin/true (dynamically linked: IPE checks the
	// program, the loader and every library it maps executable) under the
	// signature policy and under an allow-all policy, alternating: each
	// bench/NN-KIND.p7s is activated (enforced) in turn, and a block of runs
	// timed under it.
	b := map[string]string{}
	turns, err := filepath.Glob(p("bench/*.p7s"))
	sort.Strings(turns)
	samples := map[string][]time.Duration{}
	for _, f := range turns {
		if err != nil {
			break
		}
		kind := strings.TrimSuffix(filepath.Base(f)[3:], ".p7s")
		var signed []byte
		if signed, err = os.ReadFile(f); err == nil {
			_, err = ipe.Load(ipe.DefaultDir, signed, true)
		}
		var ds []time.Duration
		if err == nil {
			ds, err = timeExec("/usr/bin/true")
		}
		samples[kind] = append(samples[kind], ds...)
		b[filepath.Base(f)] = strconv.FormatInt(median(ds).Nanoseconds(), 10)
	}
	if err == nil && len(turns) == 0 {
		err = errors.New("no bench policies on the scratch disk")
	}
	for kind, ds := range samples {
		b[kind+"_ns"], b[kind+"_runs"] = strconv.FormatInt(median(ds).Nanoseconds(), 10), strconv.Itoa(len(ds))
	}
	guest.Check(out, "ipe-exec-bench", b, err)
}

func enable(path string, sig []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if sig == nil {
		return verity.Enable(f, verity.Params{}, nil)
	}
	return verity.EnableSigned(f, sig)
}

// timeExec times executions of prog: at least 20 runs and 1.5 seconds
// (at most 500 runs), after 5 runs to warm the caches.
func timeExec(prog string) ([]time.Duration, error) {
	for range 5 {
		if err := guestrun.Run(prog); err != nil {
			return nil, err
		}
	}
	var ds []time.Duration
	start := time.Now()
	for len(ds) < 500 && (len(ds) < 20 || time.Since(start) < 1500*time.Millisecond) {
		t0 := time.Now()
		if err := guestrun.Run(prog); err != nil {
			return ds, err
		}
		ds = append(ds, time.Since(t0))
	}
	return ds, nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// reportBootTime reports the kernel's time when it started the init
// ("Run /init as init process" in the kernel log) and the uptime now, right
// after systemd reported the boot finished.
func reportBootTime(out io.Writer) {
	up, err := os.ReadFile("/proc/uptime")
	d := map[string]string{"uptime": strings.Fields(string(up) + " ")[0]}
	if err == nil {
		var klog string
		klog, err = command(time.Minute, "dmesg")
		for _, l := range strings.Split(klog, "\n") {
			if strings.Contains(l, "Run /init as init process") {
				if i := strings.Index(l, "]"); strings.HasPrefix(l, "[") && i > 0 {
					d["init_start"] = strings.TrimSpace(l[1:i])
				}
			}
		}
	}
	guest.Check(out, "boot-time", d, err)
}
