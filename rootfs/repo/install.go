package repo

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/atomicfile"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// DefaultTries is how many times the init boots a new slot before it falls
// back to the known-good one, unless the installer says otherwise.
const DefaultTries = 3

// maxImageSize bounds the image read into memory (the demo root's is a few
// MB; composefs images hold metadata only).
const maxImageSize = 1 << 30

// InstallOptions says what to install where.
type InstallOptions struct {
	// Slot is the image name to install into (a slot in the init's config).
	Slot string
	// Image is the composefs image (mkimage --digest-store output); Sig its
	// signature (default Image+".sig"); Policy its signed IPE policy
	// (optional). Objects' builtin signatures (objsig: OBJECT.sig beside
	// the object in Store, `cfsroot sign-objects`) are copied with them
	// and fs-verity is enabled with them.
	Image, Sig, Policy string
	// Store is the object store the image was built with (--digest-store).
	Store string
	// Trusted are the certificates the image's signature must verify
	// against (the ones in the target's initramfs).
	Trusted *signature.TrustStore
	// Tries is the number of trial boots (default DefaultTries). The first
	// install into a repository without a known-good slot makes the slot
	// known-good at once (there is nothing to fall back to).
	Tries int
	// Protect lists slots that must not be written (the booted one).
	Protect []string
	// Progress, if set, is called as objects are copied.
	Progress func(done, total int, bytes int64)
	// Step, if set, is called at each point where the repository on disk
	// has changed (an object stored, a file published, the state written),
	// with a short name of the point. Tests use it to cut the power there.
	Step func(point string)
}

// InstallResult says what an install did.
type InstallResult struct {
	Digest      verity.Digest
	Signer      *x509.Certificate
	Objects     int   // objects the image references
	Copied      int   // objects that were missing and were copied
	CopiedBytes int64 // their size
	Signatures  int   // builtin signatures copied with them (objsig)
	ImageBytes  int64
	// NoVerity counts the image's files (objects and the image itself)
	// left without fs-verity because the target's kernel or filesystem has
	// none: the init's provision_verity must enable it at first boot.
	NoVerity int
	State    State // the state after the install
}

// imageObject is one object an image references.
type imageObject struct {
	path   string
	size   uint64
	digest verity.Digest
}

// ReadImage parses a composefs image's bytes and returns the objects it
// references, sorted by path.
func readImageObjects(data []byte) ([]imageObject, error) {
	img, err := reader.New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	return collectObjects(img)
}

func collectObjects(img *reader.Image) ([]imageObject, error) {
	seen := map[string]*imageObject{}
	err := img.Walk(func(e *reader.Entry) error {
		if !e.IsExternal() || e.HardlinkTo != "" || e.Payload == "" {
			return nil
		}
		if !filepath.IsLocal(e.Payload) {
			return fmt.Errorf("object path %q of %s leaves the object store", e.Payload, e.Path)
		}
		if o := seen[e.Payload]; o != nil {
			if o.size != e.Size {
				return fmt.Errorf("object %s is used with sizes %d and %d", e.Payload, o.size, e.Size)
			}
			return nil
		}
		seen[e.Payload] = &imageObject{path: e.Payload, size: e.Size, digest: e.Digest}
		return nil
	})
	if err != nil {
		return nil, err
	}
	list := make([]imageObject, 0, len(seen))
	for _, o := range seen {
		list = append(list, *o)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].path < list[j].path })
	return list, nil
}

