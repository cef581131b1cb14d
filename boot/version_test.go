package boot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rollback"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/repo"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// addVersionedImage writes and signs image NAME carrying info.
func (h *hostEnv) addVersionedImage(name string, info secversion.Info) verity.Digest {
	h.t.Helper()
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	init := composefs.NewNode(composefs.ModeRegular | 0o755)
	init.Content = []byte("#!/bin/true\n# " + name + "\n")
	init.Size = uint64(len(init.Content))
	sbin := composefs.NewNode(composefs.ModeDir | 0o755)
	if err := root.Add("sbin", sbin); err != nil {
		h.t.Fatal(err)
	}
	if err := sbin.Add("init", init); err != nil {
		h.t.Fatal(err)
	}
	if err := secversion.Add(root, info); err != nil {
		h.t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := composefs.Write(&buf, root, nil); err != nil {
		h.t.Fatal(err)
	}
	h.write(strings.TrimPrefix(h.imagePath(name), h.root), buf.Bytes(), 0o444)
	d, err := verity.DigestReader(bytes.NewReader(buf.Bytes()), verity.Params{})
	if err != nil {
		h.t.Fatal(err)
	}
	sig, err := signature.SignDigest(d, h.key, h.cert)
	if err != nil {
		h.t.Fatal(err)
	}
	h.write(strings.TrimPrefix(h.imagePath(name), h.root)+".sig", sig, 0o444)
	return d
}

// provisionNV defines the NV counter on the simulator and raises it to
// floor; it returns the counter's value.
func (h *hostEnv) provisionNV(floor uint64) uint64 {
	h.t.Helper()
	ctx := context.Background()
	m, err := measure.New(ctx, h.tpm)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, _, err := rollback.Provision(ctx, m, rollback.DefaultIndex, nil); err != nil {
		h.t.Fatal(err)
	}
	_, v, err := rollback.Raise(ctx, m, rollback.DefaultIndex, floor)
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

// TestRunVersion: the version step refuses an image below the floor (from
// min_version or the TPM NV counter) or for another product, before it is
// measured or mounted, through fallback too; a missing counter fails closed
// with rollback_nv required and is recorded with optional; the version and
// the floor are measured and in status.json.
func TestRunVersion(t *testing.T) {
	const slots = `{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"], "fallback": true, "tpm": "optional", "product": "appliance"`
	v := func(n uint64) secversion.Info { return secversion.Info{Version: n, Product: "appliance"} }
	for _, tc := range []struct {
		name  string
		a, b  secversion.Info
		nv    int64 // counter value to provision; -1: none
		noTPM bool
		// flaky: a TPM device that is there but fails (not "no TPM").
		flaky bool
		// ordinary puts an ordinary NV index (writable to any value) at
		// the counter's handle.
		ordinary bool
		config   string
		// want: the booted slot and its floor, or an error
		boot    string
		floor   uint64
		nvState string
		err     []string
	}{
		{name: "nv floor and newest first", a: v(3), b: v(2), nv: 3, config: `, "rollback_nv": "required"}`,
			boot: "a", floor: 3, nvState: "read"},
		{name: "below the nv floor", a: v(2), b: v(1), nv: 3, config: `, "rollback_nv": "required"}`,
			err: []string{"step version failed", "b.cfs: image security version 1 is below the floor 3"}},
		{name: "fallback skips an older image", a: v(2), b: v(3), nv: 3, config: `, "rollback_nv": "required"}`,
			boot: "b", floor: 3, nvState: "read"},
		{name: "min_version above the counter", a: v(4), b: v(5), nv: 2, config: `, "rollback_nv": "required", "min_version": 5}`,
			boot: "b", floor: 5, nvState: "read"},
		{name: "min_version without nv", a: v(1), b: v(2), nv: -1, config: `, "min_version": 2}`,
			boot: "b", floor: 2, nvState: "off"},
		{name: "other product", a: secversion.Info{Version: 9, Product: "debug"}, b: secversion.Info{Version: 9}, nv: -1, config: `}`,
			err: []string{"step version failed", `b.cfs: image is for product "", this system boots product "appliance"`}},
		{name: "nv required and missing", a: v(3), b: v(3), nv: -1, config: `, "rollback_nv": "required"}`,
			err: []string{"step version failed: TPM NV index 0x0180cf50: rollback_nv is required", "not defined"}},
		{name: "nv required and no TPM", a: v(3), b: v(3), noTPM: true, config: `, "rollback_nv": "required"}`,
			err: []string{"step version failed: TPM NV index 0x0180cf50: rollback_nv is required", "no TPM"}},
		{name: "ordinary index refused with optional", a: v(3), b: v(3), nv: -1, ordinary: true, config: `, "rollback_nv": "optional"}`,
			err: []string{"step version failed: TPM NV index 0x0180cf50: rollback_nv is optional", "is not an NV counter"}},
		{name: "nv optional and a failing TPM", a: v(1), b: v(1), flaky: true, config: `, "rollback_nv": "optional", "min_version": 1}`,
			err: []string{"step version failed: TPM NV index 0x0180cf50: rollback_nv is optional", "TPM_RC_FAILURE"}},
		{name: "nv optional and missing", a: v(1), b: v(1), nv: -1, config: `, "rollback_nv": "optional", "min_version": 1}`,
			boot: "a", floor: 1, nvState: "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			if !tc.noTPM {
				h.withTPM()
			}
			nvValue := uint64(0)
			if tc.nv >= 0 && !tc.noTPM {
				nvValue = h.provisionNV(uint64(tc.nv))
			}
			if tc.ordinary {
				pub := tpm2.TPMSNVPublic{NVIndex: tpm2.TPMHandle(rollback.DefaultIndex), NameAlg: tpm2.TPMAlgSHA256,
					Attributes: tpm2.TPMANV{NT: tpm2.TPMNTOrdinary, AuthWrite: true, AuthRead: true, NoDA: true}, DataSize: 8}
				if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
					PublicInfo: tpm2.New2B(pub)}).Execute(h.tpm); err != nil {
					t.Fatal(err)
				}
			}
			if tc.flaky {
				h.env.OpenTPM = func(context.Context) (*measure.Measurer, error) {
					return nil, &measure.Error{Op: "open /dev/tpmrm0", Err: errors.New("TPM_RC_FAILURE")}
				}
			}
			da := h.addVersionedImage("a", tc.a)
			db := h.addVersionedImage("b", tc.b)
			cfg := h.config(slots + tc.config)
			st, err := h.run(cfg, "")
			if tc.err != nil {
				if err == nil {
					t.Fatalf("booted %s, want an error", st.Image)
				}
				for _, w := range tc.err {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if h.called("erofs", "") || len(h.mounter.calls) > 1 {
					t.Errorf("mounted after a refusal: %v", h.mounter.calls)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, h.console.String())
			}
			info, d := tc.a, da
			if tc.boot == "b" {
				info, d = tc.b, db
				if len(st.Refused) != 1 || !strings.Contains(st.Refused[0].Reason, "step version failed") {
					t.Errorf("refused = %+v, want slot a refused at step version", st.Refused)
				}
			}
			if st.Image != tc.boot {
				t.Fatalf("booted %s, want %s", st.Image, tc.boot)
			}
			r := h.readStatus().Rollback
			if r == nil || r.Version != info.Version || r.Product != info.Product || r.Floor != tc.floor || r.NVState != tc.nvState {
				t.Fatalf("status.json rollback = %+v", r)
			}
			if tc.nvState == "read" && (r.NV != nvValue || r.NVIndex != "0x0180cf50") {
				t.Errorf("status.json nv = %d index %s, want %d", r.NV, r.NVIndex, nvValue)
			}
			if tc.nvState == "missing" && !strings.Contains(r.NVError, "not defined") {
				t.Errorf("status.json nv_error = %q", r.NVError)
			}
			if !tc.noTPM {
				evs, err := measure.Events(measure.ImageInfo{Name: tc.boot, Digest: d, Signer: h.cert,
					Rollback: &measure.RollbackInfo{Version: info.Version, Product: info.Product, Floor: tc.floor, NV: tc.nvState}})
				if err != nil {
					t.Fatal(err)
				}
				h.wantEvents(st, evs)
			}
		})
	}
}

