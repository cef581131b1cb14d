package boot

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Mount points the init uses. /run is handed to the new root (systemd's
// initrd interface), so everything that must outlive the switch lives there.
const (
	RunDir     = "/run/cfsroot"
	DiskDir    = RunDir + "/disk"  // backing filesystem
	ImageDir   = RunDir + "/image" // EROFS metadata image
	UpperDir   = RunDir + "/upper" // tmpfs or data filesystem for a writable root
	StatusPath = RunDir + "/status.json"
	NewRoot    = "/sysroot"
)

// EarlyMounts mounts what PID 1 needs before anything else: /proc, /sys,
// /dev (devtmpfs), /run (tmpfs, mode 755, nodev, nosuid, as systemd's initrd
// interface expects) and securityfs. Already mounted ones are kept.
func EarlyMounts() error {
	for _, m := range []struct {
		src, dir, fstype, data string
		flags                  uintptr
	}{
		{"proc", "/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID},
		{"tmpfs", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
		{"securityfs", "/sys/kernel/security", "securityfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return fmt.Errorf("early mounts: %w", err)
		}
		err := unix.Mount(m.src, m.dir, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("early mounts: mount %s on %s: %w", m.fstype, m.dir, err)
		}
	}
	return nil
}
