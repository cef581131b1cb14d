package main

import (
	"bufio"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/atomicfile"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

func init() {
	register(&command{
		name: "sign-objects",
		args: "--key KEY.pem --cert CERT.pem --store DIR [--threads N] IMAGE...",
		summary: "write the builtin fs-verity signature of every object the composefs IMAGEs reference beside it " +
			"(DIR/ab/cdef….sig, as `fsverity sign` writes it), for IPE's fsverity_signature=TRUE",
		run:  runSignObjects,
		help: signObjectsHelp,
	})
	register(&command{
		name: "enable-objects",
		args: "--store DIR [--trusted CERT] [--unsigned] [--threads N] IMAGE...",
		summary: "on the target, enable fs-verity on the composefs IMAGEs and every object they reference, " +
			"each object with its builtin signature (DIR/ab/cdef….sig); objects enabled otherwise are reported",
		run:  runEnableObjects,
		help: enableObjectsHelp,
	})
}

const signObjectsHelp = `The digest signed is the one the image records for the object (the object's
content is not read). A .sig that already holds a valid signature by CERT of
that digest is kept (so signing again after adding an image only signs the new
objects); any other is replaced. Executables of 64 bytes or less stored inline
in an image have no object and cannot be signed; they are named in a warning
(build with cfsroot mkimage --external-exec). Signature files are written
through a temporary file and a rename, and the store is synced at the end.`

const enableObjectsHelp = `Run it on the target (or an installer) with the disk mounted read-write, as
root: the kernel checks each signature against the .fs-verity keyring, so the
signer's certificate must be in it (the cfsroot init adds those named by its
config's fsverity_certs). fs-verity can be enabled only once: an object already
enabled with its .sig is counted as done; one enabled without a signature or
with another is reported (and, with --trusted, accepted when its signature is
by a certificate in CERT) and must be deleted and copied again to be signed.
The images themselves are enabled without a signature (the init checks their
.sig itself). --unsigned enables everything without signatures (for the
fsverity_digest policy mode). Exit status 1 if any object has a problem.`

func runSignObjects(args []string, stdout, stderr io.Writer) error {
	c := commands["sign-objects"]
	flags := newFlagSet(c, stderr)
	keyPath := flags.String("key", "", "PEM private key (RSA 2048-4096 bits, or ECDSA P-256/P-384)")
	certPath := flags.String("cert", "", "PEM or DER certificate of the key; the target's init must add it to the .fs-verity keyring")
	store := flags.String("store", "", "object store `DIR` (the directory holding ab/cdef… objects, or a composefs repository holding objects/)")
	threads := flags.Int("threads", 0, "objects signed at once (default: the number of CPUs)")
	images, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	switch {
	case *keyPath == "" || *certPath == "":
		return usagef("sign-objects: --key and --cert are required")
	case *store == "":
		return usagef("sign-objects: --store DIR is required")
	case len(images) == 0:
		return usagef("sign-objects: no IMAGE given")
	}
	key, err := signature.LoadKey(*keyPath)
	if err != nil {
		return fmt.Errorf("sign-objects: %w", err)
	}
	cert, err := signature.LoadCertificate(*certPath)
	if err != nil {
		return fmt.Errorf("sign-objects: %w", err)
	}
	if err := signature.CheckKey(key, cert); err != nil {
		return fmt.Errorf("sign-objects: %w", err)
	}
	dir, err := storeDir(*store)
	if err != nil {
		return fmt.Errorf("sign-objects: %w", err)
	}
	list, problems, _, err := imageObjects(images)
	if err != nil {
		return fmt.Errorf("sign-objects: %w", err)
	}
	if err := warnInlineExecutables(images, stderr); err != nil {
		return fmt.Errorf("sign-objects: %w", err)
	}

	ts := signature.NewTrustStore(cert)
	results := make([]string, len(list))
	var mu sync.Mutex
	signed, kept := 0, 0
	forEach(len(list), *threads, func(i int) {
		o := list[i]
		did, err := signObject(dir, o, key, cert, ts)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			results[i] = fmt.Sprintf("%s: %v (used by %s)", o.path, err, o.user)
		case did:
			signed++
		default:
			kept++
		}
	})
	if signed > 0 {
		if err := atomicfile.SyncFS(dir); err != nil {
			return fmt.Errorf("sign-objects: %w", err)
		}
	}
	bw := bufio.NewWriter(stdout)
	failed := writeReport(bw, problems, results)
	fmt.Fprintf(bw, "%d objects: %d signed, %d already signed by %s, %d failed\n", len(list), signed, kept, cert.Subject, failed)
	if err := bw.Flush(); err != nil {
		return err
	}
	if n := failed + len(problems); n > 0 {
		return fmt.Errorf("sign-objects: %d problem(s) in store %s", n, *store)
	}
	return nil
}

// signObject writes o's signature file unless a valid one by cert is there,
// and reports whether it wrote one.
func signObject(dir string, o *object, key crypto.Signer, cert *x509.Certificate, ts *signature.TrustStore) (bool, error) {
	if o.digest.Sum == nil {
		return false, errors.New("the image records no fs-verity digest for it (build the image with digests)")
	}
	p := filepath.Join(dir, o.path)
	st, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, errors.New("object missing from the store")
	case err != nil:
		return false, err
	case !st.Mode().IsRegular():
		return false, fmt.Errorf("not a regular file (%v)", st.Mode().Type())
	case uint64(st.Size()) != o.size:
		return false, fmt.Errorf("%d bytes, the image expects %d", st.Size(), o.size)
	}
	sigPath := objsig.Path(p)
	if old, err := os.ReadFile(sigPath); err == nil {
		if _, err := signature.Verify(old, o.digest, ts); err == nil {
			return false, nil
		}
	}
	sig, err := signature.SignDigest(o.digest, key, cert)
	if err != nil {
		return false, err
	}
	return true, writeSigFile(sigPath, sig)
}

