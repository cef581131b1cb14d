package measure

import (
	"context"
	"reflect"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/measure/eventlog"
)

// TestSwtpm measures into swtpm (libtpms), a TPM implementation independent
// of the simulator, the one the VM tests use, with SHA-1 allocated to no PCR:
// the Measurer must extend exactly the allocated banks.
func TestSwtpm(t *testing.T) {
	tpm := testutil.Swtpm(t, "sha256,sha384,sha512")
	ctx := context.Background()
	m := newTestMeasurer(t, tpm)
	if got, want := m.Banks(), []Alg{SHA256, SHA384, SHA512}; !reflect.DeepEqual(got, want) {
		t.Fatalf("swtpm banks for PCR 15 = %v, want %v (all banks: %v)", got, want, m.AllBanks())
	}
	evs := mustEvents(t, testImage(t, "root", []byte("policy")))
	if err := m.ExtendAll(ctx, evs); err != nil {
		t.Fatal(err)
	}
	want, err := Predict(evs, m.Banks())
	if err != nil {
		t.Fatal(err)
	}
	checkPCR(t, m, want)
	recs, err := eventlog.ParseFile(m.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(SortedAlgs(replayed[15]), m.Banks()) {
		t.Errorf("log has banks %v, want %v", SortedAlgs(replayed[15]), m.Banks())
	}
	checkPCR(t, m, replayed[15])
}
