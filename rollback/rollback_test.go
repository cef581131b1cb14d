package rollback

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/internal/testutil/simtpm"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
)

// openSim starts the TPM simulator (the Microsoft reference implementation)
// behind a Measurer, for its retries and timeout.
func openSim(t *testing.T) (*measure.Measurer, transport.TPM) {
	t.Helper()
	tpm := simtpm.Open(t)
	m, err := measure.New(context.Background(), tpm)
	if err != nil {
		t.Fatal(err)
	}
	return m, tpm
}

// TestCounterFloor: provisioning defines and starts the counter, Raise
// only raises it, and deleting and defining it again does not lower it; on
// the simulator (the TCG reference code) and on swtpm (libtpms, the TPM the
// VM tests attach).
func TestCounterFloor(t *testing.T) {
	t.Run("simulator", func(t *testing.T) {
		m, tpm := openSim(t)
		testCounterFloor(t, m, tpm)
	})
	t.Run("swtpm", func(t *testing.T) {
		m, tpm := openSwtpm(t)
		testCounterFloor(t, m, tpm)
	})
}

func openSwtpm(t *testing.T) (*measure.Measurer, transport.TPM) {
	t.Helper()
	tpm := testutil.Swtpm(t, "sha256")
	m, err := measure.New(context.Background(), tpm)
	if err != nil {
		t.Fatal(err)
	}
	return m, tpm
}

func testCounterFloor(t *testing.T, m *measure.Measurer, tpm transport.TPM) {
	ctx := context.Background()
	const idx = DefaultIndex

	if _, err := Read(ctx, m, idx); !errors.Is(err, ErrMissing) {
		t.Fatalf("Read before provisioning: %v, want ErrMissing", err)
	}
	if _, _, err := Raise(ctx, m, idx, 3); !errors.Is(err, ErrMissing) {
		t.Fatalf("Raise before provisioning: %v, want ErrMissing", err)
	}
	v0, created, err := Provision(ctx, m, idx, nil)
	if err != nil || !created || v0 < 1 {
		t.Fatalf("Provision = %d, %v, %v", v0, created, err)
	}
	t.Logf("a fresh counter starts at %d", v0)
	if v, created, err := Provision(ctx, m, idx, nil); err != nil || created || v != v0 {
		t.Fatalf("Provision again = %d, %v, %v; want %d, false (idempotent)", v, created, err, v0)
	}

	before, after, err := Raise(ctx, m, idx, v0+5)
	if err != nil || before != v0 || after != v0+5 {
		t.Fatalf("Raise(%d) = %d, %d, %v", v0+5, before, after, err)
	}
	// Never lowered: raising to less is a no-op.
	if before, after, err := Raise(ctx, m, idx, 1); err != nil || before != v0+5 || after != v0+5 {
		t.Fatalf("Raise(1) = %d, %d, %v; want no change", before, after, err)
	}
	if _, _, err := Raise(ctx, m, idx, v0+5+MaxIncrements+1); err == nil {
		t.Error("Raise accepted more than MaxIncrements steps")
	}
	high := v0 + 5

	// An attacker with the owner's authorization deletes the counter and
	// defines it again: the TPM restarts it at least where it was.
	_, err = tpm2.NVUndefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(idx)},
	}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Read(ctx, m, idx); !errors.Is(err, ErrMissing) {
		t.Fatalf("Read after undefine: %v, want ErrMissing", err)
	}
	v, created, err := Provision(ctx, m, idx, nil)
	if err != nil || !created {
		t.Fatal(err)
	}
	if v < high {
		t.Errorf("a counter defined again starts at %d, below the %d it had: the floor went down", v, high)
	}
	t.Logf("after undefine and define: %d (was %d)", v, high)

	// An ordinary index at the same handle (whose value anyone holding its
	// authValue could write lower) is refused, not read as a floor.
	tpm2.NVUndefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(idx)},
	}.Execute(tpm)
	ord := template(idx)
	ord.Attributes.NT = tpm2.TPMNTOrdinary
	if _, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		PublicInfo: tpm2.New2B(ord),
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(ctx, m, idx); err == nil || errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "not an NV counter") {
		t.Errorf("Read of an ordinary index: %v, want a refusal (not ErrMissing)", err)
	}
	if _, _, err := Provision(ctx, m, idx, nil); err == nil {
		t.Error("Provision accepted an ordinary index at the handle")
	}
	if err := CheckIndex(0x81000001); err == nil {
		t.Error("CheckIndex accepted a persistent object handle")
	}
}

func TestFloorAndCheck(t *testing.T) {
	for _, tc := range []struct {
		f    Floor
		want uint64
	}{
		{Floor{Config: 2, NVState: NVOff}, 2},
		{Floor{Config: 2, NV: 5, NVState: NVRead}, 5},
		{Floor{Config: 7, NV: 5, NVState: NVRead}, 7},
		{Floor{Config: 1, NV: 9, NVState: NVMissing}, 1},
	} {
		if got := tc.f.Value(); got != tc.want {
			t.Errorf("%+v.Value() = %d, want %d", tc.f, got, tc.want)
		}
	}
	for _, tc := range []struct {
		img     secversion.Info
		floor   uint64
		product string
		want    string // "" for accepted
	}{
		{secversion.Info{Version: 3, Product: "p"}, 3, "p", ""},
		{secversion.Info{Version: 4, Product: "p"}, 3, "p", ""},
		{secversion.Info{Version: 2, Product: "p"}, 3, "p", "image security version 2 is below the floor 3"},
		{secversion.Info{Version: 0}, 0, "", ""},
		{secversion.Info{Version: 0}, 1, "", "version 0 is below the floor 1"},
		{secversion.Info{Version: 9, Product: "debug"}, 1, "p", `image is for product "debug", this system boots product "p"`},
		{secversion.Info{Version: 9}, 1, "p", `image is for product "", this system boots product "p"`},
		{secversion.Info{Version: 9, Product: "p"}, 1, "", `image is for product "p", this system boots product ""`},
	} {
		err := Check(tc.img, tc.floor, tc.product)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Check(%+v, %d, %q) = %v, want %q", tc.img, tc.floor, tc.product, err, tc.want)
		}
	}
}
