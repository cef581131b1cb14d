package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/mount"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/internal/guestrun"
)

// The composefs mode (vmtests/ipe_composefs_test.go): the disk holds
//
//	composefs/root.cfs, composefs/objects/      an image and its objects
//	composefs/signed.cfs, composefs/sobjects/   an image whose objects carry
//	                                            builtin signatures beside
//	                                            them (cfsroot sign-objects)
//	composefs/mixed.cfs, composefs/mobjects/    an image with one object
//	                                            signed, one enabled here
//	                                            without its signature first,
//	                                            one signed by a stranger
//	composefs/fsverity-cert.pem                 the object signer
//	composefs/other-cert.der                    a certificate added after the
//	                                            keyring is locked
//	composefs/digests.p7s                       policy: fsverity_digest rules
//	                                            generated from root.cfs
//	composefs/signature.p7s                     policy: fsverity_signature=TRUE
//
// and the initramfs holds the host tool as /bin/cfsroot, which enables the
// objects (enable-objects) and checks them (check --signers) as an
// installer would.
const (
	cfsDir      = "composefs"
	cfsMount    = "/cfs"  // root.cfs (the #! scripts name /cfs/bin/prog)
	signedMount = "/scfs" // signed.cfs
	mixedMount  = "/mcfs" // mixed.cfs
	cfsrootTool = "/bin/cfsroot"
	// mixedUnsigned is the program of mixed.cfs whose object is enabled
	// without a signature before enable-objects runs.
	mixedUnsigned = "bin/unsigned"
)

func composefsMode() {
	base := filepath.Join(diskMount, cfsDir)
	check("cfs-setup", func() (map[string]string, error) { return cfsSetup(base) })
	if err := unix.Mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777"); err != nil {
		fmt.Fprintf(console, "ipeguest: mount /tmp: %v\n", err)
	}
	prog := filepath.Join(cfsMount, "bin/prog")
	for _, c := range []struct{ name, src, dst string }{
		{"tmpfs", prog, "/tmp/prog"},
		{"ext4", prog, filepath.Join(diskMount, "prog-copy")},
	} {
		if err := copyFile(c.src, c.dst); err != nil {
			fmt.Fprintf(console, "ipeguest: copy to %s: %v\n", c.name, err)
		}
	}
	progs := map[string]string{
		"image-elf":          prog,
		"image-script":       filepath.Join(cfsMount, "bin/script"),
		"image-small-script": filepath.Join(cfsMount, "bin/small"),
		"tmpfs-copy":         "/tmp/prog",
		"ext4-copy":          filepath.Join(diskMount, "prog-copy"),
		"signed-image-elf":   filepath.Join(signedMount, "bin/sprog"),
		"mixed-signed":       filepath.Join(mixedMount, "bin/good"),
		"mixed-unsigned":     filepath.Join(mixedMount, mixedUnsigned),
		"mixed-stranger":     filepath.Join(mixedMount, "bin/stranger"),
	}
	execAll := func() map[string]string {
		d := map[string]string{}
		for name, p := range progs {
			d[name] = guestrun.ErrName(guestrun.Run(p))
		}
		return d
	}
	check("cfs-keyring-lock", func() (map[string]string, error) { return addAfterLock(base) })
	check("cfs-no-policy", func() (map[string]string, error) { return execAll(), nil })
	for _, policy := range []string{"digests", "signature"} {
		check("cfs-"+policy, func() (map[string]string, error) {
			signed, err := os.ReadFile(filepath.Join(base, policy+".p7s"))
			if err != nil {
				return nil, err
			}
			if _, err := ipe.Load(ipe.DefaultDir, signed, true); err != nil {
				return nil, err
			}
			return execAll(), nil
		})
	}
}

func cfsSetup(base string) (map[string]string, error) {
	// Objects get fs-verity (overlay verity=require wants it).
	if err := enableTree(filepath.Join(base, "objects")); err != nil {
		return nil, err
	}
	certs, err := signature.LoadCertificates(filepath.Join(base, "fsverity-cert.pem"))
	if err != nil {
		return nil, err
	}
	// What the init does: trust the signer, then lock the keyring.
	if err := objsig.TrustSigners(certs); err != nil {
		return nil, err
	}
	// An object enabled without its signature (by an installer of the
	// digest mode, say) before the signed install.
	img, err := reader.Open(filepath.Join(base, "mixed.cfs"))
	if err != nil {
		return nil, err
	}
	e, err := img.Lookup("/" + mixedUnsigned)
	img.Close()
	if err != nil {
		return nil, err
	}
	if err := enableTree(filepath.Join(base, "mobjects", e.Payload)); err != nil {
		return nil, err
	}
	d := map[string]string{}
	tool := func(name string, args ...string) {
		out, err := exec.Command(cfsrootTool, args...).CombinedOutput()
		d[name] = string(out)
		d[name+"-exit"] = guestrun.ErrName(err)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			d[name+"-exit"] = strconv.Itoa(ee.ExitCode())
		}
	}
	signedStore, mixedStore := filepath.Join(base, "sobjects"), filepath.Join(base, "mobjects")
	certPath := filepath.Join(base, "fsverity-cert.pem")
	tool("enable-signed", "enable-objects", "--store", signedStore, filepath.Join(base, "signed.cfs"))
	tool("enable-signed-again", "enable-objects", "--store", signedStore, filepath.Join(base, "signed.cfs"))
	tool("check-signed", "check", "--store", signedStore, "--signers", certPath, filepath.Join(base, "signed.cfs"))
	tool("enable-mixed", "enable-objects", "--store", mixedStore, filepath.Join(base, "mixed.cfs"))
	tool("check-mixed", "check", "--store", mixedStore, "--signers", certPath, filepath.Join(base, "mixed.cfs"))
	tool("enable-root", "enable-objects", "--unsigned", "--store", filepath.Join(base, "objects"), filepath.Join(base, "root.cfs"))

	for _, m := range []struct{ image, objects, meta, target string }{
		{"root.cfs", "objects", "/meta", cfsMount},
		{"signed.cfs", "sobjects", "/smeta", signedMount},
		{"mixed.cfs", "mobjects", "/mmeta", mixedMount},
	} {
		for _, dir := range []string{m.meta, m.target} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return d, err
			}
		}
		if _, err := mount.EROFS(filepath.Join(base, m.image), m.meta); err != nil {
			return d, err
		}
		o := mount.Overlay{Metadata: m.meta, Objects: filepath.Join(base, m.objects)}
		if err := o.Mount(m.target); err != nil {
			return d, err
		}
	}
	return d, nil
}

// enableTree enables fs-verity without a signature on every file under
// root (or on root, a file).
func enableTree(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return verity.Enable(f, verity.Params{}, nil)
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// addAfterLock reports whether root can add a certificate to the
// .fs-verity keyring after objsig.TrustSigners locked it.
func addAfterLock(base string) (map[string]string, error) {
	ring, err := objsig.FindKeyring(objsig.KeyringName)
	if err != nil {
		return nil, err
	}
	der, err := os.ReadFile(filepath.Join(base, "other-cert.der"))
	if err != nil {
		return nil, err
	}
	_, err = unix.AddKey("asymmetric", "", der, ring)
	return map[string]string{"add-after-lock": guestrun.ErrName(err)}, nil
}
