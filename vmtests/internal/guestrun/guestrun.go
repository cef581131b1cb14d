// Package guestrun runs programs inside test VMs and names the outcome the
// way guests report it: the errno the kernel answered an exec or an open
// with is what the IPE and fs-verity tests compare (EACCES from IPE, EIO
// from overlayfs' verity=require, ENOKEY from fs-verity's keyring).
package guestrun

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Run executes prog without arguments and with an empty environment, and
// waits for it: the error is the exec's (an errno) or a non-zero exit.
func Run(prog string) error {
	pid, err := syscall.ForkExec(prog, []string{prog}, &syscall.ProcAttr{Env: []string{}})
	if err != nil {
		return err
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		return err
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return fmt.Errorf("%s ended with status %v", prog, ws)
	}
	return nil
}

// ErrName returns "OK" for nil, the name of the errno err wraps
// ("EACCES"), or else err's text.
func ErrName(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "OK"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	}
	return err.Error()
}
