package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/diskfile"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/repo"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// SlotStatus is the slot state (repo.State) as the init found and left it.
type SlotStatus struct {
	Good      string `json:"good,omitempty"`
	Trial     string `json:"trial,omitempty"`
	TriesLeft int    `json:"tries_left"`
	TriesDone int    `json:"tries_done"` // after this boot's attempt
	// Order is the order the slots were tried in.
	Order []string `json:"order"`
	// BootedAs is "trial" or "good" for the booted slot.
	BootedAs string `json:"booted_as,omitempty"`
	// Note says why a trial was not booted (no tries left).
	Note string `json:"note,omitempty"`
	// Error is set when the state could not be read or the attempt not
	// recorded (then the trial is not booted).
	Error string `json:"error,omitempty"`
}

// ProvisionStatus is what provision_verity did.
type ProvisionStatus struct {
	Images   int      `json:"images_enabled"`
	Objects  int      `json:"objects_enabled"`
	Already  int      `json:"already_enabled"`
	MS       int64    `json:"ms"`
	Errors   []string `json:"errors,omitempty"`
	errCount int
}

// planSlots reads the slot state and orders b.Choice.Slots by it (unless
// the command line chose the image or pinned a digest), records a trial boot's attempt and
// provisions fs-verity when configured. Both writes happen in one window in
// which the disk is remounted read-write; it is read-only again before any
// image is verified.
//
// The attempt is recorded before the trial is verified or booted, as
// systemd-boot renames its entry before booting: a trial that hangs,
// panics or powers off has used a try whatever happens next. repo.WriteState
// replaces the state file atomically (temporary file, fsync, rename,
// directory fsync), so a power cut leaves the old count (this boot did not
// happen yet) or the new one. If the attempt cannot be recorded, the trial
// is not booted: an uncounted trial could boot forever.
func (b *Boot) planSlots() error {
	cfg := b.Config
	var st repo.State
	plan := repo.Plan{Slots: b.Choice.Slots}
	if b.Choice.Image == "" && b.Choice.Digest == nil {
		// The state is written back while the disk is read-write: its
		// directory must be the repository's own, not a link off it.
		err := b.checkRepoDirs(repo.StateFile, nil)
		if err == nil {
			st, err = repo.ReadState(b.repoPath())
		}
		if err != nil {
			// Whatever is on the disk, the config's order is safe: every
			// slot is still verified.
			b.Log.Errorf("slots", "%v; booting the configured slots in order", err)
			b.status.Slots = &SlotStatus{Error: err.Error(), Order: plan.Slots}
		} else if st != (repo.State{}) {
			plan = st.Plan(cfg.Slots, cfg.Fallback)
		}
	}
	ss := b.status.Slots
	if ss == nil && st != (repo.State{}) {
		ss = &SlotStatus{Good: st.Good, Trial: st.Trial, TriesLeft: st.TriesLeft, TriesDone: st.TriesDone, Note: plan.Note}
		b.status.Slots = ss
	}
	if plan.Note != "" {
		b.Log.Errorf("slots", "%s", plan.Note)
	}

	if plan.Attempt || cfg.ProvisionVerity {
		rwErr := b.remountDisk(false)
		if rwErr != nil {
			b.Log.Errorf("slots", "cannot remount the disk read-write: %v", rwErr)
		} else {
			// A panic below (a bug, or hostile input) becomes the
			// step's error; the disk is read-only again first.
			defer func() {
				if r := recover(); r != nil {
					if err := b.remountDisk(true); err != nil {
						b.Log.Errorf("slots", "remount the disk read-only: %v", err)
					}
					panic(r)
				}
			}()
		}
		if plan.Attempt {
			next := st.Attempt()
			err := rwErr
			if err == nil {
				err = repo.WriteState(b.repoPath(), next)
			}
			if err != nil {
				ss.Error = fmt.Sprintf("trial %s not booted: its attempt could not be recorded: %v", st.Trial, err)
				b.Log.Errorf("slots", "%s", ss.Error)
				plan.Slots = plan.Slots[1:]
				plan.Attempt = false
			} else {
				ss.TriesLeft, ss.TriesDone = next.TriesLeft, next.TriesDone
				b.Log.Infof("slots", "trial boot of %s: %d tries left after this one, %d done", st.Trial, next.TriesLeft, next.TriesDone)
			}
		}
		if cfg.ProvisionVerity {
			if rwErr != nil {
				b.status.Provision = &ProvisionStatus{Errors: []string{"disk not writable: " + rwErr.Error()}}
			} else {
				b.provision(plan.Slots)
			}
		}
		if rwErr == nil {
			if err := b.remountDisk(true); err != nil {
				return fmt.Errorf("remount the disk read-only: %w", err)
			}
		}
	}
	if ss != nil {
		ss.Order = plan.Slots
	}
	if len(plan.Slots) == 0 {
		return fmt.Errorf("no slot to boot (slot state: known good %q, trial %q)", st.Good, st.Trial)
	}
	b.Choice.Slots = plan.Slots
	b.trial = ""
	if plan.Attempt {
		b.trial = st.Trial
	}
	b.good = st.Good
	return nil
}

