package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cfsroot/cfsroot/rootfs/repo"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// The commands that manage a device's repository: install, bless, status,
// gc (package rootfs/repo has the model and the on-disk format).

func init() {
	register(&command{
		name: "install",
		args: "--repo DIR --store OBJECTS --trusted CERT (--slot NAME | --slots A,B) [--sig SIG] [--policy P7S] [--tries N] [--status FILE] IMAGE",
		summary: "install a signed composefs IMAGE and its missing objects (with their builtin signatures, if the store has them) " +
			"into a slot of the repository DIR (the slot not booted, as a trial with N boots; the first install becomes the known-good slot), " +
			"crash-safe; every object is checked against the image before the image gets its final name",
		run: runInstall,
	})
	register(&command{
		name:    "bless",
		args:    "--repo DIR [--status FILE] [--tpm DEV]",
		summary: "mark the booted slot good: a trial becomes the known-good slot, and (with the init's rollback_nv) the TPM NV anti-rollback floor rises to its security version (run after boot-complete.target)",
		run:     runBless,
	})
	register(&command{
		name:    "status",
		args:    "--repo DIR [--slots A,B] [--trusted CERT] [--status FILE]",
		summary: "show each slot of the repository: its image digest, signer, state and tries, security version and product, and the floor the init booted with",
		run:     runStatus,
	})
	register(&command{
		name:    "gc",
		args:    "--repo DIR [--dry-run] [--status FILE]",
		summary: "delete the objects no installed image references (never those of the booted or known-good image)",
		run:     runGC,
	})
}

// defaultStatus is where the init leaves what it booted.
const defaultStatus = "/run/cfsroot/status.json"

