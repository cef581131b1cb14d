package rollback

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cfsroot/cfsroot/measure"
)

// TestClearedTPM: TPM2_Clear (with the lockout or platform authorization,
// or from firmware setup) deletes the owner's NV indexes, so the counter is
// missing afterwards: rollback_nv "required" then refuses to boot, and
// "optional" boots on the config's min_version alone. A counter defined
// again after the clear still does not start lower than the old one
// (simulator and swtpm).
func TestClearedTPM(t *testing.T) {
	t.Run("simulator", func(t *testing.T) {
		m, tpm := openSim(t)
		testClearedTPM(t, m, tpm)
	})
	t.Run("swtpm", func(t *testing.T) {
		m, tpm := openSwtpm(t)
		testClearedTPM(t, m, tpm)
	})
}

func testClearedTPM(t *testing.T, m *measure.Measurer, tpm transport.TPM) {
	ctx := context.Background()
	v0, _, err := Provision(ctx, m, DefaultIndex, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Raise(ctx, m, DefaultIndex, v0+4); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.Clear{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)}}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(ctx, m, DefaultIndex); !errors.Is(err, ErrMissing) {
		t.Fatalf("Read after TPM2_Clear: %v, want ErrMissing", err)
	}
	v, _, err := Provision(ctx, m, DefaultIndex, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counter before TPM2_Clear %d, defined again after it %d", v0+4, v)
	if v < v0+4 {
		t.Errorf("after TPM2_Clear a new counter starts at %d, below the old %d", v, v0+4)
	}
}