// remountDisk switches the backing disk between read-only and read-write.
func (b *Boot) remountDisk(ro bool) error {
	flags := uintptr(unix.MS_REMOUNT | unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	if ro {
		flags |= unix.MS_RDONLY
	}
	return b.Env.Mounter.Mount("", b.Env.path(DiskDir), "", flags, "")
}

// bootedAs records in the status whether the booted slot was the trial or
// the known-good one.
func (b *Boot) bootedAs(slot string) {
	if b.status.Slots == nil {
		return
	}
	switch slot {
	case b.trial:
		b.status.Slots.BootedAs = "trial"
	case b.good:
		b.status.Slots.BootedAs = "good"
	}
}

// provision enables fs-verity on the images of slots and on the objects
// they reference, where it is missing. It needs no trust in the disk:
// enabling fs-verity only fixes each file's current content; the image's
// digest is then checked against its signature as usual, and overlayfs
// verity=require compares each object's digest with the one the signed
// image records, so a swapped object still reads as EIO. Errors are
// recorded, not fatal: a file left without fs-verity is refused or reads as
// EIO later, which is the fail-closed outcome.
func (b *Boot) provision(slots []string) {
	start := time.Now()
	ps := &ProvisionStatus{}
	b.status.Provision = ps
	var mu sync.Mutex
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		ps.errCount++
		if len(ps.Errors) < 10 {
			ps.Errors = append(ps.Errors, fmt.Sprintf(format, a...))
		}
	}
	// enable turns fs-verity on for f if it is off; it reports whether it
	// did.
	// With fsverity_certs, an object is enabled with the builtin signature
	// beside it (objsig), or not at all: enabled without one, it could
	// never be signed, and IPE's signature rule would deny it for good.
	signed := b.Config.FsverityCerts != ""
	enable := func(f *os.File, withSig bool) (bool, error) {
		_, err := b.Env.Digest(f)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, verity.ErrNotEnabled) {
			return false, err
		}
		var sig []byte
		if withSig {
			if sig, err = readSignatureFile(objsig.Path(f.Name())); err != nil {
				return false, err
			}
		}
		return true, b.Env.EnableVerity(f, sig)
	}
	seen := map[string]bool{}
	dirs := map[string]error{} // checkRepoDirs' answers, per directory
	var objects []string
	for _, slot := range slots {
		p := b.repoPath("images", slot+".cfs")
		if err := b.checkRepoDirs(filepath.Join("images", slot+".cfs"), dirs); err != nil {
			fail("%s: %v", p, err)
			continue
		}
		f, err := diskfile.Open(p)
		if err != nil {
			fail("%s: %v", p, err)
			continue
		}
		did, err := enable(f, false)
		switch {
		case err != nil:
			fail("%s: %v", p, err)
		case did:
			ps.Images++
		default:
			ps.Already++
		}
		if err == nil {
			for _, o := range b.imageObjects(f, seen, fail) {
				if err := b.checkRepoDirs(filepath.Join("objects", o), dirs); err != nil {
					fail("%s: %v", b.repoPath("objects", o), err)
					continue
				}
				objects = append(objects, o)
			}
		}
		f.Close()
	}
	object := func(rel string) {
		p := b.repoPath("objects", rel)
		f, err := diskfile.Open(p)
		if err != nil {
			fail("%s: %v", p, err)
			return
		}
		defer f.Close()
		did, err := enable(f, signed)
		mu.Lock()
		switch {
		case err != nil:
		case did:
			ps.Objects++
		default:
			ps.Already++
		}
		mu.Unlock()
		if err != nil {
			fail("%s: %v", p, err)
		}
	}
	// A panic in a worker goroutine is beyond the step's recover and
	// would end PID 1: each worker catches it, and the first one is
	// raised again here, in the step's goroutine, once all have stopped.
	var panicked any
	work := make(chan string)
	var wg sync.WaitGroup
	for range max(1, 2*runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rel := range work {
				func() {
					defer func() {
						if r := recover(); r != nil {
							mu.Lock()
							if panicked == nil {
								panicked = fmt.Sprintf("provision %s: %v", rel, r)
							}
							mu.Unlock()
						}
					}()
					object(rel)
				}()
			}
		}()
	}
	for _, o := range objects {
		work <- o
	}
	close(work)
	wg.Wait()
	if panicked != nil {
		panic(panicked)
	}
	ps.MS = time.Since(start).Milliseconds()
	b.Log.Infof("provision", "fs-verity enabled on %d images and %d objects (%d had it) in %v", ps.Images, ps.Objects, ps.Already, time.Since(start).Round(time.Millisecond))
	if ps.errCount > 0 {
		b.Log.Errorf("provision", "%d files could not be provisioned, first: %s", ps.errCount, ps.Errors[0])
	}
}

// readSignatureFile reads an object's builtin-signature file, which is no
// bigger than fs-verity accepts.
// It is opened as every file on the disk is (diskfile): a FIFO there would
// otherwise block the open, and the boot, for ever.
func readSignatureFile(p string) ([]byte, error) {
	sig, err := diskfile.ReadFile(p, verity.MaxSignatureSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("no builtin signature (cfsroot sign-objects writes it): %w", err)
	case err != nil:
		return nil, fmt.Errorf("builtin signature: %w", err)
	case len(sig) == 0:
		return nil, fmt.Errorf("%s: 0 bytes is no builtin signature", p)
	}
	return sig, nil
}

// checkRepoDirs checks that every directory on the way from the disk's
// mount point to the repository file rel (the repository's own and those
// in rel) is a directory on the disk, not a symbolic link. The init's
// paths are absolute: a link there would be followed from the initramfs'
// root, and what provision_verity and the slot state write while the disk
// is read-write would land off the repository (another directory, the
// initramfs). Reading through such a link is harmless (what is read is
// verified), writing is not. The disk is the attacker's but nobody changes
// it while the init runs, so checking once is enough. dirs, if not nil,
// caches the answers for a directory.
func (b *Boot) checkRepoDirs(rel string, dirs map[string]error) error {
	base := b.Env.path(DiskDir)
	p := base
	for _, c := range strings.Split(filepath.Dir(filepath.Join(b.Config.Repository, rel)), "/") {
		if c == "" || c == "." {
			continue
		}
		p = filepath.Join(p, c)
		err, ok := dirs[p]
		if !ok {
			var fi os.FileInfo
			if fi, err = os.Lstat(p); err == nil {
				switch {
				case fi.Mode()&os.ModeSymlink != 0:
					err = fmt.Errorf("%s %w", p, diskfile.ErrSymlink)
				case !fi.IsDir():
					err = fmt.Errorf("%s is not a directory", p)
				}
			}
			if dirs != nil {
				dirs[p] = err
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// imageObjects lists the objects the image in f references that are not
// in seen yet (and adds them).
func (b *Boot) imageObjects(f *os.File, seen map[string]bool, fail func(string, ...any)) []string {
	st, err := f.Stat()
	if err != nil {
		fail("%s: %v", f.Name(), err)
		return nil
	}
	img, err := reader.New(f, st.Size())
	if err != nil {
		fail("%s: %v", f.Name(), err)
		return nil
	}
	var out []string
	err = img.Walk(func(e *reader.Entry) error {
		if !e.IsExternal() || e.Payload == "" || seen[e.Payload] {
			return nil
		}
		if !filepath.IsLocal(e.Payload) {
			return fmt.Errorf("object path %q leaves the object store", e.Payload)
		}
		seen[e.Payload] = true
		out = append(out, e.Payload)
		return nil
	})
	if err != nil {
		fail("%s: %v", f.Name(), err)
	}
	return out
}

// detach lazily unmounts the initramfs-side mounts of the image and the
// disk once the overlay holds its layers (overlayfs keeps private clones of
// them), as libcomposefs does with its EROFS mount: the booted system then
// has no /run/cfsroot/disk that shutdown fails to unmount. Errors are
// logged only; the root is mounted either way.
func (b *Boot) detach() {
	for _, d := range []string{ImageDir, DiskDir} {
		if err := b.Env.Mounter.Unmount(b.Env.path(d)); err != nil {
			b.Log.Errorf("mount", "detach %s: %v", d, err)
		}
	}
}
