package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil/simtpm"
	"github.com/cfsroot/cfsroot/measure"
)

// withSimTPM makes the tpm and bless commands use the TPM simulator.
func withSimTPM(t *testing.T) {
	t.Helper()
	tpm := simtpm.Open(t)
	old := openTPM
	openTPM = func(ctx context.Context, dev string) (*measure.Measurer, error) { return measure.New(ctx, tpm) }
	t.Cleanup(func() { openTPM = old })
}

// TestTPMProvisionAndBlessFloor: provision defines the counter (floor 1 on
// a fresh TPM) and is idempotent; bless raises the floor to the booted
// version recorded in status.json, never lowers it when an older image is
// blessed, and leaves it alone when the init did not use it.
func TestTPMProvisionAndBlessFloor(t *testing.T) {
	withSimTPM(t)
	if _, _, err := runCmd(t, "tpm", "floor"); err == nil || !strings.Contains(err.Error(), "not defined") {
		t.Fatalf("floor before provisioning: %v", err)
	}
	out, _, err := runCmd(t, "tpm", "provision")
	if err != nil || !strings.Contains(out, "defined NV counter 0x0180cf50; the floor is 1") {
		t.Fatalf("provision: %v\n%s", err, out)
	}
	if out, _, err = runCmd(t, "tpm", "provision"); err != nil || !strings.Contains(out, "already there; the floor is 1") {
		t.Fatalf("provision again: %v\n%s", err, out)
	}
	for _, bad := range [][]string{{"tpm", "provision", "--index", "0x81000000"}, {"tpm", "provision", "x"}, {"tpm", "lower"}} {
		var ue *usageError
		if _, _, err := runCmd(t, bad...); err == nil || !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", bad, err)
		}
	}

	status := filepath.Join(t.TempDir(), "status.json")
	floorAfter := func(js string) (string, string) {
		t.Helper()
		os.WriteFile(status, []byte(js), 0o644)
		var o, e strings.Builder
		if err := raiseFloor(status, "", &o, &e); err != nil {
			t.Fatalf("raiseFloor(%s): %v", js, err)
		}
		v, _, err := runCmd(t, "tpm", "floor")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(v), o.String() + e.String()
	}
	const read = `"nv_state": "read", "nv_index": "0x0180cf50"`
	for _, tc := range []struct{ status, floor, says string }{
		{`{"image": "a", "rollback": {"version": 3, ` + read + `}}`, "3", "raised from 1 to 3"},
		{`{"image": "b", "rollback": {"version": 2, ` + read + `}}`, "3", "stays at 3: the booted version 2 is below it"},
		{`{"image": "a", "rollback": {"version": 3, ` + read + `}}`, "3", "is already 3"},
		{`{"image": "c", "rollback": {"version": 9, "nv_state": "off"}}`, "3", "rollback_nv off"},
		{`{"image": "c"}`, "3", "recorded no security version"},
		// The init found no counter, which was provisioned since: raised.
		{`{"image": "c", "rollback": {"version": 4, "nv_state": "missing", "nv_index": "0x0180cf50"}}`, "4", "raised from 3 to 4"},
	} {
		floor, says := floorAfter(tc.status)
		if floor != tc.floor || !strings.Contains(says, tc.says) {
			t.Errorf("%s: floor %s, said %q; want floor %s and %q", tc.status, floor, says, tc.floor, tc.says)
		}
	}
	// Still no counter (another index): a warning, nothing raised.
	floor, says := floorAfter(`{"image": "c", "rollback": {"version": 9, "nv_state": "missing", "nv_index": "0x0180cf51"}}`)
	if floor != "4" || !strings.Contains(says, "not protected against rollback; run cfsroot tpm provision") {
		t.Errorf("missing counter: floor %s, said %q", floor, says)
	}
	// A status claiming a huge version (root can write it) is bounded.
	os.WriteFile(status, []byte(`{"image": "a", "rollback": {"version": 100000, `+read+`}}`), 0o644)
	var o strings.Builder
	if err := raiseFloor(status, "", &o, &o); err == nil || !strings.Contains(err.Error(), "more than 1024") {
		t.Errorf("raise to 100000: %v", err)
	}
}

// TestStatusShowsVersions: cfsroot status shows each slot's security version
// and product, and the floor the init booted with.
func TestStatusShowsVersions(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tree.dump")
	os.WriteFile(src, []byte("/ 4096 40755 2 0 0 0 0.0 - - -\n/etc 4096 40755 2 0 0 0 0.0 - - -\n"), 0o644)
	repoDir := filepath.Join(dir, "composefs")
	os.MkdirAll(filepath.Join(repoDir, "images"), 0o755)
	for name, flags := range map[string][]string{"a": {"--security-version", "3", "--product", "app"}, "b": nil} {
		args := append(append([]string{"mkimage", "--from-file"}, flags...), src, filepath.Join(repoDir, "images", name+".cfs"))
		if _, stderr, err := runCmd(t, args...); err != nil {
			t.Fatalf("mkimage: %v\n%s", err, stderr)
		}
	}
	status := filepath.Join(dir, "status.json")
	os.WriteFile(status, []byte(`{"image": "a", "rollback": {"version": 3, "floor": 3, "min_version": 1, "nv": 3, "nv_state": "read"}}`), 0o644)
	out, _, err := runCmd(t, "status", "--repo", repoDir, "--status", status)
	if err != nil {
		t.Fatal(err)
	}
	if !regexpLine(out, "a", "*", "-", "3", "(app)") || !regexpLine(out, "b", "-", "0") ||
		!strings.Contains(out, "anti-rollback floor at boot: 3 (min_version 1, NV counter 3)\n") {
		t.Errorf("status:\n%s", out)
	}
}
