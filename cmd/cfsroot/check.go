package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

func init() {
	register(&command{
		name: "check",
		args: "--store DIR [--verify] [--signers CERT] IMAGE...",
		summary: "check that the object store DIR holds every object the composefs IMAGEs reference " +
			"(with --verify, also that each object's fs-verity digest is the one the image expects; " +
			"with --signers, that each object's builtin fs-verity signature is by one of CERT)",
		run: runCheck,
	})
}

// object is one object an image references, with what the image says of it.
type object struct {
	path   string // relative to the store ("ab/cdef…")
	size   uint64
	digest verity.Digest // zero if the image carries none
	user   string        // the first file (image and path) that uses it
}

func runCheck(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet(commands["check"], stderr)
	store := flags.String("store", "", "object store directory (as given to mkcomposefs --digest-store or mount basedir=)")
	verify := flags.Bool("verify", false, "also compute each object's fs-verity digest and compare it with the image's (reads every object)")
	signers := flags.String("signers", "", "PEM file or directory of certificates: also check that each object's builtin fs-verity signature\n"+
		"is by one of them (the kernel's copy where fs-verity is enabled on the object, else its .sig file)")
	images, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	if *store == "" {
		return usagef("check: --store DIR is required")
	}
	ts, err := optionalTrustStore(*signers)
	if err != nil {
		return fmt.Errorf("check: --signers: %w", err)
	}
	if len(images) == 0 {
		return usagef("check: no IMAGE given")
	}
	if st, err := os.Stat(*store); err != nil {
		return fmt.Errorf("check: object store: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("check: object store %s is not a directory", *store)
	}

	list, problems, noPayload, err := imageObjects(images)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	noDigest := 0
	for _, o := range list {
		if o.digest.Sum == nil {
			noDigest++
		}
	}
	results := make([]string, len(list))
	var missing, corrupt, unsigned, untrusted, fromFile int
	var mu sync.Mutex
	forEach(len(list), 0, func(i int) {
		msg, isMissing := checkObject(*store, list[i], *verify)
		var sig sigState
		if msg == "" && ts != nil {
			msg, sig = checkObjectSignature(*store, list[i], ts)
		}
		mu.Lock()
		defer mu.Unlock()
		if sig&sigFromFile != 0 {
			fromFile++
		}
		switch {
		case msg == "":
			return
		case isMissing:
			missing++
		case sig&sigUnsigned != 0:
			unsigned++
		case sig&sigUntrusted != 0:
			untrusted++
		default:
			corrupt++
		}
		results[i] = msg
	})

	bw := bufio.NewWriter(stdout)
	writeReport(bw, problems, results)
	how := "present with the right size"
	if *verify {
		how = "present with the right size and digest"
	}
	if ts != nil {
		how += " and a builtin signature by a given signer"
	}
	bad := missing + corrupt + unsigned + untrusted
	fmt.Fprintf(bw, "%d objects: %d %s, %d missing, %d corrupt", len(list), len(list)-bad, how, missing, corrupt)
	if ts != nil {
		fmt.Fprintf(bw, ", %d unsigned, %d signed by another signer (%d without fs-verity: their .sig file was checked)", unsigned, untrusted, fromFile)
	}
	if *verify && noDigest > 0 {
		fmt.Fprintf(bw, ", %d without a digest in the image (not verifiable)", noDigest)
	}
	if noPayload > 0 {
		fmt.Fprintf(bw, "; %d external files without an object path", noPayload)
	}
	fmt.Fprintln(bw)
	if err := bw.Flush(); err != nil {
		return err
	}
	if n := bad + len(problems); n > 0 {
		return fmt.Errorf("check: %d problem(s) found in store %s", n, *store)
	}
	return nil
}

// imageObjects returns the objects the images reference, sorted by path,
// with a line for each inconsistency between the images (an invalid object
// path, an object used with two sizes or digests), and how many external
// files have no object path (overlayfs looks those up by their own path).
func imageObjects(images []string) (list []*object, problems []string, noPayload int, err error) {
	objects := map[string]*object{}
	for _, img := range images {
		err := walkImage(img, func(e *reader.Entry) error {
			if !e.IsExternal() || e.HardlinkTo != "" {
				return nil
			}
			if e.Payload == "" {
				noPayload++ // overlayfs looks these up by their own path
				return nil
			}
			if !filepath.IsLocal(e.Payload) {
				problems = append(problems, fmt.Sprintf("invalid object path %q (%s:%s): not a relative path inside the store", e.Payload, img, e.Path))
				return nil
			}
			o := objects[e.Payload]
			if o == nil {
				objects[e.Payload] = &object{path: e.Payload, size: e.Size, digest: e.Digest, user: img + ":" + e.Path}
				return nil
			}
			if o.size != e.Size || (e.Digest.Sum != nil && o.digest.Sum != nil && !o.digest.Equal(e.Digest)) {
				problems = append(problems, fmt.Sprintf("object %s is used with different sizes or digests (%s and %s:%s)", e.Payload, o.user, img, e.Path))
			}
			if o.digest.Sum == nil {
				o.digest = e.Digest
			}
			return nil
		})
		if err != nil {
			return nil, nil, 0, err
		}
	}

	list = make([]*object, 0, len(objects))
	for _, o := range objects {
		list = append(list, o)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].path < list[j].path })
	return list, problems, noPayload, nil
}