// Install puts a signed image and its objects into a slot of the
// repository (see the package comment for the order of writes), checks
// every object against the image (as `cfsroot check --verify`), and then
// marks the slot as on trial with opts.Tries boots. Any failure leaves the
// repository as it was, except that the slot, if it was on trial, is no
// longer (its image may be gone).
func (r *Repo) Install(opts InstallOptions) (*InstallResult, error) {
	if err := CheckSlotName(opts.Slot); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if slices.Contains(opts.Protect, opts.Slot) {
		return nil, fmt.Errorf("install: slot %s is the booted one; install into another slot", opts.Slot)
	}
	if opts.Trusted == nil {
		return nil, fmt.Errorf("install: no trusted certificates given")
	}
	if opts.Sig == "" {
		opts.Sig = opts.Image + ".sig"
	}
	if opts.Tries == 0 {
		opts.Tries = DefaultTries
	}
	if opts.Tries < 1 || opts.Tries > 1000 {
		return nil, fmt.Errorf("install: tries %d: want 1 to 1000", opts.Tries)
	}
	unlock, err := r.Lock()
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	defer unlock()

	// The image, its signature and its objects, all checked before the
	// repository is touched.
	res := &InstallResult{}
	data, err := readLimited(opts.Image, maxImageSize)
	if err != nil {
		return nil, fmt.Errorf("install: image: %w", err)
	}
	res.ImageBytes = int64(len(data))
	res.Digest, err = verity.DigestReader(bytes.NewReader(data), verity.Params{})
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	sig, err := readLimited(opts.Sig, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("install: signature: %w", err)
	}
	res.Signer, err = signature.Verify(sig, res.Digest, opts.Trusted)
	if err != nil {
		return nil, fmt.Errorf("install: %s (digest %s) is not signed by a trusted certificate: %w", opts.Image, res.Digest, err)
	}
	var policy []byte
	if opts.Policy != "" {
		if policy, err = readLimited(opts.Policy, 1<<20); err != nil {
			return nil, fmt.Errorf("install: policy: %w", err)
		}
	}
	objects, err := readImageObjects(data)
	if err != nil {
		return nil, fmt.Errorf("install: %s is not a usable composefs image: %w", opts.Image, err)
	}
	res.Objects = len(objects)

	st, err := ReadState(r.dir)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if st.Good == opts.Slot {
		return nil, fmt.Errorf("install: slot %s holds the known-good image; install into another slot", opts.Slot)
	}
	// Take the slot out of the boot order before its files change.
	if st.Trial == opts.Slot {
		st = State{Good: st.Good}
		if err := WriteState(r.dir, st); err != nil {
			return nil, fmt.Errorf("install: %w", err)
		}
		step(opts, "trial-cleared")
	}
	r.removeTemps()

	added, newDirs, err := r.copyObjects(opts, objects, res)
	if err == nil {
		err = r.verifyObjects(objects, res, true)
	}
	if err == nil {
		err = r.publish(opts, data, sig, policy, res)
	}
	if err != nil {
		for _, p := range added {
			os.Remove(r.Path(ObjectsDir, p))
		}
		for _, d := range newDirs {
			os.Remove(r.Path(ObjectsDir, d)) // only if empty
		}
		return nil, fmt.Errorf("install: %w", err)
	}

	// The commit point.
	if st.Good == "" {
		st = State{Good: opts.Slot}
	} else {
		st = State{Good: st.Good, Trial: opts.Slot, TriesLeft: opts.Tries}
	}
	if err := WriteState(r.dir, st); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	step(opts, "committed")
	res.State = st
	return res, nil
}

func step(opts InstallOptions, point string) {
	if opts.Step != nil {
		opts.Step(point)
	}
}

func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, limit)
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return data, nil
}

