package boot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"
)

// CheckInit checks, before anything is torn down, that init exists in
// newRoot, resolving symlinks inside newRoot (as the kernel will after the
// chroot), and is an executable regular file.
func CheckInit(newRoot, init string) error {
	_, err := resolveInit(newRoot, init)
	return err
}

// resolveInit is CheckInit that also returns the path init resolves to,
// relative to newRoot.
func resolveInit(newRoot, init string) (string, error) {
	fd, err := openInRoot(newRoot, init, unix.O_PATH)
	if err != nil {
		return "", fmt.Errorf("switch_root: init %s not found in the new root: %w", init, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("switch_root: init %s: %w", init, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", fmt.Errorf("switch_root: init %s is not a regular file", init)
	}
	if st.Mode&0o111 == 0 {
		return "", fmt.Errorf("switch_root: init %s is not executable (mode %o)", init, st.Mode&0o7777)
	}
	full, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", fmt.Errorf("switch_root: init %s: %w", init, err)
	}
	root, err := filepath.EvalSymlinks(newRoot)
	if err != nil {
		return "", fmt.Errorf("switch_root: %w", err)
	}
	rel, err := filepath.Rel(root, full)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("switch_root: init %s resolves to %s, outside the new root", init, full)
	}
	return rel, nil
}

// openInRoot opens p inside the directory root as if root were "/":
// absolute symlinks and ".." stay inside it, magic links are refused.
func openInRoot(root, p string, flags uint64) (int, error) {
	dir, err := os.Open(root)
	if err != nil {
		return -1, err
	}
	defer dir.Close()
	return unix.Openat2(int(dir.Fd()), strings.TrimPrefix(p, "/"), &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// moveTargets opens /dev, /proc, /sys and /run of newRoot, resolved inside
// newRoot: an image whose /run is a symlink to /somewhere gets /run moved
// to its own /somewhere, never to the initramfs' (the mount would follow
// the link from outside the new root).
func moveTargets(newRoot string) (map[string]int, error) {
	fds := map[string]int{}
	for _, dir := range earlyDirs {
		fd, err := openInRoot(newRoot, dir, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, fmt.Errorf("switch_root: %s in the new root (does the image have %s?): %w", dir, dir, err)
		}
		fds[dir] = fd
	}
	return fds, nil
}

// earlyDirs are the mounts handed over to the new root.
var earlyDirs = []string{"/dev", "/proc", "/sys", "/run"}

// ReadInit reads the first bytes of init in newRoot (symlinks resolved
// inside it), through the overlay: that opens its object, which fails when
// the object has no fs-verity or, in IPE's signature mode, a builtin
// signature from a key the .fs-verity keyring does not hold.
func ReadInit(newRoot, init string) error {
	fd, err := openInRoot(newRoot, init, unix.O_RDONLY|unix.O_NONBLOCK)
	if err == nil {
		var b [4]byte
		_, err = unix.Read(fd, b[:])
		unix.Close(fd)
	}
	if err != nil {
		return fmt.Errorf("switch_root: init %s cannot be read: %w (its object lacks fs-verity, or its builtin signature is by a key not in fsverity_certs; the kernel's fs-verity message above says which)", init, err)
	}
	return nil
}

// SwitchRoot makes newRoot the root and executes init in it as PID 1:
// it moves /dev, /proc, /sys and /run into newRoot (each target resolved
// inside newRoot), frees the initramfs (deleting its files, which live in
// RAM), chroots and execs. It returns only on failure. Call CheckInit
// first: after the initramfs is deleted there is no way back.
func SwitchRoot(newRoot, init string, args []string) error {
	targets, err := moveTargets(newRoot)
	if err != nil {
		return err
	}
	for _, dir := range earlyDirs {
		err := unix.MoveMount(unix.AT_FDCWD, dir, targets[dir], "", unix.MOVE_MOUNT_T_EMPTY_PATH)
		unix.Close(targets[dir])
		if err != nil {
			return fmt.Errorf("switch_root: move %s into %s: %w", dir, newRoot, err)
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
