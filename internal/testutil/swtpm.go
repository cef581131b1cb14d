package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// Swtpm starts swtpm (libtpms, a TPM 2.0 implementation independent of
// go-tpm-tools' simulator and the one the VM tests attach) with a fresh
// state whose PCR banks swtpm_setup allocates (e.g. "sha256,sha384"), and
// returns a connection to it. The test's cleanup stops it. Missing swtpm
// skips, or fails under Strict.
func Swtpm(t testing.TB, banks string) transport.TPMCloser {
	t.Helper()
	RequireTool(t, "swtpm")
	RequireTool(t, "swtpm_setup")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	Run(t, "swtpm_setup", "--tpm2", "--tpmstate", state, "--pcr-banks", banks)
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
	t.Cleanup(func() { tpm.Close() })
	return tpm
}