// copyObjects copies the objects the repository lacks from opts.Store and
// returns the ones it added and the directories it created (removed again
// if the install fails). It stages every object under a temporary name,
// flushes the filesystem once (syncfs), then enables fs-verity on each and
// renames it to its final name, and flushes again: an object's final name
// only ever holds its complete content, at the cost of two flushes for the
// whole update rather than one per object.
func (r *Repo) copyObjects(opts InstallOptions, objects []imageObject, res *InstallResult) (added, newDirs []string, err error) {
	objDir := r.Path(ObjectsDir)
	store, err := composefs.OpenStore(objDir)
	if err != nil {
		return nil, nil, err
	}
	var missing []imageObject
	var need int64
	for _, o := range objects {
		if _, err := os.Lstat(r.Path(ObjectsDir, o.path)); errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, o)
			need += int64(o.size)
		} else if err != nil {
			return nil, nil, fmt.Errorf("object %s: %w", o.path, err)
		}
	}
	full := func(err error) error {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return fmt.Errorf("the target filesystem is full (%d new objects of %d bytes needed): %w", len(missing), need, err)
		}
		return err
	}
	var tmps []string
	// sigTmps[i] is the staged builtin signature of missing[i] ("" if the
	// source store has none beside the object, objsig's layout).
	sigTmps := make([]string, len(missing))
	sigs := make([][]byte, len(missing))
	defer func() {
		for _, t := range append(tmps, sigTmps...) {
			if t != "" {
				os.Remove(t) // after a failure; renamed ones are gone already
			}
		}
	}()
	for i, o := range missing {
		if o.digest.Sum == nil || o.digest.Algorithm != verity.SHA256 {
			return added, newDirs, fmt.Errorf("object %s: the image records no fs-verity SHA-256 digest for it (build it with mkimage --digest-store)", o.path)
		}
		if composefs.ObjectPath(o.digest.Sum) != o.path {
			return added, newDirs, fmt.Errorf("object %s: its path is not its digest %s (not a --digest-store image)", o.path, o.digest)
		}
		src := filepath.Join(opts.Store, o.path)
		in, err := os.Open(src)
		if err != nil {
			return added, newDirs, fmt.Errorf("object %s: %w", o.path, err)
		}
		st, err := in.Stat()
		if err == nil && !st.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file (%v)", src, st.Mode().Type())
		} else if err == nil && uint64(st.Size()) != o.size {
			err = fmt.Errorf("%d bytes in %s, the image expects %d", st.Size(), opts.Store, o.size)
		}
		var tmp *os.File
		if err == nil {
			tmp, err = os.CreateTemp(objDir, ".tmp")
		}
		if err == nil {
			tmps = append(tmps, tmp.Name())
			err = store.Copy(tmp, in)
			if err == nil {
				err = tmp.Chmod(0o644)
			}
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
		}
		in.Close()
		if err == nil {
			sigs[i], err = readSig(objsig.Path(src))
		}
		if err == nil && sigs[i] != nil {
			var t *os.File
			if t, err = os.CreateTemp(objDir, ".tmp"); err == nil {
				sigTmps[i] = t.Name()
				_, err = t.Write(sigs[i])
				if err == nil {
					err = t.Chmod(0o644)
				}
				if cerr := t.Close(); err == nil {
					err = cerr
				}
			}
		}
		if err != nil {
			return added, newDirs, full(fmt.Errorf("object %s: %w", o.path, err))
		}
		res.CopiedBytes += int64(o.size)
		if opts.Progress != nil {
			opts.Progress(i+1, len(missing), res.CopiedBytes)
		}
	}
	if err := atomicfile.SyncFS(objDir); err != nil {
		return added, newDirs, full(err)
	}
	for i, o := range missing {
		final := r.Path(ObjectsDir, o.path)
		d := filepath.Dir(o.path)
		if _, err := os.Lstat(filepath.Dir(final)); errors.Is(err, fs.ErrNotExist) {
			if err := os.Mkdir(filepath.Dir(final), 0o755); err != nil {
				return added, newDirs, full(err)
			}
			newDirs = append(newDirs, d)
		}
		if err := enableChecked(tmps[i], o.digest, sigs[i]); err != nil {
			return added, newDirs, full(fmt.Errorf("object %s: %w", o.path, err))
		}
		// The signature first: an object under its final name has its
		// signature beside it for provision_verity to enable it with.
		if sigTmps[i] != "" {
			if err := os.Rename(sigTmps[i], objsig.Path(final)); err != nil {
				return added, newDirs, full(err)
			}
			sigTmps[i] = ""
			added = append(added, objsig.Path(o.path))
			res.Signatures++
		}
		if err := os.Rename(tmps[i], final); err != nil {
			return added, newDirs, full(err)
		}
		tmps[i] = ""
		added = append(added, o.path)
		res.Copied++
		step(opts, "object "+o.path)
	}
	if err := atomicfile.SyncFS(objDir); err != nil {
		return added, newDirs, full(err)
	}
	step(opts, "objects-synced")
	return added, newDirs, nil
}

