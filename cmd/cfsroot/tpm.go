package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rollback"
)

func init() {
	register(&command{
		name:    "tpm",
		args:    "provision|floor [--device DEV] [--index 0xHANDLE]",
		summary: "anti-rollback floor in the TPM: provision defines the NV counter the init reads (rollback_nv), floor prints it",
		run:     runTPM,
		help:    tpmHelp,
	})
}

var tpmHelp = `Run on the target machine as root. provision defines an NV counter (TPM_NT_COUNTER) at the
index under the owner hierarchy (empty owner authorization) and increments it once; on a fresh TPM
the floor is then 1 (more if the TPM ever had counters). It changes nothing when a counter is
already there. Nothing can lower the counter afterwards; cfsroot bless raises it.`

// openTPM opens the TPM the tpm and bless commands use (tests replace it
// with the simulator).
var openTPM = func(ctx context.Context, dev string) (*measure.Measurer, error) { return measure.Open(ctx, dev) }

func parseNVIndex(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, usagef("--index %q: want a handle such as %#08x", s, rollback.DefaultIndex)
	}
	if err := rollback.CheckIndex(uint32(v)); err != nil {
		return 0, usagef("--index: %v", err)
	}
	return uint32(v), nil
}

func runTPM(args []string, stdout, stderr io.Writer) error {
	c := commands["tpm"]
	flags := func(w io.Writer) (fs *flag.FlagSet, dev, index *string) {
		fs = newFlagSet(c, w)
		dev = fs.String("device", "", "TPM device (default /dev/tpmrm0, then /dev/tpm0)")
		index = fs.String("index", fmt.Sprintf("%#08x", rollback.DefaultIndex), "NV index of the counter (the config's rollback_nv_index)")
		return fs, dev, index
	}
	if len(args) == 0 {
		fs, _, _ := flags(stderr)
		fs.Usage()
		return usagef("tpm: want a subcommand: provision or floor")
	}
	sub := args[0]
	switch sub {
	case "provision", "floor":
	case "-h", "--help", "help":
		fs, _, _ := flags(stdout)
		fs.Usage()
		return nil
	default:
		return usagef("tpm: unknown subcommand %q (want provision or floor)", sub)
	}
	fs, dev, index := flags(stderr)
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("tpm %s: unexpected arguments %q", sub, pos)
	}
	idx, err := parseNVIndex(*index)
	if err != nil {
		return err
	}
	ctx := context.Background()
	m, err := openTPM(ctx, *dev)
	if err != nil {
		return fmt.Errorf("tpm %s: %w", sub, err)
	}
	defer m.Close()
	if sub == "floor" {
		v, err := rollback.Read(ctx, m, idx)
		if err != nil {
			return fmt.Errorf("tpm floor: %w", err)
		}
		fmt.Fprintln(stdout, v)
		return nil
	}
	v, created, err := rollback.Provision(ctx, m, idx, nil)
	if err != nil {
		return fmt.Errorf("tpm provision: %w", err)
	}
	if created {
		fmt.Fprintf(stdout, "defined NV counter %#08x; the floor is %d\n", idx, v)
	} else {
		fmt.Fprintf(stdout, "NV counter %#08x is already there; the floor is %d\n", idx, v)
	}
	return nil
}

// bootedRollback is what bless reads from the init's status file.
type bootedRollback struct {
	Image    string `json:"image"`
	Rollback *struct {
		Version uint64 `json:"version"`
		NVState string `json:"nv_state"`
		NVIndex string `json:"nv_index"`
	} `json:"rollback"`
}

// bootFloor describes the anti-rollback floor the init booted with, from
// its status file ("" when there is none).
func bootFloor(statusPath string) string {
	data, err := os.ReadFile(statusPath)
	if err != nil {
		return ""
	}
	var st struct {
		Rollback *struct {
			Floor      uint64 `json:"floor"`
			MinVersion uint64 `json:"min_version"`
			NV         uint64 `json:"nv"`
			NVState    string `json:"nv_state"`
		} `json:"rollback"`
	}
	if json.Unmarshal(data, &st) != nil || st.Rollback == nil {
		return ""
	}
	r := st.Rollback
	nv := "not used"
	switch r.NVState {
	case "read":
		nv = fmt.Sprint(r.NV)
	case "missing":
		nv = "missing"
	}
	return fmt.Sprintf("anti-rollback floor at boot: %d (min_version %d, NV counter %s)", r.Floor, r.MinVersion, nv)
}

// raiseFloor raises the NV counter to the booted image's security version,
// as the init recorded it in its status file: never lower (the TPM cannot
// lower a counter), never above the booted version. The status file is
// root's to write; root lying there can only raise the floor (a denial of
// service), never lower it.
func raiseFloor(statusPath, dev string, stdout, stderr io.Writer) error {
	data, err := os.ReadFile(statusPath)
	if err != nil {
		return fmt.Errorf("anti-rollback floor: %w", err)
	}
	var st bootedRollback
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("anti-rollback floor: %s: %w", statusPath, err)
	}
	r := st.Rollback
	switch {
	case r == nil:
		fmt.Fprintf(stdout, "the init recorded no security version (%s); the anti-rollback floor is not raised\n", statusPath)
		return nil
	case r.NVState == "off":
		fmt.Fprintln(stdout, "the init's config does not use the TPM NV floor (rollback_nv off); nothing to raise")
		return nil
	case r.NVState != "read" && r.NVState != "missing":
		return fmt.Errorf("anti-rollback floor: %s: unknown nv_state %q", statusPath, r.NVState)
	}
	idx, err := parseNVIndex(r.NVIndex)
	if err != nil {
		return fmt.Errorf("anti-rollback floor: %s: nv_index: %w", statusPath, err)
	}
	ctx := context.Background()
	m, err := openTPM(ctx, dev)
	if err != nil {
		return fmt.Errorf("anti-rollback floor: %w", err)
	}
	defer m.Close()
	before, after, err := rollback.Raise(ctx, m, idx, r.Version)
	if errors.Is(err, rollback.ErrMissing) && r.NVState == "missing" {
		// rollback_nv optional, and still no counter.
		fmt.Fprintf(stderr, "cfsroot bless: warning: there is no rollback NV counter (%v): version %d is not protected against rollback; run cfsroot tpm provision, then bless again\n", err, r.Version)
		return nil
	}
	if err != nil {
		return fmt.Errorf("anti-rollback floor: %w; the slot is blessed, run bless again to raise the floor", err)
	}
	switch {
	case after > before:
		fmt.Fprintf(stdout, "anti-rollback floor (NV counter %#08x) raised from %d to %d: images below version %d no longer boot\n", idx, before, after, after)
	case r.Version < before:
		fmt.Fprintf(stdout, "anti-rollback floor (NV counter %#08x) stays at %d: the booted version %d is below it, and the floor never goes down\n", idx, before, r.Version)
	default:
		fmt.Fprintf(stdout, "anti-rollback floor (NV counter %#08x) is already %d\n", idx, before)
	}
	return nil
}
