package composefs

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// ObjectPath returns the object store path of content with fs-verity
// SHA-256 digest d: "ab/cdef…" (the first byte in hex, a slash, the rest).
// It is what mkcomposefs stores as a file's payload and what overlayfs
// follows as the redirect into the object store.
func ObjectPath(d []byte) string {
	h := hex.EncodeToString(d)
	if len(h) < 2 {
		return h
	}
	return h[:2] + "/" + h[2:]
}

// Store is a composefs object store: a directory holding file contents
// named by their fs-verity digest (ObjectPath), the data layer overlayfs
// reads external files from (mkcomposefs --digest-store, the basedir of
// mount.composefs). Objects are read-only, mode 0644, with fs-verity enabled
// where the filesystem supports it, so that overlayfs verity=require can
// check them.
//
// An object appears under its name only when complete: it is written to a
// temporary file in the store (".tmp…"), synced, and renamed. An
// interrupted run leaves at most such a temporary file. Objects already
// present are not written again. A Store may be used from several
// goroutines.
type Store struct {
	dir      string
	noReflnk atomic.Bool // FICLONE failed with "not supported": stop trying
	noCFR    atomic.Bool // copy_file_range unusable between these filesystems
}

// OpenStore returns the object store in dir, creating the directory if
// needed.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("object store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Path returns the file name of the object with digest d.
func (s *Store) Path(d []byte) string { return filepath.Join(s.dir, ObjectPath(d)) }

// AddFile copies the file src, whose fs-verity SHA-256 digest is d, into
// the store, by reflink where the filesystem can, else by copy_file_range,
// else by reading and writing. It returns false if the object was already
// there. If fs-verity gets enabled on the object, the digest the kernel
// computes is checked against d, so a source that changed after it was
// digested is caught.
func (s *Store) AddFile(src string, d []byte) (added bool, err error) {
	if len(d) != DigestSize {
		return false, fmt.Errorf("object store: digest of %s is %d bytes, want %d", src, len(d), DigestSize)
	}
	final := s.Path(d)
	if _, err := os.Lstat(final); err == nil {
		return false, nil
	}
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("object store: %w", err)
	}
	defer in.Close()
	return s.put(final, d, func(tmp *os.File) error { return s.copyFile(tmp, in) })
}

// Add stores the content read from r and returns its fs-verity SHA-256
// digest; added is false if the store already had it.
func (s *Store) Add(r io.Reader) (d []byte, added bool, err error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("object store: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp")
	if err != nil {
		return nil, false, fmt.Errorf("object store: %w", err)
	}
	defer func() {
		if tmp != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	tree, err := verity.NewTree(verity.Params{})
	if err != nil {
		return nil, false, err
	}
	if _, err := io.Copy(io.MultiWriter(tmp, tree), r); err != nil {
		return nil, false, fmt.Errorf("object store: write %s: %w", tmp.Name(), err)
	}
	d = tree.Digest().Sum
	final := s.Path(d)
	if _, err := os.Lstat(final); err == nil {
		return d, false, nil
	}
	if err := s.finish(tmp, final, d); err != nil {
		return nil, false, err
	}
	tmp = nil
	return d, true, nil
}

// put writes a new object through fill and publishes it under final.
func (s *Store) put(final string, d []byte, fill func(*os.File) error) (bool, error) {
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return false, fmt.Errorf("object store: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp")
	if err != nil {
		return false, fmt.Errorf("object store: %w", err)
	}
	if err := fill(tmp); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return false, fmt.Errorf("object store: copy to %s: %w", final, err)
	}
	if err := s.finish(tmp, final, d); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return false, err
	}
	return true, nil
}

// finish makes tmp read-only content: mode 0644, synced, fs-verity enabled
// where possible (and its digest checked), renamed to final.
func (s *Store) finish(tmp *os.File, final string, d []byte) error {
	name := tmp.Name()
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("object store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("object store: sync %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("object store: %w", err)
	}
	// fs-verity can only be enabled with no writer open.
	ro, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("object store: %w", err)
	}
	err = verity.Enable(ro, verity.Params{}, nil)
	if err == nil {
		var m verity.Digest
		m, err = verity.Measure(ro)
		if err == nil && string(m.Sum) != string(d) {
			err = fmt.Errorf("content changed while it was stored: its fs-verity digest is %x, expected %x", m.Sum, d)
		}
	} else if verity.IsNotSupported(err) || errors.Is(err, unix.EINVAL) {
		// No fs-verity here (or not with 4 KiB blocks): the object is
		// still usable without verity=require.
		err = nil
	}
	ro.Close()
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("object store: %s: %w", final, err)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		os.Remove(name)
		return fmt.Errorf("object store: %w", err)
	}
	if err := os.Rename(name, final); err != nil {
		os.Remove(name)
		return fmt.Errorf("object store: %w", err)
	}
	return nil
}

// Copy copies the content of in to out as the store does (for callers that
// stage objects themselves, such as an installer that syncs once for many
// objects): reflink, else copy_file_range, else read and write.
func (s *Store) Copy(out, in *os.File) error { return s.copyFile(out, in) }

// copyFile copies in to out: reflink, else copy_file_range, else read and
// write (the fallbacks mkcomposefs uses).
func (s *Store) copyFile(out, in *os.File) error {
	if !s.noReflnk.Load() {
		err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
		if err == nil {
			return nil
		}
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) {
			if !errors.Is(err, unix.EXDEV) {
				s.noReflnk.Store(true)
			}
		} else {
			return fmt.Errorf("reflink: %w", err)
		}
	}
	if !s.noCFR.Load() {
		done, err := copyRange(out, in)
		if err == nil {
			return nil
		}
		if done > 0 {
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EXDEV) {
			s.noCFR.Store(true)
		}
		// EOPNOTSUPP, EPERM, EINVAL, EBADF...: fall back for this file.
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := out.Truncate(0); err != nil {
		return err
	}
	_, err := io.Copy(onlyWriter{out}, onlyReader{in})
	return err
}

// copyRange copies all of in to out with copy_file_range and returns how
// many bytes it copied.
func copyRange(out, in *os.File) (int64, error) {
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	remaining := fi.Size()
	var done int64
	for remaining > 0 {
		n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, int(min(remaining, 1<<30)), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			// Some filesystems report size but copy nothing (procfs,
			// some overlay setups): let the caller fall back.
			return done, unix.EINVAL
		}
		done += int64(n)
		remaining -= int64(n)
	}
	return done, nil
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo so io.Copy does a plain
// read/write loop (os.File's would try copy_file_range again).
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }
