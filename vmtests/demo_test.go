package vmtests

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/measure/eventlog"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/repo"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// The demo's names.
const (
	demoImage     = "demo"
	demoLabel     = "cfsroot-demo"
	demoService   = "cfsroot-demo-report.service"
	demoReporter  = "/usr/local/sbin/cfsroot-demo-report"
	demoSignerCN  = "cfsroot demo image signer"
	demoPolicyCN  = "cfsroot demo IPE policy signer"
	demoServiceUn = `[Unit]
Description=cfsroot demo: report what the booted system sees, then power off
After=multi-user.target

[Service]
# simple, not oneshot: the start job ends at once, so the boot can finish
# and the reporter's "systemctl is-system-running --wait" returns.
Type=simple
ExecStart=` + demoReporter + `
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
`
)

// TestDemo is `make demo`, and the VM test of issue 8: it boots a real
// Debian root (trixie minbase with systemd, built by demo/mkroot.sh) through
// cfsroot, doing every step as the README tells a user to, with the host
// tool: throwaway keys made with openssl, `cfsroot mkimage --digest-store`,
// `cfsroot sign`, `cfsroot policy generate|sign`, `cfsroot pcr predict`,
// mkinitramfs.sh, an ext4 disk made on the host (whose kernel has no
// fs-verity), then the boot with a TPM, whose first step enables fs-verity on
// the image and every object (the init's provision_verity). It checks that systemd runs as PID 1 after switch_root
// and reaches its target with no failed unit, that the root is the overlay
// with verity=require, that status.json names the image, digest and
// signer, and that PCR 15 as tpm2_pcrread and systemd-analyze read it in the
// guest equals `cfsroot pcr predict` and the replayed event log. The image
// boots as a trial slot (issue 14); the shipped
// examples/systemd/cfsroot-bless.service, enabled in the image, must run
// after boot-complete.target and mark it good, and leave the disk clean.
//
// It is slow (debootstrap 0.5-2.5 minutes once, then 1-2 minutes under
// TCG), so it runs only when asked: CFSROOT_DEMO_TEST=1 (builds or reuses
// the cached root), or CFSROOT_DEMO_ROOT=DIR (a root tree of your own that
// has systemd and tpm2-tools). CFSROOT_DEMO_OUT=DIR keeps the keys, image,
// disk and initramfs there instead of in a temporary directory.
// CFSROOT_DEMO_UPPER=none boots the root read-only instead of with a tmpfs
// upper layer.
//
// CFSROOT_DEMO_ROOT=minimal boots, instead of Debian, a root whose only
// program is the report program, as PID 1 (about 25 s, no debootstrap):
// its IPE policy fits the kernel's limit, so it also shows the policy
// loaded and enforced — the image's program runs, a copy of it on tmpfs
// does not.
func TestDemo(t *testing.T) { runDemo(t, demoRoot(t)) }

// TestDemoMinimal is the minimal root of TestDemo (CFSROOT_DEMO_ROOT=minimal),
// run with every VM test because it is quick: the init loads and enforces
// the policy `cfsroot policy generate|sign` made for the image, the image's
// program runs under it and a copy of it on tmpfs is denied.
func TestDemoMinimal(t *testing.T) { runDemo(t, "minimal") }

func runDemo(t *testing.T, root string) {
	minimal := root == "minimal"
	// The Debian root runs in IPE's signature mode (every object enabled
	// with a builtin signature, one policy rule); the minimal root keeps
	// the digest mode, so both are shown. CFSROOT_DEMO_IPE=0 boots the
	// Debian root with unsigned objects and no policy (the reference for
	// the boot time).
	sigMode := !minimal && os.Getenv("CFSROOT_DEMO_IPE") != "0"
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "swtpm", "mkfs.ext4", "openssl", "fsverity", "cp")
	start := time.Now()
	var timings []string
	phase := func(name string, since time.Time) {
		d := time.Since(since).Round(100 * time.Millisecond)
		timings = append(timings, fmt.Sprintf("%-34s %v", name, d))
		t.Logf("demo: %s done in %v", name, d)
	}
	work := demoWorkDir(t)
	say := func(format string, a ...any) { t.Logf("demo: "+format, a...) }

	// 1. Tools: the host tool and the report program for the image.
	t0 := time.Now()
	cfsroot := vm.BuildStatic(t, "./cmd/cfsroot")
	reporter := vm.BuildStatic(t, "./vmtests/internal/demoguest")
	initBin := vm.BuildStatic(t, "./init")
	phase("build cfsroot, init, reporter", t0)
	tool := func(args ...string) (stdout, stderr string) {
		t.Helper()
		return runTool(t, cfsroot, args...)
	}

	// 2. The root tree: a copy of the cached root plus the report service,
	// or the minimal root.
	t0 = time.Now()
	tree := filepath.Join(work, "tree")
	os.RemoveAll(tree)
	if minimal {
		minimalRoot(t, tree, reporter)
		root = "minimal (the report program as /sbin/init)"
	} else {
		runCmd(t, "cp", "-a", root, tree)
		installReporter(t, tree, reporter)
		installBless(t, tree, cfsroot)
		if sigMode {
			// A program whose object a stranger signs (see below): /usr/bin/true
			// with a trailer, so its object is its own.
			tb, err := os.ReadFile(filepath.Join(tree, "usr/bin/true"))
			if err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(tree, demoStranger), append(tb, "\ncfsroot demo: signed by a stranger\n"...))
			if err := os.Chmod(filepath.Join(tree, demoStranger), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A file whose object will be damaged on the disk (see below).
	write(t, filepath.Join(tree, demoTampered), demoTamperedContent)
	phase("root tree", t0)

	// 3. Keys: throwaway, made here, never committed.
	keys := filepath.Join(work, "keys")
	os.MkdirAll(keys, 0o700)
	signCert, signKey := demoCert(t, keys, "image-signer", demoSignerCN)
	policyCert, policyKey := demoCert(t, keys, "ipe-signer", demoPolicyCN)
	var objCert, objKey, strangerCert, strangerKey string
	if sigMode {
		objCert, objKey = demoCert(t, keys, "object-signer", demoObjectCN)
		strangerCert, strangerKey = demoCert(t, keys, "stranger", "cfsroot demo stranger (not trusted)")
	}

	// 4. Image and object store, laid out as on the target disk.
	t0 = time.Now()
	disk := filepath.Join(work, "disk")
	os.RemoveAll(disk)
	images := filepath.Join(disk, "composefs", "images")
	objects := filepath.Join(disk, "composefs", "objects")
	os.MkdirAll(images, 0o755)
	img := filepath.Join(images, demoImage+".cfs")
	out, _ := tool("mkimage", "--digest-store", objects, "--external-exec", "--print-digest", tree, img)
	digest := "sha256:" + strings.TrimSpace(out)
	// fsverity-utils is the independent oracle for the digest.
	if fv := strings.Fields(string(runCmd(t, "fsverity", "digest", img)))[0]; fv != digest {
		t.Fatalf("cfsroot mkimage printed %s, fsverity digest says %s", digest, fv)
	}
	nObjects := countFiles(t, objects)
	// Damage one object after the image was made and signed, keeping its
	// size: the disk now holds content the image does not describe, as after
	// an offline attack on the disk. Provisioning enables fs-verity on the
	// damaged content, so only overlayfs' verity=require check can catch it
	// (in the signature mode, the kernel already refuses the object's
	// signature for the damaged content when provisioning enables it).
	d, err := verity.DigestReader(bytes.NewReader(demoTamperedContent), verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(objects, composefs.ObjectPath(d.Sum))
	if err := os.WriteFile(obj, bytes.ToUpper(demoTamperedContent), 0o644); err != nil {
		t.Fatalf("damage the object of %s: %v", demoTampered, err)
	}
	say("image %s: %s, %d objects", img, digest, nObjects)
	phase("cfsroot mkimage --digest-store", t0)

	var strangerObj, tamperedObj string
	if sigMode {
		t0 = time.Now()
		out, _ := tool("sign-objects", "--key", objKey, "--cert", objCert, "--store", objects, img)
		say("cfsroot sign-objects: %s", strings.TrimSpace(out))
		phase("cfsroot sign-objects", t0)
		sd, err := verity.DigestFile(filepath.Join(tree, demoStranger), verity.Params{})
		if err != nil {
			t.Fatal(err)
		}
		strangerObj = composefs.ObjectPath(sd.Sum)
		p := filepath.Join(objects, strangerObj)
		tool("sign", "--key", strangerKey, "--cert", strangerCert, p, p+".sig")
		tamperedObj = composefs.ObjectPath(d.Sum)
	}

	tool("sign", "--key", signKey, "--cert", signCert, img, img+".sig")
	verifyOut, _ := tool("verify", "--trusted", signCert, "--sig", img+".sig", img)
	say("cfsroot verify: %s", strings.TrimSpace(verifyOut))

	// 5. IPE policy for the image's executables, if the kernel can take it.
	policy, ipeSkip := demoPolicy(t, cfsroot, img, objects, policyCert, policyKey, sigMode)
	if ipeSkip != "" {
		say("IPE SKIPPED: %s", ipeSkip)
	}

	// 6. Prediction of PCR 15, before booting.
	predictArgs := []string{"pcr", "predict", "--image", img, "--sig", img + ".sig", "--trusted", signCert}
	if policy != "" {
		predictArgs = append(predictArgs, "--policy", policy, "--ipe-enforce")
	}
	if sigMode {
		predictArgs = append(predictArgs, "--fsverity-signers", objCert)
	}
	out, _ = tool(predictArgs...)
	predicted := parsePredict(t, out)
	say("predicted PCR 15: sha256 %s", predicted["sha256"])

	// 7. The initramfs, with mkinitramfs.sh as a user would build it.
	t0 = time.Now()
	upper := "tmpfs"
	if u := os.Getenv("CFSROOT_DEMO_UPPER"); u != "" {
		upper = u // "none" shows what a read-only root does to Debian's units
	}
	cfg := map[string]any{
		"disk":       "LABEL=" + demoLabel,
		"slots":      []string{demoImage},
		"tpm":        "required",
		"upper":      upper,
		"init":       "/sbin/init",
		"on_failure": "halt",
		// The host kernel has no fs-verity: the first boot enables it.
		"provision_verity": true,
	}
	if policy != "" {
		cfg["ipe_policy"] = "image"
		cfg["ipe_enforce"] = true
	}
	if sigMode {
		cfg["fsverity_certs"] = "/etc/cfsroot/fsverity-certs"
	}
	cfgJSON, _ := json.MarshalIndent(cfg, "", "  ")
	cfgPath := write(t, filepath.Join(work, "config.json"), cfgJSON)
	initrd := filepath.Join(work, "initramfs.img")
	repoDir, err := vm.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	mkArgs := []string{"-q", "-o", initrd, "-init", initBin,
		"-kernel-modules", k.Modules, "-modules", strings.Join(vm.BootModules, ","),
		"-cert", signCert, "-config", cfgPath}
	if sigMode {
		mkArgs = append(mkArgs, "-fsverity-cert", objCert)
	}
	runCmd(t, filepath.Join(repoDir, "mkinitramfs.sh"), mkArgs...)
	phase("mkinitramfs.sh", t0)

	// The Debian root boots as a trial slot, which the shipped bless unit
	// must mark good (README "Updates").
	if !minimal {
		if err := repo.WriteState(filepath.Join(disk, "composefs"), repo.State{Trial: demoImage, TriesLeft: demoTries}); err != nil {
			t.Fatal(err)
		}
	}

	// 8. The disk: ext4 with 4 KiB blocks and the verity feature.
	t0 = time.Now()
	diskImg := filepath.Join(work, "disk.img")
	os.Remove(diskImg)
	size := fmt.Sprintf("%dM", dirMiB(t, disk)*3/2+64)
	runCmd(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", "-L", demoLabel, "-d", disk, diskImg, size)
	phase("mkfs.ext4 -O verity -d ("+size+")", t0)
	disks := []string{diskImg}
	if sigMode {
		disks = append(disks, demoScratch(t, cfsroot, work, tree, objCert, objKey, strangerCert, strangerKey, policyCert, policyKey))
	}

	// 10. The boot.
	t0 = time.Now()
	say("booting the signed root through cfsroot with a TPM (TCG; up to a minute or two)")
	// Through UEFI firmware (OVMF): systemd-analyze pcrs wants a TPM the
	// firmware announces, as on real hardware, and IPE's policy signer is
	// enrolled in its db.
	opts := vm.Options{Name: "demo-boot", Kernel: k.Image, Initramfs: initrd, Disks: disks,
		TPM: true, OVMF: true, Timeout: 20 * time.Minute, Memory: 1536,
		Append: []string{"systemd.show_status=1"}}
	if policy != "" {
		opts.DBCerts = []string{policyCert} // the kernel checks the policy against UEFI db
	}
	res := vm.Boot(t, opts)
	if minimal {
		phase("boot: cfsroot + report", t0)
	} else {
		phase("boot: cfsroot + systemd to its target", t0)
	}

	// 11. What was verified.
	c := &demoChecks{t: t}
	want := []string{"status", "pid1", "root-mount", "eventlog", "report-done"}
	if minimal {
		want = append(want, "pcr")
	} else {
		want = append(want, "system-state", "failed-units", "target", "tpm2_pcrread", "systemd-analyze-pcrs", "bless-unit")
	}
	r := res.Require(t, want...)
	var st boot.Status
	if err := json.Unmarshal([]byte(r["status"].Data["json"]), &st); err != nil {
		t.Fatalf("status.json from the guest: %v", err)
	}
	c.check("image digest (status.json = mkimage = fsverity digest)", st.Digest == digest && st.DigestSource == "kernel",
		"%s from %s", st.Digest, st.DigestSource)
	if p := st.Provision; p != nil && sigMode {
		// The kernel checked every object's builtin signature as the init
		// enabled it: only the damaged object's and the stranger's failed.
		c.check("first boot enabled fs-verity on the image and every object with its signature (provision_verity); "+
			"the kernel refused only the damaged object (signature does not match) and the stranger's (signer not in the keyring)",
			p.Images == 1 && p.Objects == nObjects-2 && len(p.Errors) == 2 &&
				hasError(p.Errors, tamperedObj, "does not match the file's digest") && hasError(p.Errors, strangerObj, "not in the .fs-verity keyring"),
			"%d image, %d objects in %d ms; refused: %q", p.Images, p.Objects, p.MS, p.Errors)
	} else if p != nil {
		c.check("first boot enabled fs-verity on the image and every object (provision_verity)",
			p.Images == 1 && p.Objects == nObjects && len(p.Errors) == 0,
			"%d image, %d objects in %d ms", p.Images, p.Objects, p.MS)
	} else {
		c.check("first boot enabled fs-verity (provision_verity)", false, "status.json has no provision")
	}
	c.check("signature verified by the init", st.VerifiedBy == "signature" && st.Signer == "CN="+demoSignerCN,
		"signer %s (sha256 %s)", st.Signer, st.SignerSHA256)
	tr, ok := res.Result("read-tampered")
	c.check("an object changed on disk after signing reads as EIO", ok && strings.Contains(tr.Error, "input/output error"),
		"%s: %s", demoTampered, orOK(tr.Error))
	if sigMode {
		want := signature.Fingerprint(mustCert(t, objCert))
		c.check("the init put the object signer into the .fs-verity keyring and locked it", len(st.FsveritySigners) == 1 &&
			st.FsveritySigners[0].SHA256 == want, "%v", st.FsveritySigners)
	}
	mi := r["root-mount"].Data["mountinfo"]
	c.check("root is overlay, verity=require, upper "+upper, strings.Contains(mi, " overlay ") &&
		strings.Contains(mi, "verity=require") && st.Upper == upper, "%s", lastFields(mi, 3))
	if minimal {
		c.check("the image's /sbin/init is PID 1 after switch_root", r["pid1"].Data["exe"] == "/sbin/init",
			"%s", r["pid1"].Data["exe"])
	} else {
		c.check("systemd is PID 1 after switch_root", r["pid1"].Data["comm"] == "systemd" &&
			strings.HasSuffix(r["pid1"].Data["exe"], "/systemd/systemd"), "%s (%s)", r["pid1"].Data["exe"], r["pid1"].Data["comm"])
		state := r["system-state"].Data["state"]
		failed := strings.TrimSpace(r["failed-units"].Data["units"])
		c.check("systemd reached its target, no failed units", state == "running" && failed == "" &&
			strings.HasPrefix(r["target"].Data["active"], "active\nactive"),
			"is-system-running: %s; default %s: %s; failed: %q", state, r["target"].Data["default"],
			strings.Join(strings.Fields(r["target"].Data["active"]), "/"), failed)
	}

	if !minimal {
		checkBless(t, c, st, r["bless-unit"].Data, diskImg)
	}

	// PCR 15: prediction = tpm2_pcrread = systemd-analyze = replayed log.
	guestPCR, reader := r["pcr"].Data, "go-tpm in the guest"
	if !minimal {
		guestPCR, reader = parsePCRRead(r["tpm2_pcrread"].Data["output"]), "tpm2_pcrread"
	}
	logBytes, _ := base64.StdEncoding.DecodeString(r["eventlog"].Data["base64"])
	recs, err := eventlog.Parse(bytes.NewReader(logBytes))
	var replayed measure.Replayed
	if err == nil {
		err = measure.VerifyRecords(recs)
	}
	if err == nil {
		replayed, err = measure.Replay(recs)
	}
	var texts []string
	for _, rec := range recs {
		if rec.Content != nil {
			texts = append(texts, rec.Content.String)
		}
	}
	c.check("event log (/run/log/systemd/tpm2-measure.log) parses, digests match texts, replays",
		err == nil && len(texts) > 0 && strings.HasPrefix(texts[0], "cfsroot-image:"+demoImage+":"+digest),
		"%d records %q (%v)", len(recs), texts, err)
	var banks []string
	for bank := range predicted {
		if _, ok := guestPCR[bank]; ok {
			banks = append(banks, bank)
		}
	}
	sort.Strings(banks)
	c.check(reader+" reports PCR 15", len(banks) > 0, "banks %v", banks)
	for _, bank := range banks {
		a, _ := measure.ParseAlg(bank)
		rp := hex.EncodeToString(replayed[15][a])
		c.check("PCR 15 "+bank+": "+reader+" = cfsroot pcr predict = replayed log = status.json",
			guestPCR[bank] == predicted[bank] && rp == predicted[bank] && st.TPM.Banks[bank] == predicted[bank],
			"%s", predicted[bank])
	}
	if !minimal {
		sd, sdErr := parseAnalyzePCRs(r["systemd-analyze-pcrs"].Data["output"])
		c.check("PCR 15: systemd-analyze pcrs = predicted", sdErr == nil && sd != "" && sd == predicted["sha256"],
			"%s (%v)", sd, sdErr)
	}

	if !minimal {
		// systemd's own reader of the same log: systemd-pcrlock parses every
		// record, replays firmware and userspace logs and compares with the TPM.
		pr, _ := res.Result("pcrlock-log")
		pl, plErr := parsePcrlockLog(pr.Data["stdout"])
		if plErr == nil && !pr.OK {
			plErr = fmt.Errorf("%s: %s", pr.Error, pr.Data["stderr"])
		}
		if plErr == nil {
			plErr = pl.agrees(recs, predicted["sha256"])
		}
		c.check("systemd-pcrlock log reads every cfsroot record, PCR 15 replayed = TPM = predicted", plErr == nil,
			"%d records on PCR 15 (%v)", len(pl.records), plErr)
	}

	if policy != "" {
		ipeRes, _ := res.Result("ipe")
		ipe := ipeRes.Data
		c.check("IPE policy active and enforced", st.IPE != nil && st.IPE.Active && ipe["active"] == "cfsroot_demo" &&
			ipe["enforce"] == "1", "%s %s, enforce=%s", ipe["active"], ipe["version"], ipe["enforce"])
		rr, _ := res.Result("ipe-exec-image")
		c.check("IPE lets the image's program run", rr.Data["path"] != "" && rr.Data["error"] == "",
			"%s: %s", rr.Data["path"], orOK(rr.Data["error"]))
		rr, _ = res.Result("ipe-exec-outside-image")
		c.check("IPE denies a copy of it outside the image", strings.Contains(rr.Data["error"], "permission denied"),
			"%s: %s", rr.Data["path"], rr.Data["error"])
	}
	var bench map[string]string
	if sigMode {
		s, _ := res.Result("ipe-signature")
		d := s.Data
		c.check("signature mode: a copy of /usr/bin/true on tmpfs is denied", d["tmpfs-copy"] == "EACCES", "%s", d["tmpfs-copy"])
		c.check("signature mode: a file on the verity ext4 with fs-verity but no signature is denied",
			d["unsigned-enable"] == "OK" && d["unsigned-exec"] == "EACCES", "enable %s, exec %s", d["unsigned-enable"], d["unsigned-exec"])
		c.check("signature mode: a file signed by a key not in the keyring cannot be enabled (and is denied)",
			d["stranger-enable"] == "ENOKEY" && d["stranger-exec"] == "EACCES", "enable %s, exec %s", d["stranger-enable"], d["stranger-exec"])
		c.check("signature mode: the image's object signed by that key cannot be opened",
			d["stranger-object-exec"] == "EIO" && d["stranger-object-read"] == "EIO", "exec %s, read %s", d["stranger-object-exec"], d["stranger-object-read"])
		c.check("signature mode: a file signed by the trusted key, enabled after boot, runs",
			d["signed-enable"] == "OK" && d["signed-exec"] == "OK", "enable %s, exec %s", d["signed-enable"], d["signed-exec"])
		c.check("signature mode: root cannot add a key to the locked .fs-verity keyring", d["add-key"] != "OK" && d["add-key"] != "",
			"add_key: %s", d["add-key"])
		b, _ := res.Result("ipe-exec-bench")
		bench = b.Data
		t.Logf("demo: exec latency of /usr/bin/true: %v (%s)", b.Data, b.Error)
	}
	if bt, ok := res.Result("boot-time"); ok {
		start, err1 := strconv.ParseFloat(bt.Data["init_start"], 64)
		up, err2 := strconv.ParseFloat(bt.Data["uptime"], 64)
		if err1 == nil && err2 == nil {
			timings = append(timings, fmt.Sprintf("%-34s %.1fs (kernel clock)", "guest: init start to running", up-start))
		}
	}
	if res.End != vm.PowerOff {
		c.check("the booted system powered the machine off", false, "VM ended with %s (console %s)", res.End, res.LogFile)
	}

	// Summary, as `make demo` prints it.
	var b strings.Builder
	fmt.Fprintf(&b, "\n==================== cfsroot demo ====================\n")
	fmt.Fprintf(&b, "root tree        %s (%d objects)\n", root, nObjects)
	fmt.Fprintf(&b, "image            %s\n", img)
	fmt.Fprintf(&b, "image digest     %s\n", digest)
	fmt.Fprintf(&b, "signer           %s  sha256:%s\n", st.Signer, st.SignerSHA256)
	for _, bank := range banks {
		fmt.Fprintf(&b, "PCR 15 %-9s %s\n", bank, predicted[bank])
	}
	if policy != "" && st.IPE != nil {
		mode := "digest mode: one fsverity_digest rule per executable object"
		if sigMode {
			mode = "signature mode: op=EXECUTE fsverity_signature=TRUE action=ALLOW"
		}
		fmt.Fprintf(&b, "IPE policy       %s %s (sha256 %s), active=%v enforced=%v\n", st.IPE.Policy, st.IPE.Version, st.IPE.SHA256, st.IPE.Active, st.IPE.Enforced)
		fmt.Fprintf(&b, "                 %s\n", mode)
		for _, s := range st.FsveritySigners {
			fmt.Fprintf(&b, "object signer    %s  sha256:%s\n", s.Subject, s.SHA256)
		}
		if e, a := bench["signature_ns"], bench["allow-all_ns"]; e != "" && a != "" {
			en, _ := strconv.ParseFloat(e, 64)
			an, _ := strconv.ParseFloat(a, 64)
			fmt.Fprintf(&b, "exec /usr/bin/true  %.0f µs under the signature policy, %.0f µs under an allow-all policy: ratio %.3f\n"+
				"                 (medians of %s and %s runs in %d alternating turns, enforced)\n",
				en/1e3, an/1e3, en/an, bench["signature_runs"], bench["allow-all_runs"], demoBenchTurns)
		}
	} else {
		fmt.Fprintf(&b, "IPE policy       not loaded: %s\n", ipeSkip)
	}
	fmt.Fprintf(&b, "\nchecks:\n")
	for _, l := range c.lines {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "\ntimes:\n")
	for _, l := range timings {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "  %-34s %v\n", "total", time.Since(start).Round(time.Second))
	fmt.Fprintf(&b, "console log: %s\n", res.LogFile)
	if c.failed {
		fmt.Fprintf(&b, "RESULT: FAILED\n")
	} else {
		fmt.Fprintf(&b, "RESULT: every check held\n")
	}
	t.Log(b.String())
}

// demoRoot returns the root tree to boot ("minimal" for the minimal root),
// or skips when TestDemo was not asked for (CFSROOT_DEMO_TEST).
func demoRoot(t *testing.T) string {
	t.Helper()
	if r := os.Getenv("CFSROOT_DEMO_ROOT"); r == "minimal" {
		return r
	} else if r != "" {
		if _, err := os.Stat(filepath.Join(r, "sbin", "init")); err != nil {
			t.Fatalf("CFSROOT_DEMO_ROOT=%s has no sbin/init: %v", r, err)
		}
		return r
	}
	if os.Getenv("CFSROOT_DEMO_TEST") != "1" {
		t.Skip("the Debian demo boot is slow: CFSROOT_DEMO_TEST=1 runs it (make demo does), building the root with demo/mkroot.sh")
	}
	vm.RequireKernel(t) // skip or fail before the slow part when VM tests cannot run
	repo, err := vm.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	cmd := exec.Command(filepath.Join(repo, "demo", "mkroot.sh"), "debian")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("demo/mkroot.sh: %v\n%s", err, stderr.String())
	}
	t.Logf("demo: root tree from demo/mkroot.sh in %v\n%s", time.Since(t0).Round(time.Second), stderr.String())
	return strings.TrimSpace(string(out))
}

func demoWorkDir(t *testing.T) string {
	t.Helper()
	d := os.Getenv("CFSROOT_DEMO_OUT")
	if d == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// installReporter adds the report program and its service to tree.
func installReporter(t *testing.T, tree, reporter string) {
	t.Helper()
	bin, err := os.ReadFile(reporter)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(tree, demoReporter)
	write(t, p, bin)
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tree, "etc/systemd/system", demoService), []byte(demoServiceUn))
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants", demoService)
	os.Remove(wants)
	if err := os.MkdirAll(filepath.Dir(wants), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/systemd/system/"+demoService, wants); err != nil {
		t.Fatal(err)
	}
}

// The bless unit the README recommends, as shipped, and the demo's trial.
const (
	blessUnit    = "cfsroot-bless.service"
	blessExample = "examples/systemd/" + blessUnit
	// demoTries is the trial's tries: the boot uses one, bless ends the trial.
	demoTries = 3
)

// installBless puts the static host tool at /usr/bin/cfsroot and the
// shipped bless unit into tree, enabled, changed only where its comment
// says to: the LABEL= of the disk.
func installBless(t *testing.T, tree, cfsroot string) {
	t.Helper()
	vm.RequireTools(t, "debugfs", "dumpe2fs") // checkBless reads the disk after the boot
	repoDir, err := vm.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(repoDir, blessExample))
	if err != nil {
		t.Fatal(err)
	}
	const label, bin = "LABEL=appliance ", "=/usr/bin/cfsroot bless "
	if strings.Count(string(unit), label) != 1 || strings.Count(string(unit), bin) != 1 {
		t.Fatalf("%s: want one %q and one %q to adjust, as its comment says", blessExample, label, bin)
	}
	unit = []byte(strings.Replace(string(unit), label, "LABEL="+demoLabel+" ", 1))
	b, err := os.ReadFile(cfsroot)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tree, "usr/bin/cfsroot"), b)
	if err := os.Chmod(filepath.Join(tree, "usr/bin/cfsroot"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tree, "etc/systemd/system", blessUnit), unit)
	// systemctl enable: the link its [Install] section names.
	if !strings.Contains(string(unit), "\nWantedBy=multi-user.target\n") {
		t.Fatalf("%s: no WantedBy=multi-user.target", blessExample)
	}
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants", blessUnit)
	os.Remove(wants)
	if err := os.MkdirAll(filepath.Dir(wants), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/systemd/system/"+blessUnit, wants); err != nil {
		t.Fatal(err)
	}
}

// checkBless checks that the init booted the image as a trial, that the
// bless unit ran and succeeded in the guest, and that the slot state on the
// disk after power-off says the slot is good, read on the host with
// debugfs (not through cfsroot).
func checkBless(t *testing.T, c *demoChecks, st boot.Status, unit map[string]string, diskImg string) {
	t.Helper()
	s := st.Slots
	c.check("the init booted the image as a trial and counted the try before switch_root",
		s != nil && s.BootedAs == "trial" && s.Trial == demoImage && s.TriesLeft == demoTries-1 && s.TriesDone == 1,
		"%+v", s)
	show := map[string]string{}
	for _, l := range strings.Split(unit["show"], "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			show[k] = v
		}
	}
	// Monotonic microseconds: boot-complete.target reached, the unit started.
	reached, err1 := strconv.ParseUint(unit["boot-complete"], 10, 64)
	started, err2 := strconv.ParseUint(show["InactiveExitTimestampMonotonic"], 10, 64)
	c.check(blessExample+" (LABEL= adjusted) ran after boot-complete.target and succeeded",
		err1 == nil && err2 == nil && reached > 0 && started >= reached &&
			show["Result"] == "success" && show["ActiveState"] == "inactive" && show["ExecMainStatus"] == "0" &&
			strings.Contains(unit["journal"], "slot "+demoImage+" blessed"),
		"started %.2fs after the target, %s %s, status %s: %q", float64(started)/1e6-float64(reached)/1e6,
		show["ActiveState"], show["Result"], show["ExecMainStatus"], blessedLine(unit["journal"]))
	// The unit remounts the disk read-only when done, which flushes the
	// ext4 journal: the disk is clean, and debugfs (which does not replay
	// a journal) reads what bless committed.
	sb, err := exec.Command("dumpe2fs", "-h", diskImg).Output()
	features := ""
	for _, l := range strings.Split(string(sb), "\n") {
		if f, ok := strings.CutPrefix(l, "Filesystem features:"); ok {
			features = strings.TrimSpace(f)
		}
	}
	c.check("after power-off the disk needs no journal recovery (the unit left it read-only again; dumpe2fs)",
		err == nil && features != "" && !strings.Contains(features, "needs_recovery"), "features: %s (%v)", features, err)
	out, err := exec.Command("debugfs", "-R", "cat /composefs/"+repo.StateFile, diskImg).Output()
	var got repo.State
	if err == nil {
		err = json.Unmarshal(out, &got)
	}
	c.check("after power-off the disk's slot state says the slot is good (debugfs)",
		err == nil && got == (repo.State{Good: demoImage}), "%s (%v)", strings.TrimSpace(string(out)), err)
}

// blessedLine is what cfsroot bless printed about the slot, as the unit's
// journal has it, or the journal's last line.
func blessedLine(journal string) string {
	lines := strings.Split(strings.TrimSpace(journal), "\n")
	for _, l := range lines {
		if strings.HasPrefix(l, "slot ") {
			return l
		}
	}
	return lines[len(lines)-1]
}

// demoStranger is a program of the Debian demo root (signature mode) whose
// object is signed by a key the init does not trust.
const demoStranger = "/usr/local/bin/cfsroot-stranger"

const (
	demoObjectCN = "cfsroot demo object signer"
	scratchLabel = "cfsroot-scratch"
	// demoBenchTurns is how many policies the exec timing alternates.
	demoBenchTurns = 8
)

// demoScratch makes the signature mode's second disk (see
// vmtests/internal/demoguest/signature.go): copies of /usr/bin/true
// unsigned, signed by the object signer and signed by the stranger, the
// stranger's certificate, and the IPE policies the exec timing alternates.
func demoScratch(t *testing.T, cfsroot, work, tree, objCert, objKey, strangerCert, strangerKey, policyCert, policyKey string) string {
	t.Helper()
	dir := filepath.Join(work, "scratch")
	os.RemoveAll(dir)
	trueBin, err := os.ReadFile(filepath.Join(tree, "usr/bin/true"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"unsigned-true", "signed-true", "stranger-true"} {
		write(t, filepath.Join(dir, n), trueBin)
		if err := os.Chmod(filepath.Join(dir, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runTool(t, cfsroot, "sign", "--key", objKey, "--cert", objCert, filepath.Join(dir, "signed-true"), filepath.Join(dir, "signed-true.sig"))
	runTool(t, cfsroot, "sign", "--key", strangerKey, "--cert", strangerCert, filepath.Join(dir, "stranger-true"), filepath.Join(dir, "stranger-true.sig"))
	runCmd(t, "openssl", "x509", "-in", strangerCert, "-outform", "der", "-out", filepath.Join(dir, "stranger.der"))
	// The timing alternates between the signature policy and an allow-all
	// policy, activating each in turn (IPE activates only increasing
	// versions, hence one policy per turn), so that drift on the host
	// weighs on both alike.
	if err := os.MkdirAll(filepath.Join(dir, "bench"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= demoBenchTurns; i++ {
		name, kind := fmt.Sprintf("cfsroot_bench_%02d", i), "allow-all"
		txt := filepath.Join(work, name+".txt")
		if i%2 == 0 {
			kind = "signature"
			runTool(t, cfsroot, "policy", "generate", "--mode", "signature", "--name", name, "--version", fmt.Sprintf("0.1.%d", i), "-o", txt)
		} else {
			write(t, txt, []byte(fmt.Sprintf("policy_name=%s policy_version=0.1.%d\nDEFAULT action=ALLOW\n", name, i)))
		}
		runTool(t, cfsroot, "policy", "sign", "--key", policyKey, "--cert", policyCert, txt,
			filepath.Join(dir, "bench", fmt.Sprintf("%02d-%s.p7s", i, kind)))
	}
	img := filepath.Join(work, "scratch.img")
	os.Remove(img)
	runCmd(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", "-L", scratchLabel, "-d", dir, img, "16M")
	return img
}

// hasError tells whether one of errs names object and says what.
func hasError(errs []string, object, what string) bool {
	for _, e := range errs {
		if strings.Contains(e, object) && strings.Contains(e, what) {
			return true
		}
	}
	return false
}

func mustCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := signature.LoadCertificate(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// demoTampered is a file of the demo root whose object the test damages.
const demoTampered = "/usr/share/cfsroot-demo/tampered.txt"

var demoTamperedContent = bytes.Repeat([]byte("cfsroot demo: this file's object is changed on disk after signing\n"), 8)

// minimalRoot makes a root whose only program is the report program, as
// /sbin/init.
func minimalRoot(t *testing.T, tree, reporter string) {
	t.Helper()
	bin, err := os.ReadFile(reporter)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tree, "sbin/init"), bin)
	if err := os.Chmod(filepath.Join(tree, "sbin/init"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tree, "etc/hostname"), []byte("cfsroot-demo\n"))
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func orOK(s string) string {
	if s == "" {
		return "ran"
	}
	return s
}

// demoCert makes a self-signed RSA certificate and key with openssl, as the
// README tells a user to.
func demoCert(t *testing.T, dir, name, cn string) (cert, key string) {
	t.Helper()
	cert, key = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	runCmd(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
		"-subj", "/CN="+cn, "-keyout", key, "-out", cert,
		"-addext", "keyUsage=critical,digitalSignature", "-addext", "extendedKeyUsage=codeSigning")
	return cert, key
}

// demoPolicy generates and signs the image's IPE policy next to it
// (composefs/images/NAME.ipe.p7s). It returns the signed policy, or "" and
// why IPE is skipped: the kernel parses at most 65535 bytes of PKCS#7
// (about 572 rules), and `cfsroot policy sign` refuses larger policies.
func demoPolicy(t *testing.T, cfsroot, img, objects, cert, key string, sigMode bool) (string, string) {
	t.Helper()
	if os.Getenv("CFSROOT_DEMO_IPE") == "0" {
		return "", "CFSROOT_DEMO_IPE=0"
	}
	txt := strings.TrimSuffix(img, ".cfs") + ".ipe.txt"
	var warn string
	if sigMode {
		_, warn = runTool(t, cfsroot, "policy", "generate", "--mode", "signature", "--name", "cfsroot_demo", "--version", "0.0.1", "-o", txt, img)
		if strings.Contains(warn, "stored inline") {
			t.Fatalf("cfsroot policy generate --mode signature: the image has inline executables (mkimage --external-exec should prevent it):\n%s", warn)
		}
	} else {
		_, warn = runTool(t, cfsroot, "policy", "generate", "--store", objects, "--name", "cfsroot_demo", "--version", "0.0.1", "-o", txt, img)
	}
	signed := strings.TrimSuffix(img, ".cfs") + ".ipe.p7s"
	cmdOut, err := exec.Command(cfsroot, "policy", "sign", "--key", key, "--cert", cert, txt, signed).CombinedOutput()
	if err != nil {
		os.Remove(txt)
		if strings.Contains(warn, "65535") {
			return "", "the image's executables need more rules than the kernel accepts in one policy: " + firstLine(warn)
		}
		t.Fatalf("cfsroot policy sign: %v\n%s", err, cmdOut)
	}
	os.Remove(txt)
	return signed, ""
}

// runTool runs the host tool and fails the test when it fails.
func runTool(t *testing.T, bin string, args ...string) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cfsroot %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// parsePredict reads `cfsroot pcr predict` output: "PCR BANK HEX" lines.
func parsePredict(t *testing.T, out string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "15" {
			m[f[1]] = f[2]
		}
	}
	if len(m) == 0 {
		t.Fatalf("cfsroot pcr predict printed no PCR 15 values:\n%s", out)
	}
	return m
}

// parsePCRRead reads tpm2_pcrread's YAML-like output:
//
//	sha256:
//	  15: 0xABC...
func parsePCRRead(out string) map[string]string {
	m := map[string]string{}
	bank := ""
	s := bufio.NewScanner(strings.NewReader(out))
	for s.Scan() {
		l := strings.TrimSpace(s.Text())
		if strings.HasSuffix(l, ":") && !strings.Contains(l, " ") {
			bank = strings.TrimSuffix(l, ":")
			continue
		}
		if v, ok := strings.CutPrefix(l, "15: 0x"); ok && bank != "" {
			m[bank] = strings.ToLower(v)
		}
	}
	return m
}

// parseAnalyzePCRs reads `systemd-analyze pcrs 15 --json=short`: an array
// of {"nr":15,"name":...,"sha256":HEX}.
func parseAnalyzePCRs(out string) (string, error) {
	i := strings.Index(out, "[")
	if i < 0 {
		return "", fmt.Errorf("no JSON array in %q", out)
	}
	var rows []map[string]any
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&rows); err != nil {
		return "", fmt.Errorf("systemd-analyze pcrs: %w in %q", err, out)
	}
	for _, r := range rows {
		if n, _ := r["nr"].(float64); n == 15 {
			for k, v := range r {
				if s, ok := v.(string); ok && k != "name" && len(s) == 64 {
					return strings.ToLower(s), nil
				}
			}
		}
	}
	return "", fmt.Errorf("no sha256 value of PCR 15 in %q", out)
}

// pcrlockLog is what `systemd-pcrlock log --json=short` says about PCR 15:
// the records it parsed (from the firmware log and from
// /run/log/systemd/tpm2-measure.log) and its replay against the TPM.
type pcrlockLog struct {
	records []pcrlockRecord
	// pcr15 is PCR 15's row: "hashMatchesEventLog" (the replay equals
	// what the TPM reports), "calculatedSHA256" and "observedSHA256".
	pcr15 map[string]any
}

type pcrlockRecord struct {
	description string
	digests     map[string]string // bank ("sha256") -> hex
	match       any               // "match": true/false when systemd checked the payload, null otherwise
}

// parsePcrlockLog parses the JSON object {"log": [...], "pcrs": [...]} that
// systemd-pcrlock log prints with --json (systemd's src/pcrlock/pcrlock.c,
// verb_show_log: one row per record, one per PCR).
func parsePcrlockLog(out string) (pcrlockLog, error) {
	var l pcrlockLog
	var v struct {
		Log  []map[string]any `json:"log"`
		PCRs []map[string]any `json:"pcrs"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return l, fmt.Errorf("systemd-pcrlock log: %w in %.300q", err, out)
	}
	for _, r := range v.Log {
		if n, _ := r["pcr"].(float64); n != 15 {
			continue
		}
		rec := pcrlockRecord{digests: map[string]string{}, match: r["match"]}
		rec.description, _ = r["description"].(string)
		for _, a := range measure.KnownAlgs {
			if h, ok := r[a.String()].(string); ok {
				rec.digests[a.String()] = strings.ToLower(h)
			}
		}
		l.records = append(l.records, rec)
	}
	for _, r := range v.PCRs {
		if n, _ := r["pcr"].(float64); n == 15 {
			l.pcr15 = r
		}
	}
	if l.pcr15 == nil {
		return l, fmt.Errorf("systemd-pcrlock log has no row for PCR 15 in %.300q", out)
	}
	return l, nil
}

// agrees checks that pcrlock read exactly the records of our log, with our
// texts and digests on every bank, none marked as not matching its payload,
// and that its replay of PCR 15 equals the TPM's value on every bank and the
// predicted SHA-256 value.
func (l pcrlockLog) agrees(recs []eventlog.Record, predicted string) error {
	var ours []eventlog.Record
	for _, r := range recs {
		if r.PCR == 15 {
			ours = append(ours, r)
		}
	}
	if len(l.records) != len(ours) || len(ours) == 0 {
		return fmt.Errorf("pcrlock read %d records on PCR 15, the log has %d", len(l.records), len(ours))
	}
	for i, r := range ours {
		p := l.records[i]
		ok := r.Content != nil && p.description == r.Content.String && p.match != false && len(p.digests) == len(r.Digests)
		for _, d := range r.Digests {
			ok = ok && p.digests[d.HashAlg] == d.Digest
		}
		if !ok {
			return fmt.Errorf("record %d: pcrlock read %q %v (match %v), the log has %+v", i, p.description, p.digests, p.match, r)
		}
	}
	banks := 0
	for k, v := range l.pcr15 {
		if bank, ok := strings.CutPrefix(k, "calculated"); ok {
			obs, _ := l.pcr15["observed"+bank].(string)
			if calc, _ := v.(string); calc == "" || !strings.EqualFold(calc, obs) {
				return fmt.Errorf("PCR 15 %s: pcrlock replays %v, the TPM has %q", bank, v, obs)
			}
			banks++
		}
	}
	obs, _ := l.pcr15["observedSHA256"].(string)
	if l.pcr15["hashMatchesEventLog"] != true || banks == 0 || !strings.EqualFold(obs, predicted) {
		return fmt.Errorf("PCR 15: pcrlock says %v, predicted sha256 %s", l.pcr15, predicted)
	}
	return nil
}

type demoChecks struct {
	t      *testing.T
	lines  []string
	failed bool
}

func (c *demoChecks) check(name string, ok bool, format string, a ...any) {
	c.t.Helper()
	mark := "OK  "
	if !ok {
		mark = "FAIL"
		c.failed = true
		c.t.Errorf("demo check failed: %s: %s", name, fmt.Sprintf(format, a...))
	}
	c.lines = append(c.lines, fmt.Sprintf("%s %s: %s", mark, name, fmt.Sprintf(format, a...)))
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// dirMiB is the apparent size of the files under dir, in MiB.
func dirMiB(t *testing.T, dir string) int {
	t.Helper()
	out := strings.Fields(string(runCmd(t, "du", "-sm", dir)))
	n, err := strconv.Atoi(out[0])
	if err != nil {
		t.Fatalf("du -sm %s: %q", dir, out)
	}
	return n
}

func lastFields(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		f = f[len(f)-n:]
	}
	return strings.Join(f, " ")
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimPrefix(l, "cfsroot: warning: ")
}