// bootedSlot returns the slot the init booted, from its status file; ""
// if there is none (e.g. on a build host or installer).
func bootedSlot(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var st struct {
		Image string `json:"image"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return st.Image, nil
}

func splitSlots(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

func runInstall(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet(commands["install"], stderr)
	dir := flags.String("repo", "", "repository directory on the target filesystem (e.g. /mnt/composefs); created if missing")
	store := flags.String("store", "", "object store the image was built with (mkimage --digest-store)")
	trusted := flags.String("trusted", "", "certificates the image's signature must verify against (those in the target's initramfs)")
	slot := flags.String("slot", "", "slot (image name) to install into")
	slots := flags.String("slots", "", "the config's slots, comma-separated: install into the first that is neither booted nor known good")
	sig := flags.String("sig", "", "the image's signature (default IMAGE.sig)")
	policy := flags.String("policy", "", "the image's signed IPE policy (installed as SLOT.ipe.p7s)")
	tries := flags.Int("tries", repo.DefaultTries, "trial boots before the init falls back to the known-good slot")
	status := flags.String("status", defaultStatus, "the init's status file, naming the booted slot (absent on an installer)")
	pos, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *dir == "" || *store == "" || *trusted == "" || (*slot == "") == (*slots == "") {
		return usagef("install: want --repo, --store, --trusted, one of --slot and --slots, and one IMAGE")
	}
	ts, err := signature.LoadTrustStore(*trusted)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	booted, err := bootedSlot(*status)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	r, err := repo.Open(*dir)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if *slot == "" {
		st, err := repo.ReadState(*dir)
		if err != nil {
			return fmt.Errorf("install: %w", err)
		}
		for _, s := range splitSlots(*slots) {
			if s != booted && s != st.Good {
				*slot = s
				break
			}
		}
		if *slot == "" {
			return fmt.Errorf("install: every slot of %s is booted or known good; list a second slot", *slots)
		}
	}
	var progress func(done, total int, bytes int64)
	line := &progressLine{w: stderr}
	if f, ok := stderr.(*os.File); ok && isTerminal(f) {
		last := time.Time{}
		progress = func(done, total int, bytes int64) {
			if done == total || time.Since(last) > 200*time.Millisecond {
				last = time.Now()
				fmt.Fprintf(stderr, "\rinstall: %d/%d new objects copied, %.1f MiB\x1b[K", done, total, float64(bytes)/(1<<20))
				line.shown = true
			}
		}
	}
	start := time.Now()
	res, err := r.Install(repo.InstallOptions{
		Slot: *slot, Image: pos[0], Sig: *sig, Policy: *policy, Store: *store,
		Trusted: ts, Tries: *tries, Protect: []string{booted}, Progress: progress,
	})
	line.clear()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed %s into slot %s: digest %s, signed by %s\n", pos[0], *slot, res.Digest, res.Signer.Subject)
	fmt.Fprintf(stdout, "objects: %d referenced, %d copied (%d bytes); image %d bytes; all %d checked in %v\n",
		res.Objects, res.Copied, res.CopiedBytes, res.ImageBytes, res.Objects, time.Since(start).Round(time.Millisecond))
	if res.Signatures > 0 {
		fmt.Fprintf(stdout, "object signatures: %d copied beside their objects, fs-verity enabled with them\n", res.Signatures)
	}
	if res.NoVerity > 0 {
		fmt.Fprintf(stdout, "fs-verity: not enabled on %d files (this kernel or filesystem cannot); set \"provision_verity\": true in the init's config so the target enables it at first boot\n", res.NoVerity)
	}
	fmt.Fprintf(stdout, "state: %s\n", describeState(res.State))
	return nil
}

func describeState(st repo.State) string {
	s := "known good: " + orNone(st.Good)
	if st.Trial != "" {
		s += fmt.Sprintf("; trial: %s (%d tries left, %d done)", st.Trial, st.TriesLeft, st.TriesDone)
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func runBless(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet(commands["bless"], stderr)
	dir := flags.String("repo", "", "repository directory")
	status := flags.String("status", defaultStatus, "the init's status file, naming the booted slot (and its security version)")
	tpmDev := flags.String("tpm", "", "TPM device holding the anti-rollback NV counter (default /dev/tpmrm0, then /dev/tpm0)")
	pos, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *dir == "" {
		return usagef("bless: want --repo DIR and no arguments")
	}
	booted, err := bootedSlot(*status)
	if err != nil {
		return fmt.Errorf("bless: %w", err)
	}
	r, err := repo.Open(*dir)
	if err != nil {
		return fmt.Errorf("bless: %w", err)
	}
	before, after, err := r.Bless(booted)
	if err != nil {
		return err
	}
	if before == after {
		fmt.Fprintf(stdout, "slot %s is already known good\n", booted)
	} else {
		fmt.Fprintf(stdout, "slot %s blessed: %s\n", booted, describeState(after))
	}
	// Anti-rollback: this is the point where the booted image is known
	// good (as AVB raises rollback_index only after a successful boot):
	// the TPM NV floor is raised to its version, after the state is
	// committed, and also when it was already good (a floor not raised
	// the first time is raised now).
	return raiseFloor(*status, *tpmDev, stdout, stderr)
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet(commands["status"], stderr)
	dir := flags.String("repo", "", "repository directory")
	slots := flags.String("slots", "", "slots to show, comma-separated (default: every images/*.cfs)")
	trusted := flags.String("trusted", "", "certificates to check each slot's signature against (default: signer not shown)")
	status := flags.String("status", defaultStatus, "the init's status file, naming the booted slot")
	pos, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *dir == "" {
		return usagef("status: want --repo DIR and no arguments")
	}
	ts, err := optionalTrustStore(*trusted)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	booted, err := bootedSlot(*status)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	st, err := repo.ReadState(*dir)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	names := splitSlots(*slots)
	if len(names) == 0 {
		entries, err := os.ReadDir(filepath.Join(*dir, repo.ImagesDir))
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		for _, e := range entries {
			if n, ok := strings.CutSuffix(e.Name(), ".cfs"); ok && !strings.HasPrefix(n, ".") {
				names = append(names, n)
			}
		}
		for _, n := range []string{st.Good, st.Trial} {
			if n != "" && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tBOOTED\tSTATE\tVERSION\tDIGEST\tSIGNER")
	for _, n := range names {
		digest, signer := slotDigest(*dir, n, ts)
		mark := ""
		if n == booted {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n, mark, st.Describe(n), slotVersion(*dir, n), digest, signer)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if f := bootFloor(*status); f != "" {
		fmt.Fprintln(stdout, f)
	}
	return nil
}

// slotVersion returns a slot image's security version and product
// (/.cfsroot, package rootfs/secversion) for the status table.
func slotVersion(dir, slot string) string {
	info, err := readSecVersion(filepath.Join(dir, repo.ImagesDir, slot+".cfs"))
	switch {
	case err != nil:
		return "-"
	case info.Product != "":
		return fmt.Sprintf("%d (%s)", info.Version, info.Product)
	}
	return fmt.Sprint(info.Version)
}

// slotDigest returns a slot image's digest (the kernel's if fs-verity is
// on, else computed) and, with ts, who signed it or why it does not verify.
func slotDigest(dir, slot string, ts *signature.TrustStore) (digest, signer string) {
	img := filepath.Join(dir, repo.ImagesDir, slot+".cfs")
	f, err := os.Open(img)
	if err != nil {
		return "no image", "-"
	}
	defer f.Close()
	d, err := verity.Measure(f)
	if err != nil {
		if d, err = verity.DigestReader(f, verity.Params{}); err != nil {
			return "unreadable: " + err.Error(), "-"
		}
	}
	if ts == nil {
		return d.String(), "-"
	}
	sig, err := os.ReadFile(img + ".sig")
	if err != nil {
		return d.String(), "no signature"
	}
	cert, err := signature.Verify(sig, d, ts)
	if err != nil {
		return d.String(), "NOT TRUSTED: " + err.Error()
	}
	return d.String(), cert.Subject.String()
}

func runGC(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet(commands["gc"], stderr)
	dir := flags.String("repo", "", "repository directory")
	dry := flags.Bool("dry-run", false, "list what would be deleted and how many bytes, delete nothing")
	status := flags.String("status", defaultStatus, "the init's status file, naming the booted slot")
	pos, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *dir == "" {
		return usagef("gc: want --repo DIR and no arguments")
	}
	booted, err := bootedSlot(*status)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	r, err := repo.Open(*dir)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	res, err := r.GC([]string{booted}, *dry)
	if err != nil {
		return err
	}
	verb := "deleted"
	if *dry {
		verb = "would delete"
		for _, o := range res.Removed {
			fmt.Fprintln(stdout, o)
		}
	}
	fmt.Fprintf(stdout, "gc: %s %d objects (%d bytes) and %d temporary files; kept the objects of %s\n",
		verb, len(res.Removed), res.Bytes, res.Temps, strings.Join(res.Images, ", "))
	return nil
}
