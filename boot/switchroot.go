package boot

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"
)

// CheckInit checks, before anything is torn down, that init exists in
// newRoot, resolving symlinks inside newRoot (as the kernel will after the
// chroot), and is an executable regular file.
func CheckInit(newRoot, init string) error {
	root, err := os.Open(newRoot)
	if err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	defer root.Close()
	fd, err := unix.Openat2(int(root.Fd()), init[1:], &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return fmt.Errorf("switch_root: init %s not found in the new root: %w", init, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("switch_root: init %s: %w", init, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("switch_root: init %s is not a regular file", init)
	}
	if st.Mode&0o111 == 0 {
		return fmt.Errorf("switch_root: init %s is not executable (mode %o)", init, st.Mode&0o7777)
	}
	return nil
}

// SwitchRoot makes newRoot the root and executes init in it as PID 1:
// it moves /dev, /proc, /sys and /run into newRoot, frees the initramfs
// (deleting its files, which live in RAM), chroots and execs. It returns
// only on failure. Call CheckInit first: after the initramfs is deleted
// there is no way back.
func SwitchRoot(newRoot, init string, args []string) error {
	for _, dir := range []string{"/dev", "/proc", "/sys", "/run"} {
		target := filepath.Join(newRoot, dir)
		if err := mount.MoveMount(dir, target); err != nil {
			return fmt.Errorf("switch_root: move %s to %s (does the image have %s?): %w", dir, target, dir, err)
		}
	}
	oldRoot, err := os.Open("/")
	if err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	defer oldRoot.Close()
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	if err := mount.MoveMount(newRoot, "/"); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch_root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	// Free the initramfs' memory. Errors only cost memory, never safety.
	var st unix.Stat_t
	if err := unix.Fstat(int(oldRoot.Fd()), &st); err == nil {
		deleteTree(int(oldRoot.Fd()), st.Dev)
	}
	argv := append([]string{init}, args...)
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux"}
	err = unix.Exec(init, argv, env)
	return fmt.Errorf("switch_root: exec %s: %w", init, err)
}

// deleteTree removes everything below the directory dirFd that is on
// device dev, without crossing into other filesystems.
func deleteTree(dirFd int, dev uint64) {
	dup, err := unix.Dup(dirFd) // ReadDir closes nothing of dirFd this way
	if err != nil {
		return
	}
	dir := os.NewFile(uintptr(dup), "")
	entries, err := dir.ReadDir(-1)
	dir.Close()
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		var st unix.Stat_t
		if err := unix.Fstatat(dirFd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Unlinkat(dirFd, name, 0)
			continue
		}
		fd, err := unix.Openat(dirFd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		deleteTree(fd, dev)
		unix.Close(fd)
		unix.Unlinkat(dirFd, name, unix.AT_REMOVEDIR)
	}
}