// writeSigFile writes a signature file through a temporary file and a
// rename, so that a reader never sees half a signature. It does not sync:
// the caller syncs the filesystem once at the end (syncFS), and a signature
// lost to a crash before that is made again by the next run.
func writeSigFile(path string, sig []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-sig")
	if err != nil {
		return err
	}
	_, err = tmp.Write(sig)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// warnInlineExecutables names the executables the images store inline: they
// have no object, so no builtin signature, and IPE's signature rule denies them.
func warnInlineExecutables(images []string, stderr io.Writer) error {
	var inline []string
	for _, path := range images {
		img, err := reader.Open(path)
		if err != nil {
			return err
		}
		g, err := ipe.Generate(img, ipe.GenerateOptions{Name: "check", Version: "0.0.0", Files: ipe.AllFiles})
		img.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, p := range g.InlineExecutables {
			inline = append(inline, path+":"+p)
		}
	}
	sort.Strings(inline)
	warnPaths(stderr, inline, "executables are stored inline in the image (no object, so no signature; IPE's fsverity_signature rule will deny them): rebuild the image with `cfsroot mkimage --external-exec`")
	return nil
}

func runEnableObjects(args []string, stdout, stderr io.Writer) error {
	c := commands["enable-objects"]
	flags := newFlagSet(c, stderr)
	store := flags.String("store", "", "object store `DIR` (the directory holding ab/cdef… objects, or a composefs repository holding objects/)")
	trustedPath := flags.String("trusted", "", "PEM file or directory of certificates: an object already enabled with another signature by one of them is accepted")
	unsigned := flags.Bool("unsigned", false, "enable fs-verity without builtin signatures (for a fsverity_digest policy, or none)")
	threads := flags.Int("threads", 0, "objects enabled at once (default: the number of CPUs)")
	images, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	switch {
	case *store == "":
		return usagef("enable-objects: --store DIR is required")
	case len(images) == 0:
		return usagef("enable-objects: no IMAGE given")
	case *unsigned && *trustedPath != "":
		return usagef("enable-objects: --trusted has no use with --unsigned")
	}
	ts, err := optionalTrustStore(*trustedPath)
	if err != nil {
		return fmt.Errorf("enable-objects: %w", err)
	}
	dir, err := storeDir(*store)
	if err != nil {
		return fmt.Errorf("enable-objects: %w", err)
	}
	for _, img := range images {
		if err := enableUnsigned(img, verity.Digest{}); err != nil {
			return fmt.Errorf("enable-objects: image %w", err)
		}
	}
	list, problems, _, err := imageObjects(images)
	if err != nil {
		return fmt.Errorf("enable-objects: %w", err)
	}
	if !*unsigned {
		if err := warnInlineExecutables(images, stderr); err != nil {
			return fmt.Errorf("enable-objects: %w", err)
		}
	}
	results := make([]string, len(list))
	counts := map[objsig.Outcome]int{}
	var mu sync.Mutex
	forEach(len(list), *threads, func(i int) {
		o := list[i]
		p := filepath.Join(dir, o.path)
		var (
			out objsig.Outcome
			err error
		)
		switch {
		case o.digest.Sum == nil:
			err = errors.New("the image records no fs-verity digest for it")
		case *unsigned:
			err = enableUnsigned(p, o.digest)
		default:
			var sig []byte
			if sig, err = os.ReadFile(objsig.Path(p)); err != nil {
				err = fmt.Errorf("no signature: %w (run cfsroot sign-objects on the build machine)", err)
				break
			}
			out, err = objsig.EnableObject(p, o.digest, sig, ts)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			results[i] = fmt.Sprintf("%s: %v (used by %s)", o.path, err, o.user)
			return
		}
		counts[out]++
	})
	bw := bufio.NewWriter(stdout)
	failed := writeReport(bw, problems, results)
	if *unsigned {
		fmt.Fprintf(bw, "%d objects: %d with fs-verity (no signatures), %d failed\n", len(list), len(list)-failed, failed)
	} else {
		fmt.Fprintf(bw, "%d objects: %d enabled with their signature, %d already enabled with it, %d already enabled with another trusted signature, %d failed\n",
			len(list), counts[objsig.Enabled], counts[objsig.AlreadySigned], counts[objsig.AlreadyTrusted], failed)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if n := failed + len(problems); n > 0 {
		return fmt.Errorf("enable-objects: %d problem(s) in store %s", n, *store)
	}
	return nil
}

// enableUnsigned enables fs-verity on path without a signature (already
// enabled is fine) and checks the kernel's digest against want, if set.
func enableUnsigned(path string, want verity.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := verity.Enable(f, verity.Params{}, nil); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	got, err := verity.Measure(f)
	if err != nil {
		return err
	}
	if want.Sum != nil && !got.Equal(want) {
		return fmt.Errorf("%s: %w: %s, the image expects %s", path, objsig.ErrDigest, got, want)
	}
	return nil
}

// writeReport writes the images' problems, then the per-object results that
// are not empty, one a line, and returns how many results there were.
func writeReport(w io.Writer, problems, results []string) (failed int) {
	for _, p := range problems {
		fmt.Fprintln(w, p)
	}
	for _, r := range results {
		if r != "" {
			fmt.Fprintln(w, r)
			failed++
		}
	}
	return failed
}