// TestRunVersionMalformed: a signed image whose /.cfsroot/security-version
// is not what mkimage writes is refused, not read as some version.
func TestRunVersionMalformed(t *testing.T) {
	h := newHostEnv(t)
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	dir := composefs.NewNode(composefs.ModeDir | 0o555)
	f := composefs.NewNode(composefs.ModeRegular | 0o444)
	f.Content, f.Size = []byte("3 \n"), 3
	root.Add(".cfsroot", dir)
	dir.Add("security-version", f)
	var buf bytes.Buffer
	if _, err := composefs.Write(&buf, root, nil); err != nil {
		t.Fatal(err)
	}
	h.write(strings.TrimPrefix(h.imagePath("default"), h.root), buf.Bytes(), 0o444)
	d, _ := verity.DigestReader(bytes.NewReader(buf.Bytes()), verity.Params{})
	sig, _ := signature.SignDigest(d, h.key, h.cert)
	h.write(strings.TrimPrefix(h.imagePath("default"), h.root)+".sig", sig, 0o444)
	_, err := h.run(h.config(baseConfig+`, "tpm": "optional"}`), "")
	if err == nil || !strings.Contains(err.Error(), "step version failed") || !strings.Contains(err.Error(), "security-version") {
		t.Errorf("Run: %v, want a refusal at step version", err)
	}
}

