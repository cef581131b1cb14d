// Command provision is the /init of a provisioning VM boot: the host kernel
// cannot enable fs-verity, so VM tests first boot this program to enable it
// on every regular file under composefs/ of the disk /dev/vda, as an
// installer would. Paths listed in composefs/noverity.list (relative to
// composefs/, one per line) are left alone: tests use them for objects that
// must lack fs-verity. It reports each image's measured digest as a marker
// line and powers off.
//
// If the initramfs holds object signers' certificates
// (layout.FsverityCertDir), it adds them to the .fs-verity keyring (and
// locks it, as the cfsroot init does) and enables every file that has a
// builtin signature beside it (objsig.Path) with that signature; other
// files (the images, whose .sig is for the init) are enabled without. A signed enable the kernel
// refuses (a signer outside the keyring, content that is not what was
// signed) is reported as a "provision-refused" marker and the file is left
// without fs-verity.
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs/kmod"
	"github.com/cfsroot/cfsroot/initramfs/layout"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/guest"
)

func main() {
	err := provision()
	guest.Check(os.Stdout, "provision", nil, err)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func provision() error {
	if err := boot.EarlyMounts(); err != nil {
		return err
	}
	if f, err := os.Open(layout.ModuleList); err == nil {
		entries, err := kmod.ParseList(f)
		f.Close()
		if err != nil {
			return err
		}
		if err := kmod.Load(entries, nil); err != nil {
			return err
		}
	}
	dev, err := waitForDisk()
	if err != nil {
		return err
	}
	if err := os.MkdirAll("/mnt", 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, "/mnt", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	defer unix.Unmount("/mnt", 0)
	skip := map[string]bool{"/mnt/composefs/noverity.list": true}
	if b, err := os.ReadFile("/mnt/composefs/noverity.list"); err == nil {
		for _, l := range strings.Fields(string(b)) {
			skip[filepath.Join("/mnt/composefs", l)] = true
		}
	}
	signed := false
	if _, err := os.Stat(layout.FsverityCertDir); err == nil {
		ts, err := signature.LoadTrustStore(layout.FsverityCertDir)
		if err != nil {
			return err
		}
		if err := objsig.TrustSigners(ts.Certificates()); err != nil {
			return err
		}
		signed = true
	}
	n, refused := 0, 0
	err = filepath.WalkDir("/mnt/composefs", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || skip[p] || (signed && strings.HasSuffix(p, objsig.Suffix)) {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		// Objects only: an image's NAME.cfs.sig is the init's, not a builtin signature.
		sig, sigErr := os.ReadFile(objsig.Path(p))
		if signed && sigErr == nil && strings.HasPrefix(p, "/mnt/composefs/objects/") {
			if err := verity.EnableSigned(f, sig); err != nil {
				var errno unix.Errno
				errors.As(err, &errno)
				guest.Check(os.Stdout, "provision-refused", map[string]string{"path": strings.TrimPrefix(p, "/mnt/"), "errno": unix.ErrnoName(errno)}, err)
				refused++
				return nil
			}
		} else if err := verity.Enable(f, verity.Params{}, nil); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		d2, err := verity.Measure(f)
		if err != nil {
			return err
		}
		n++
		if strings.Contains(p, "/images/") {
			guest.Check(os.Stdout, "provisioned", map[string]string{"path": strings.TrimPrefix(p, "/mnt/"), "digest": d2.String()}, nil)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("provision: fs-verity enabled on %d files (signed: %v), %d refused\n", n, signed, refused)
	return nil
}

func waitForDisk() (string, error) {
	sel := boot.DiskSelector{Kind: "PATH", Value: "/dev/vda"}
	d, err := boot.FindDisk(context.Background(), sel, boot.DefaultDiskTimeout)
	return d.Path, err
}
