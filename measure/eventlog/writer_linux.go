package eventlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Writer is the log opened and exclusively locked for one measurement.
// Open it before extending the PCR, Append the record after, then Close.
type Writer struct {
	f    *os.File
	path string
}

// OpenWriter creates (0600) or opens the log at path, takes an exclusive
// flock on it and marks it pending (sticky bit), exactly as systemd does
// before it extends a PCR. It refuses a log that is not a regular file or
// that an earlier writer left pending (ErrAborted).
func OpenWriter(path string) (*Writer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	fd, err := unix.Open(path, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("event log %s: open: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fail := func(format string, a ...any) (*Writer, error) {
		f.Close()
		return nil, fmt.Errorf("event log %s: "+format, append([]any{path}, a...)...)
	}
	if err := flockRetry(fd, unix.LOCK_EX); err != nil {
		return fail("lock: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("stat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail("not a regular file")
	}
	if st.Mode&unix.S_ISVTX != 0 {
		return fail("%w", ErrAborted)
	}
	if err := unix.Fchmod(fd, 0o600|unix.S_ISVTX); err != nil {
		return fail("mark pending: %w", err)
	}
	return &Writer{f: f, path: path}, nil
}

// Append writes rec at the end of the log, syncs it and clears the pending
// mark. Call it once, after the PCR was extended.
func (w *Writer) Append(rec Record) error {
	b, err := rec.Encode()
	if err != nil {
		return fmt.Errorf("event log %s: encode: %w", w.path, err)
	}
	if _, err := w.f.Seek(0, 2); err != nil {
		return fmt.Errorf("event log %s: seek: %w", w.path, err)
	}
	if _, err := w.f.Write(b); err != nil {
		return fmt.Errorf("event log %s: write: %w", w.path, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("event log %s: sync: %w", w.path, err)
	}
	return w.Cancel()
}

// Cancel clears the pending mark without writing: for when the PCR is known
// not to have been extended (the TPM refused the command).
func (w *Writer) Cancel() error {
	if err := w.f.Chmod(0o600); err != nil {
		return fmt.Errorf("event log %s: clear pending mark: %w", w.path, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("event log %s: sync: %w", w.path, err)
	}
	return nil
}

// Close releases the lock. A Writer closed without Append or Cancel leaves
// the log marked pending: nobody knows whether the PCR was extended.
func (w *Writer) Close() error { return w.f.Close() }

func flockRetry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func lockShared(f *os.File) error { return flockRetry(int(f.Fd()), unix.LOCK_SH) }

// BootID returns the kernel's boot ID as systemd writes it in "bootId": 32
// lowercase hex digits, no dashes. It returns "" when /proc is not mounted.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	id := strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")
	if len(id) != 32 {
		return ""
	}
	return strings.ToLower(id)
}

// BootTime returns CLOCK_BOOTTIME in microseconds, systemd's "timestamp".
func BootTime() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}