// TestRunVersionRAMCopyRemoved: a slot refused at step version after it
// was copied to RAM (allow_ram_copy, a disk without fs-verity) leaves no
// copy in /run: it would hold up to ram_copy_max_mib of memory that the
// next slot's copy needs, and stay in the booted system's /run. An
// attacker who puts an older signed image in the first slot must not be
// able to make the good one unbootable that way.
func TestRunVersionRAMCopyRemoved(t *testing.T) {
	h := newHostEnv(t)
	h.addVersionedImage("a", secversion.Info{Version: 1})
	h.addVersionedImage("b", secversion.Info{Version: 2})
	h.noVeri["a.cfs"], h.noVeri["b.cfs"] = true, true
	st, err := h.run(h.config(`{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"], "fallback": true, "tpm": "optional", "allow_ram_copy": true, "min_version": 2}`), "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	if st.Image != "b" || st.DigestSource != "ram-copy" {
		t.Fatalf("booted %s from %s, want b from its RAM copy", st.Image, st.DigestSource)
	}
	if _, err := os.Stat(filepath.Join(h.root, RunDir, "a.cfs")); err == nil {
		t.Errorf("the RAM copy of a, refused at step version, is left in %s", RunDir)
	}
	if _, err := os.Stat(filepath.Join(h.root, RunDir, "b.cfs")); err != nil {
		t.Errorf("the booted RAM copy: %v", err)
	}
}

// TestRunTrialBelowFloor: a trial slot holding a signed image below the
// floor (an attacker's rollback dressed as an update) uses a try and is
// refused at step version; the known-good slot boots, also without
// fallback, and the floor is checked for it too.
func TestRunTrialBelowFloor(t *testing.T) {
	h := newHostEnv(t)
	h.addVersionedImage("a", secversion.Info{Version: 2})
	h.addVersionedImage("b", secversion.Info{Version: 1})
	h.setState(repo.State{Good: "a", Trial: "b", TriesLeft: 2})
	st, err := h.run(h.config(`{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"], "tpm": "optional", "min_version": 2}`), "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	if st.Image != "a" || st.Slots == nil || st.Slots.BootedAs != "good" {
		t.Fatalf("booted %s as %+v, want the known-good a", st.Image, st.Slots)
	}
	if len(st.Refused) != 1 || st.Refused[0].Slot != "b" || !strings.Contains(st.Refused[0].Reason, "below the floor 2") {
		t.Errorf("refused %+v, want b below the floor", st.Refused)
	}
	if got, want := h.state(), (repo.State{Good: "a", Trial: "b", TriesLeft: 1, TriesDone: 1}); got != want {
		t.Errorf("state %+v, want %+v (the try is used)", got, want)
	}
	if st.Rollback == nil || st.Rollback.Version != 2 || st.Rollback.Floor != 2 {
		t.Errorf("rollback status %+v", st.Rollback)
	}
	// Both slots below the floor: nothing boots.
	h2 := newHostEnv(t)
	h2.addVersionedImage("a", secversion.Info{Version: 1})
	h2.addVersionedImage("b", secversion.Info{Version: 1})
	h2.setState(repo.State{Good: "a", Trial: "b", TriesLeft: 2})
	if _, err := h2.run(h2.config(`{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"], "tpm": "optional", "min_version": 2}`), ""); err == nil || !strings.Contains(err.Error(), "below the floor") {
		t.Errorf("both below the floor: %v", err)
	}
}
