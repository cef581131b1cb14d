package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// swtpm is a software TPM 2.0 serving one VM over a control socket.
type swtpm struct {
	cmd  *exec.Cmd
	sock string
	log  string
	done chan struct{}
	err  error
}

// startSWTPM starts swtpm with its state in stateDir and its socket in a
// fresh short directory (unix socket paths are limited to 108 bytes, and
// test temporary directories can be longer). swtpm's options are comma
// separated, so stateDir is reached through a symlink in that directory:
// subtest names may put commas into test paths.
func startSWTPM(stateDir string) (*swtpm, error) {
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		return nil, fmt.Errorf("vm: swtpm: %w", err)
	}
	state := filepath.Join(sockDir, "state")
	if err := os.Symlink(stateDir, state); err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("vm: swtpm: %w", err)
	}
	s := &swtpm{
		sock: filepath.Join(sockDir, "ctrl.sock"),
		log:  filepath.Join(stateDir, "swtpm.log"),
		done: make(chan struct{}),
	}
	s.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+state,
		"--ctrl", "type=unixio,path="+s.sock,
		"--log", "file="+filepath.Join(state, "swtpm.log")+",level=2")
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("vm: starting swtpm: %w", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		os.RemoveAll(sockDir)
		close(s.done)
	}()
	// QEMU fails if the socket is not there yet.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(s.sock); err == nil {
			return s, nil
		}
		select {
		case <-s.done:
			logText, _ := os.ReadFile(s.log)
			return nil, fmt.Errorf("vm: swtpm exited before listening: %v\n%s", s.err, logText)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop(0)
			return nil, fmt.Errorf("vm: swtpm did not create %s within 10s", s.sock)
		}
	}
}

// qemuArgs attaches the TPM to a VM as a TIS device (/dev/tpm0 and
// /dev/tpmrm0 in the guest).
func (s *swtpm) qemuArgs() []string {
	return []string{
		"-chardev", "socket,id=chrtpm,path=" + s.sock,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0",
	}
}

// stop waits up to grace for swtpm to exit on its own (it does when QEMU
// shuts the TPM down, but not when QEMU was killed), then asks it to exit
// and kills it if it does not.
func (s *swtpm) stop(grace time.Duration) {
	select {
	case <-s.done:
		return
	case <-time.After(grace):
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return
	case <-time.After(2 * time.Second):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}
