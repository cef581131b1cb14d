// Package mount mounts a composefs image the way cfsroot boots it: the
// EROFS metadata image straight from its file (file-backed EROFS, kernel
// 6.12 and later; a read-only loop device on older kernels), then overlayfs
// with the image as the metadata layer and the object store as a data-only
// layer, with verity=require so the kernel checks every object's fs-verity
// digest against the one recorded in the image.
package mount

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// EROFS mounts the EROFS image file image read-only at target. It returns
// the loop device it had to use, if any ("" for a file-backed mount).
func EROFS(image, target string) (loopDev string, err error) {
	err = unix.Mount(image, target, "erofs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, "")
	if err == nil {
		return "", nil
	}
	if !errors.Is(err, unix.ENOTBLK) {
		return "", fmt.Errorf("mount erofs %s on %s: %w%s", image, target, err, erofsHint(err))
	}
	// The kernel cannot mount EROFS from this file (before 6.12, without
	// EROFS_FS_BACKED_BY_FILE, or a file on tmpfs, which lacks the page
	// cache operations EROFS reads through): use a read-only loop device.
	loop, err := attachLoop(image)
	if err != nil {
		return "", fmt.Errorf("mount erofs %s: file-backed mount not supported and %w", image, err)
	}
	// The loop device clears itself (LO_FLAGS_AUTOCLEAR) when its last
	// user goes: keep it open until the mount holds it.
	defer loop.Close()
	loopDev = loop.Name()
	if err := unix.Mount(loopDev, target, "erofs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return "", fmt.Errorf("mount erofs %s (via %s) on %s: %w%s", image, loopDev, target, err, erofsHint(err))
	}
	return loopDev, nil
}

func erofsHint(err error) string {
	switch {
	case errors.Is(err, unix.ENODEV):
		return " (the kernel has no erofs: load the erofs module)"
	case errors.Is(err, unix.EINVAL):
		return " (not an EROFS image, or a feature this kernel lacks)"
	}
	return ""
}

// attachLoop binds image to a free loop device, read-only and cleared
// automatically once unmounted and closed, and returns the open device.
func attachLoop(image string) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("no loop devices (load the loop module): %w", err)
	}
	defer ctl.Close()
	f, err := os.Open(image)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for range 10 { // another process may take the free device first
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("get free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], image)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if err == nil {
			return lf, nil
		}
		lf.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("configure %s: %w", dev, err)
		}
	}
	return nil, errors.New("no free loop device after 10 tries")
}

// Overlay describes the composefs overlay mount.
type Overlay struct {
	// Metadata is the mounted EROFS image.
	Metadata string
	// Objects is the object store directory (the data-only layer).
	Objects string
	// Upper and Work, if set, make the root writable (both on the same
	// filesystem; Work empty).
	Upper, Work string
	// Verity is the overlay verity= mode: "require" (cfsroot's default:
	// every object must have fs-verity with the digest the image records),
	// "on" or "off". Only tests should use anything but "require".
	Verity string
}

// Options returns the overlay mount data string.
func (o Overlay) Options() (string, error) {
	for _, p := range []string{o.Metadata, o.Objects, o.Upper, o.Work} {
		if strings.ContainsAny(p, ",:\\") {
			return "", fmt.Errorf("overlay: path %q contains , : or \\, which overlay options cannot carry", p)
		}
	}
	verity := o.Verity
	if verity == "" {
		verity = "require"
	}
	opts := []string{
		"lowerdir=" + o.Metadata + "::" + o.Objects,
		"metacopy=on",
		"redirect_dir=on",
		"verity=" + verity,
	}
	if o.Upper != "" {
		opts = append(opts, "upperdir="+o.Upper, "workdir="+o.Work)
	}
	return strings.Join(opts, ","), nil
}

// Mount mounts the overlay at target, read-only unless it has an upper layer.
func (o Overlay) Mount(target string) error {
	opts, err := o.Options()
	if err != nil {
		return err
	}
	var flags uintptr = unix.MS_NODEV
	if o.Upper == "" {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("composefs", target, "overlay", flags, opts); err != nil {
		hint := ""
		switch {
		case errors.Is(err, unix.ENODEV):
			hint = " (the kernel has no overlayfs: load the overlay module)"
		case errors.Is(err, unix.EINVAL):
			hint = " (data-only layers need Linux 6.5 and verity= 6.6; see `cfsroot kernel-check`)"
		}
		return fmt.Errorf("mount overlay on %s (%s): %w%s", target, opts, err, hint)
	}
	return nil
}