// checkObject checks one object in the store and returns a line describing
// what is wrong ("" if nothing) and whether the object is missing.
func checkObject(store string, o *object, verify bool) (string, bool) {
	p := filepath.Join(store, o.path)
	st, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("missing %s (used by %s)", o.path, o.user), true
	case err != nil:
		return fmt.Sprintf("unreadable %s: %v (used by %s)", o.path, err, o.user), false
	case !st.Mode().IsRegular():
		return fmt.Sprintf("corrupt %s: not a regular file (%v) (used by %s)", o.path, st.Mode().Type(), o.user), false
	case uint64(st.Size()) != o.size:
		return fmt.Sprintf("corrupt %s: %d bytes, the image expects %d (used by %s)", o.path, st.Size(), o.size, o.user), false
	}
	if !verify || o.digest.Sum == nil {
		return "", false
	}
	d, err := verity.DigestFile(p, verity.Params{Algorithm: o.digest.Algorithm})
	if err != nil {
		return fmt.Sprintf("unreadable %s: %v (used by %s)", o.path, err, o.user), false
	}
	if !d.Equal(o.digest) {
		return fmt.Sprintf("corrupt %s: fs-verity digest %s, the image expects %s (used by %s)", o.path, d, o.digest, o.user), false
	}
	return "", false
}

// sigState says what checkObjectSignature found.
type sigState int

const (
	sigUnsigned  sigState = 1 << iota // no builtin signature (or no .sig file)
	sigUntrusted                      // a signature, but not by a given signer
	sigFromFile                       // fs-verity is off: the .sig file was checked
)

// checkObjectSignature checks the builtin fs-verity signature of one object:
// the one the kernel holds if fs-verity is enabled on it, else (a store on
// the build machine, or not yet enabled) its .sig file, which
// enable-objects would use. It returns a line describing what is wrong ("" if
// nothing).
func checkObjectSignature(store string, o *object, ts *signature.TrustStore) (string, sigState) {
	p := filepath.Join(store, o.path)
	if o.digest.Sum == nil {
		return fmt.Sprintf("unsigned %s: the image records no digest, so no signature can be checked (used by %s)", o.path, o.user), sigUnsigned
	}
	_, err := objsig.Check(p, o.digest, ts)
	switch {
	case err == nil:
		return "", 0
	case errors.Is(err, objsig.ErrUnsigned):
		return fmt.Sprintf("unsigned %s: fs-verity is enabled without a builtin signature; IPE's fsverity_signature rule denies it (used by %s)", o.path, o.user), sigUnsigned
	case errors.Is(err, objsig.ErrUntrusted):
		return fmt.Sprintf("untrusted %s: %v (used by %s)", o.path, err, o.user), sigUntrusted
	case errors.Is(err, objsig.ErrDigest):
		return fmt.Sprintf("corrupt %s: %v (used by %s)", o.path, err, o.user), 0
	case !errors.Is(err, verity.ErrNotEnabled) && !verity.IsNotSupported(err):
		return fmt.Sprintf("unreadable %s: %v (used by %s)", o.path, err, o.user), 0
	}
	sig, err := os.ReadFile(objsig.Path(p))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("unsigned %s: no fs-verity and no signature file %s (run cfsroot sign-objects) (used by %s)", o.path, objsig.Path(o.path), o.user), sigUnsigned | sigFromFile
	} else if err != nil {
		return fmt.Sprintf("unreadable %s: %v (used by %s)", objsig.Path(o.path), err, o.user), sigFromFile
	}
	if _, err := signature.Verify(sig, o.digest, ts); err != nil {
		return fmt.Sprintf("untrusted %s: %v (used by %s)", objsig.Path(o.path), err, o.user), sigUntrusted | sigFromFile
	}
	return "", sigFromFile
}
