package boot

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/mount"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// Env is everything the boot sequence touches outside its own memory: the
// directory its fixed paths live under, the disks, the mounts, the TPM, IPE
// and the kernel's fs-verity. The init uses SystemEnv; tests inject a
// temporary directory, a recording Mounter, the TPM simulator and a
// software digest, so that every branch of Run can run on the host.
type Env struct {
	// Root is the directory under which the fixed paths (RunDir, NewRoot,
	// StatusPath, the event log) and the config's initramfs paths
	// (trusted_certs, ipe_policy) are found: "/" in the init.
	Root string
	// FindDisk waits for the block device sel names (FindDisk).
	FindDisk func(ctx context.Context, sel DiskSelector, timeout time.Duration) (BlockDevice, error)
	// Mounter mounts the backing disk, the upper layer and the image.
	Mounter Mounter
	// OpenTPM opens the TPM to measure into (measure.Open).
	OpenTPM func(ctx context.Context) (*measure.Measurer, error)
	// IPEDir is IPE's securityfs directory (ipe.DefaultDir).
	IPEDir string
	// Digest returns the fs-verity digest the kernel holds for an open file
	// (verity.Measure); its errors satisfy verity.IsNotSupported or wrap
	// verity.ErrNotEnabled when the file has none.
	Digest func(f *os.File) (verity.Digest, error)
	// EnableVerity enables fs-verity on a file opened read-only
	// (verity.Enable with the default parameters and sig, nil for none);
	// used by provision_verity.
	EnableVerity func(f *os.File, sig []byte) error
	// TrustFsveritySigners adds certificates to the kernel's .fs-verity
	// keyring and locks it (objsig.TrustSigners); used with fsverity_certs.
	TrustFsveritySigners func(certs []*x509.Certificate) error
}

// Mounter is the mount(2) calls the boot makes.
type Mounter interface {
	// Mount mounts source on target (the backing disk, the upper layer's
	// disk or tmpfs, bind mounts) as mount(2) does.
	Mount(source, target, fstype string, flags uintptr, data string) error
	// Unmount detaches target (undoing a mount when a later step fails).
	Unmount(target string) error
	// EROFS mounts the EROFS image file read-only at target and returns the
	// loop device it had to use, if any (mount.EROFS).
	EROFS(image, target string) (loopDev string, err error)
	// Overlay mounts the composefs overlay at target (mount.Overlay.Mount).
	Overlay(o mount.Overlay, target string) error
}

// SystemEnv is the real environment of the init: the root filesystem, the
// kernel's block devices, mounts, TPM (/dev/tpmrm0, /dev/tpm0), IPE and
// fs-verity.
func SystemEnv() *Env {
	return &Env{
		Root:     "/",
		FindDisk: FindDisk,
		Mounter:  SystemMounter{},
		OpenTPM:  func(ctx context.Context) (*measure.Measurer, error) { return measure.Open(ctx, "") },
		IPEDir:   ipe.DefaultDir,
		Digest:   verity.Measure,
		EnableVerity: func(f *os.File, sig []byte) error {
			return verity.Enable(f, verity.Params{}, sig)
		},
		TrustFsveritySigners: objsig.TrustSigners,
	}
}

// SystemMounter is the kernel's mount(2).
type SystemMounter struct{}

func (SystemMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

func (SystemMounter) Unmount(target string) error { return unix.Unmount(target, unix.MNT_DETACH) }

func (SystemMounter) EROFS(image, target string) (string, error) { return mount.EROFS(image, target) }

func (SystemMounter) Overlay(o mount.Overlay, target string) error { return o.Mount(target) }

// path returns the fixed path p (absolute, as the init sees it) under the
// environment's root.
func (e *Env) path(p string) string {
	if e.Root == "" || e.Root == "/" {
		return p
	}
	return filepath.Join(e.Root, p)
}
