// Package repo manages a cfsroot repository on a device's disk: the signed
// composefs images in their slots, the objects they share, and the slot
// state that drives trial boots. It is what `cfsroot install`, `bless`,
// `status` and `gc` use, and what an installer imports.
//
// On-disk layout, under the repository directory (the config's
// "repository", default "composefs" on the disk):
//
//	images/SLOT.cfs          composefs image of the slot (fs-verity enabled)
//	images/SLOT.cfs.sig      its PKCS#7 signature
//	images/SLOT.ipe.p7s      its signed IPE policy (optional)
//	objects/xx/yyyy…         file contents named by fs-verity digest
//	state/slots.json         the slot state (State), replaced atomically
//	lock                     flock(2) lock held by install, bless and gc
//
// Crash safety: every file appears under its final name only when complete
// and synced (written under a ".tmp" name, fsynced, renamed, directory
// fsynced). An install writes objects first, then the signature and policy,
// then the image, and commits last by rewriting state/slots.json; the slot
// it writes into is taken out of the boot order (written to the state) before
// its image is touched. A power cut at any point therefore leaves either the
// old state (which boots what booted before) or the new one, plus at most
// unreferenced objects and ".tmp" files, which the next install or gc
// removes. The init only ever renames state/slots.json (see State).
package repo

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Repo is an open repository directory.
type Repo struct {
	dir string
}

// Names of the repository's parts.
const (
	ImagesDir  = "images"
	ObjectsDir = "objects"
	StateDir   = "state"
	StateFile  = "state/slots.json"
	LockFile   = "lock"
)

// ErrLocked is returned by Lock when another process holds the lock.
var ErrLocked = errors.New("another cfsroot install, bless or gc is running on this repository")

// Open returns the repository in dir, creating its directories if needed
// (so that an empty filesystem becomes an empty repository).
func Open(dir string) (*Repo, error) {
	for _, d := range []string{ImagesDir, ObjectsDir, StateDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("repository: %w", err)
		}
	}
	return &Repo{dir: dir}, nil
}

// Dir returns the repository directory.
func (r *Repo) Dir() string { return r.dir }

// Path joins parts to the repository directory.
func (r *Repo) Path(parts ...string) string {
	return filepath.Join(append([]string{r.dir}, parts...)...)
}

// ImagePath returns images/SLOT.cfs.
func (r *Repo) ImagePath(slot string) string { return r.Path(ImagesDir, slot+".cfs") }

// Lock takes the repository's exclusive lock without waiting: two updaters
// (or an update and a gc) must never interleave. It returns ErrLocked when
// the lock is held. The lock is released by calling unlock, or when the
// process exits.
func (r *Repo) Lock() (unlock func(), err error) {
	p := r.Path(LockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("repository lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", p, ErrLocked)
		}
		return nil, fmt.Errorf("repository lock %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

// CheckSlotName accepts a slot name: what the init's config accepts as an
// image name (no "/", no leading ".", 1 to 200 bytes).
func CheckSlotName(s string) error {
	if s == "" || len(s) > 200 || strings.ContainsAny(s, "/\x00") || strings.HasPrefix(s, ".") {
		return fmt.Errorf("slot name %q: want 1 to 200 characters, no / and no leading .", s)
	}
	return nil
}

// syncDir fsyncs a directory so that renames and creations in it are
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// isTemp reports whether name is a temporary file an interrupted writer may
// have left (".tmp…" in objects/, ".NAME.tmp…" from atomic writes).
func isTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp")
}
