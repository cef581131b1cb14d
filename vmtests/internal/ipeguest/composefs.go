package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/mount"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// The composefs mode (vmtests/ipe_composefs_test.go): the disk holds
//
//	composefs/root.cfs, composefs/objects/      an image and its objects
//	composefs/signed.cfs, composefs/sobjects/   an image whose objects are
//	                                            enabled with builtin
//	                                            fs-verity signatures:
//	composefs/sigs/xx/yyyy.sig                  (fsverity sign output)
//	composefs/fsverity-cert.der                 their signer
//	composefs/other-cert.der                    a certificate added after the
//	                                            keyring is locked
//	composefs/digests.p7s                       policy: fsverity_digest rules
//	                                            generated from root.cfs
//	composefs/signature.p7s                     policy: fsverity_signature=TRUE
const (
	cfsDir      = "composefs"
	cfsMount    = "/cfs"  // root.cfs (the #! scripts name /cfs/bin/prog)
	signedMount = "/scfs" // signed.cfs
)

func composefsMode() {
	base := filepath.Join(diskMount, cfsDir)
	check("cfs-setup", func() (map[string]string, error) { return nil, cfsSetup(base) })
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
	}
	execAll := func() map[string]string {
		d := map[string]string{}
		for name, p := range progs {
			d[name] = errnoName(run(p))
		}
		return d
	}
	check("cfs-keyring-lock", func() (map[string]string, error) { return lockKeyring(base) })
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

func cfsSetup(base string) error {
	// Objects get fs-verity (overlay verity=require wants it).
	if err := enableTree(filepath.Join(base, "objects"), nil); err != nil {
		return err
	}
	der, err := os.ReadFile(filepath.Join(base, "fsverity-cert.der"))
	if err != nil {
		return err
	}
	ring, err := keyringID(".fs-verity")
	if err != nil {
		return err
	}
	if _, err := unix.AddKey("asymmetric", "", der, ring); err != nil {
		return fmt.Errorf("add the fs-verity signer to .fs-verity: %w", err)
	}
	if err := enableTree(filepath.Join(base, "sobjects"), func(rel string) ([]byte, error) {
		return os.ReadFile(filepath.Join(base, "sigs", rel+".sig"))
	}); err != nil {
		return err
	}
	for _, m := range []struct{ image, objects, meta, target string }{
		{"root.cfs", "objects", "/meta", cfsMount},
		{"signed.cfs", "sobjects", "/smeta", signedMount},
	} {
		for _, d := range []string{m.meta, m.target} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		if _, err := mount.EROFS(filepath.Join(base, m.image), m.meta); err != nil {
			return err
		}
		o := mount.Overlay{Metadata: m.meta, Objects: filepath.Join(base, m.objects)}
		if err := o.Mount(m.target); err != nil {
			return err
		}
	}
	return nil
}

// enableTree enables fs-verity on every file under dir, with the builtin
// signature sig returns for its path relative to dir, if sig is set.
func enableTree(dir string, sig func(rel string) ([]byte, error)) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var s []byte
		if sig != nil {
			rel, _ := filepath.Rel(dir, p)
			if s, err = sig(rel); err != nil {
				return err
			}
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return verity.Enable(f, verity.Params{}, s)
	})
}

// keyringID finds a keyring by name in /proc/keys (what keyctl's %:NAME
// does).
func keyringID(name string) (int, error) {
	f, err := os.Open("/proc/keys")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 9 && fields[7] == "keyring" && strings.TrimSuffix(fields[8], ":") == name {
			id, err := strconv.ParseUint(fields[0], 16, 32)
			return int(id), err
		}
	}
	return 0, fmt.Errorf("no keyring %s in /proc/keys", name)
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

func errnoName(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "OK"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// lockKeyring restricts the .fs-verity keyring to keys signed by the
// kernel's builtin keys (what an init would do once it has added its own
// signer, so that root cannot add another later) and reports whether adding
// another certificate is then refused.
func lockKeyring(base string) (map[string]string, error) {
	ring, err := keyringID(".fs-verity")
	if err != nil {
		return nil, err
	}
	d := map[string]string{}
	d["restrict"] = errnoName(unix.KeyctlRestrictKeyring(ring, "asymmetric", "builtin_trusted"))
	der, err := os.ReadFile(filepath.Join(base, "other-cert.der"))
	if err != nil {
		return d, err
	}
	_, err = unix.AddKey("asymmetric", "", der, ring)
	d["add-after-lock"] = errnoName(err)
	return d, nil
}