// enableChecked enables fs-verity on the file at p (where the filesystem
// can), with the builtin signature sig if there is one, and checks the
// kernel's digest against want.
func enableChecked(p string, want verity.Digest, sig []byte) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if sig != nil {
		err = verity.EnableSigned(f, sig)
	} else {
		err = verity.Enable(f, verity.Params{}, nil)
	}
	if verity.IsNotSupported(err) || errors.Is(err, unix.EINVAL) {
		return nil // checked in userspace by verifyObjects
	}
	if errors.Is(err, unix.ENOKEY) {
		return fmt.Errorf("%w: the kernel does not trust the object signer; install from the booted device (its init loads fsverity_certs into the .fs-verity keyring) or leave fs-verity to provision_verity on a kernel without it", err)
	}
	if err != nil {
		return err
	}
	d, err := verity.Measure(f)
	if err != nil {
		return err
	}
	if !d.Equal(want) {
		return fmt.Errorf("content changed while it was copied: fs-verity digest %s, the image expects %s", d, want)
	}
	return nil
}

// readSig reads an object's builtin signature file, if there is one.
func readSig(p string) ([]byte, error) {
	data, err := readLimited(p, 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// verifyObjects checks every object of the image in the repository: its
// size, and its fs-verity digest (the kernel's when fs-verity is enabled,
// else computed), as `cfsroot check --verify` does.
//
// With enable, objects without fs-verity get it where the filesystem can
// (objects copied by hand, or by a run interrupted between enabling and
// renaming).
func (r *Repo) verifyObjects(objects []imageObject, res *InstallResult, enable bool) error {
	var mu sync.Mutex
	var errs []error
	noVerity := 0
	work := make(chan imageObject)
	var wg sync.WaitGroup
	for range max(1, min(runtime.GOMAXPROCS(0), len(objects))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range work {
				enabled, err := checkObject(r.Path(ObjectsDir, o.path), o, enable)
				mu.Lock()
				if err != nil && len(errs) < 10 {
					errs = append(errs, err)
				}
				if err == nil && !enabled {
					noVerity++
				}
				mu.Unlock()
			}
		}()
	}
	for _, o := range objects {
		work <- o
	}
	close(work)
	wg.Wait()
	res.NoVerity += noVerity
	return errors.Join(errs...)
}

// checkObject checks one object file against the image's size and digest
// and says whether it has fs-verity enabled.
func checkObject(p string, o imageObject, enable bool) (verityOn bool, err error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("object %s: %w", o.path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("object %s: %w", o.path, err)
	}
	if !st.Mode().IsRegular() || uint64(st.Size()) != o.size {
		return false, fmt.Errorf("object %s: %d bytes (%v), the image expects a regular file of %d", o.path, st.Size(), st.Mode().Type(), o.size)
	}
	if o.digest.Sum == nil {
		return false, nil
	}
	d, err := verity.Measure(f)
	if enable && errors.Is(err, verity.ErrNotEnabled) {
		// An object put there by hand or left by an interrupted run:
		// enable fs-verity now if the filesystem can (no writer may
		// have it open; we opened it read-only).
		if eerr := verity.Enable(f, verity.Params{}, nil); eerr == nil {
			d, err = verity.Measure(f)
		}
	}
	switch {
	case err == nil:
		verityOn = true
	case verity.IsNotSupported(err) || errors.Is(err, verity.ErrNotEnabled):
		d, err = verity.DigestReader(f, verity.Params{Algorithm: o.digest.Algorithm})
		if err != nil {
			return false, fmt.Errorf("object %s: %w", o.path, err)
		}
	default:
		return false, fmt.Errorf("object %s: %w", o.path, err)
	}
	if !d.Equal(o.digest) {
		return false, fmt.Errorf("object %s: fs-verity digest %s, the image expects %s", o.path, d, o.digest)
	}
	return verityOn, nil
}

// publish writes the slot's signature, policy and image, the image last,
// each under a temporary name first.
func (r *Repo) publish(opts InstallOptions, image, sig, policy []byte, res *InstallResult) error {
	dir, slot := r.Path(ImagesDir), opts.Slot
	if err := writeFile(filepath.Join(dir, slot+".cfs.sig"), sig, nil); err != nil {
		return err
	}
	step(opts, "sig-written")
	pol := filepath.Join(dir, slot+".ipe.p7s")
	if policy != nil {
		if err := writeFile(pol, policy, nil); err != nil {
			return err
		}
		step(opts, "policy-written")
	} else if err := os.Remove(pol); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	enabled := false
	err := writeFile(r.ImagePath(slot), image, func(f *os.File) error {
		// fs-verity on the image, under its temporary name: the init
		// measures it with one ioctl.
		err := verity.Enable(f, verity.Params{}, nil)
		if verity.IsNotSupported(err) || errors.Is(err, unix.EINVAL) {
			return nil
		}
		if err != nil {
			return err
		}
		d, err := verity.Measure(f)
		if err != nil {
			return err
		}
		if !d.Equal(res.Digest) {
			return fmt.Errorf("kernel measured %s, the image's digest is %s", d, res.Digest)
		}
		enabled = true
		return nil
	})
	if err != nil {
		return err
	}
	if !enabled {
		res.NoVerity++
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	step(opts, "image-written")
	return nil
}

// writeFile writes data to a temporary file next to p, syncs it, calls
// ready (if set) with the file reopened read-only, and renames it to p.
func writeFile(p string, data []byte, ready func(*os.File) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp")
	if err != nil {
		return err
	}
	name := tmp.Name()
	fail := func(err error) error {
		tmp.Close()
		os.Remove(name)
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return fmt.Errorf("the target filesystem is full: write %s: %w", p, err)
		}
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if ready != nil {
		if tmp, err = os.Open(name); err != nil {
			return fail(err)
		}
		err := ready(tmp)
		if err != nil {
			return fail(err)
		}
		tmp.Close()
	}
	if err := os.Rename(name, p); err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// removeTemps removes what interrupted writers left (under the lock, so no
// writer is running).
func (r *Repo) removeTemps() (n int) {
	for _, d := range []string{ImagesDir, StateDir, ObjectsDir} {
		entries, _ := os.ReadDir(r.Path(d))
		for _, e := range entries {
			if isTemp(e.Name()) && os.Remove(r.Path(d, e.Name())) == nil {
				n++
			}
		}
	}
	return n
}

// Verify checks that every object the slot's image references is in the
// repository with the size and fs-verity digest the image records (what
// `cfsroot check --verify` checks), and returns how many objects there are
// and how many lack fs-verity.
func (r *Repo) Verify(slot string) (objects, noVerity int, err error) {
	data, err := readLimited(r.ImagePath(slot), maxImageSize)
	if err != nil {
		return 0, 0, fmt.Errorf("verify %s: %w", slot, err)
	}
	objs, err := readImageObjects(data)
	if err != nil {
		return 0, 0, fmt.Errorf("verify %s: %w", slot, err)
	}
	var res InstallResult
	if err := r.verifyObjects(objs, &res, false); err != nil {
		return len(objs), res.NoVerity, fmt.Errorf("verify %s: %w", slot, err)
	}
	return len(objs), res.NoVerity, nil
}
