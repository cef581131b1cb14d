package measure

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/measure/eventlog"
)

// TestSwtpm measures into swtpm (libtpms), a TPM implementation independent
// of the simulator, the one the VM tests use, with SHA-1 allocated to no PCR:
// the Measurer must extend exactly the allocated banks.
func TestSwtpm(t *testing.T) {
	testutil.RequireTool(t, "swtpm")
	testutil.RequireTool(t, "swtpm_setup")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	testutil.Run(t, "swtpm_setup", "--tpm2", "--tpmstate", state, "--pcr-banks", "sha256,sha384,sha512")
	sock := filepath.Join(dir, "tpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+filepath.Join(dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("swtpm did not create its socket within 10s")
		}
	}
	tpm, err := linuxudstpm.Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
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
