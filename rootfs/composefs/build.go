package composefs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// BuildOptions control FromDir. The zero value reads all xattrs, keeps
// devices and mtimes, digests with one worker per CPU and stores nothing.
type BuildOptions struct {
	UseEpoch    bool // set every mtime to 0 (--use-epoch)
	SkipXattrs  bool // read no xattrs (--skip-xattrs)
	UserXattrs  bool // read only user.* xattrs (--user-xattrs)
	SkipDevices bool // leave out block and character devices, whiteouts included (--skip-devices)
	// ExternalExec keeps regular files with an execute bit external (with
	// an object and an fs-verity digest) however small they are, so that
	// IPE fsverity_digest rules can allow them. mkcomposefs has no such
	// option: images of trees with executables of at most
	// RecommendedInlineMax bytes differ from its output.
	ExternalExec bool
	// Threads is how many files are digested (and copied to Store) at
	// once; 0 means one per CPU.
	Threads int
	// Store, if not nil, receives a copy of every external file.
	Store *Store
	// Progress, if not nil, is called about every 200 ms while files are
	// digested, and once when done, from one goroutine at a time.
	Progress func(Progress)
}

// Progress reports how far FromDir has got reading file contents: Files of
// TotalFiles regular files read, Bytes of TotalBytes in external files
// digested. While Scanning, the tree is still being walked and the totals
// still grow.
type Progress struct {
	Files, TotalFiles int
	Bytes, TotalBytes int64
	Scanning          bool
}

// FromDir reads the tree under dir as `mkcomposefs DIR IMAGE` does: every
// entry with its lstat metadata (mtime with nanoseconds, st_rdev), symlink
// targets and xattrs; regular files of 1..RecommendedInlineMax bytes are
// inlined, larger ones become external files named by their fs-verity
// digest (Payload ObjectPath(Digest)). Hard links are not detected: every
// path is its own node with Nlink 1, as in mkcomposefs.
//
// A file that changes while it is read is an error, not a wrong digest.
func FromDir(dir string, opts *BuildOptions) (*Node, error) {
	if opts == nil {
		opts = &BuildOptions{}
	}
	if opts.SkipXattrs && opts.UserXattrs {
		return nil, errors.New("composefs: SkipXattrs and UserXattrs exclude each other")
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return nil, fmt.Errorf("composefs: %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("composefs: %s is not a directory", dir)
	}
	// Files are read by workers while the tree is still being walked.
	b := &dirBuilder{opts: opts, jobs: make(chan *fileJob, 4096)}
	b.startWorkers()
	root, err := b.node(dir, &st)
	if err == nil {
		err = b.walk(dir, root)
	}
	if err != nil {
		b.failed.Store(true) // workers: drop the queued files
	}
	if werr := b.finish(); werr != nil {
		err = werr // the worker's error explains an early stop
	}
	if err != nil {
		return nil, err
	}
	return root, nil
}

type dirBuilder struct {
	opts *BuildOptions
	xbuf []byte // listxattr buffer of the walker

	jobs       chan *fileJob
	wg         sync.WaitGroup
	failed     atomic.Bool
	errMu      sync.Mutex
	firstErr   error
	totalFiles atomic.Int64
	totalBytes atomic.Int64
	doneFiles  atomic.Int64
	doneBytes  atomic.Int64
	walked     atomic.Bool
	stopProg   chan struct{}
	progWG     sync.WaitGroup
}

// fileJob is a regular file whose content must be read: inlined or
// digested (and stored).
type fileJob struct {
	path string
	node *Node
	st   statKey
}

// statKey is what must not change between listing a file and reading it.
type statKey struct {
	ino, size    int64
	mtime, ctime unix.Timespec
	dev          uint64
}

func keyOf(st *unix.Stat_t) statKey {
	return statKey{ino: int64(st.Ino), size: st.Size, mtime: st.Mtim, ctime: st.Ctim, dev: st.Dev}
}

// node makes the node for one directory entry from its lstat data.
func (b *dirBuilder) node(path string, st *unix.Stat_t) (*Node, error) {
	n := &Node{Mode: st.Mode, Nlink: 1, UID: st.Uid, GID: st.Gid, Size: uint64(st.Size)}
	if !b.opts.UseEpoch {
		n.Mtime = Time{Sec: st.Mtim.Sec, Nsec: uint32(st.Mtim.Nsec)}
	}
	switch n.Type() {
	case ModeCharDev, ModeBlockDev:
		if st.Rdev > 0xFFFFFFFF {
			return nil, fmt.Errorf("composefs: %s: device number %#x does not fit the 32 bits composefs stores", path, st.Rdev)
		}
		n.Rdev = uint32(st.Rdev)
	case ModeSymlink:
		target, err := os.Readlink(path)
		if err != nil {
			return nil, fmt.Errorf("composefs: %w", err)
		}
		if target == "" || len(target) > MaxSymlinkLen {
			return nil, fmt.Errorf("composefs: %s: symlink target of %d bytes (must be 1..%d)", path, len(target), MaxSymlinkLen)
		}
		n.Payload = target
		n.Size = uint64(len(target))
	case ModeRegular:
		if n.Size > MaxFileSize {
			return nil, fmt.Errorf("composefs: %s: %d bytes is too big for composefs (at most %d)", path, n.Size, uint64(MaxFileSize))
		}
		if n.Size > 0 {
			if b.failed.Load() {
				return nil, errStopped
			}
			b.totalFiles.Add(1)
			if !b.inline(n) {
				b.totalBytes.Add(int64(n.Size))
			}
			b.jobs <- &fileJob{path: path, node: n, st: keyOf(st)}
		}
	}
	if !b.opts.SkipXattrs {
		if err := b.readXattrs(path, n); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func (b *dirBuilder) readXattrs(path string, n *Node) error {
	if b.xbuf == nil {
		b.xbuf = make([]byte, 4096)
	}
	sz, err := unix.Llistxattr(path, b.xbuf)
	for err == unix.ERANGE {
		need, err2 := unix.Llistxattr(path, nil)
		if err2 != nil {
			return fmt.Errorf("composefs: list xattrs of %s: %w", path, err2)
		}
		b.xbuf = make([]byte, 2*need+64)
		sz, err = unix.Llistxattr(path, b.xbuf)
	}
	switch {
	case err == unix.EOPNOTSUPP:
		return nil
	case err != nil:
		return fmt.Errorf("composefs: list xattrs of %s: %w", path, err)
	case sz == 0:
		return nil
	}
	for _, name := range strings.Split(strings.TrimSuffix(string(b.xbuf[:sz]), "\x00"), "\x00") {
		if b.opts.UserXattrs && !strings.HasPrefix(name, "user.") {
			continue
		}
		v, err := lgetxattr(path, name)
		if err == unix.ENODATA {
			continue // removed since listed
		}
		if err != nil {
			return fmt.Errorf("composefs: read xattr %s of %s: %w", name, path, err)
		}
		n.Xattrs = append(n.Xattrs, Xattr{Key: name, Value: v})
	}
	if err := CheckXattrs(n.Xattrs); err != nil {
		return fmt.Errorf("composefs: %s: %w", path, err)
	}
	return nil
}

func lgetxattr(path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		sz, err := unix.Lgetxattr(path, name, buf)
		if err == unix.ERANGE {
			sz, err = unix.Lgetxattr(path, name, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+16)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:sz:sz], nil
	}
}

// walk adds the entries of directory path to dir, recursively.
func (b *dirBuilder) walk(path string, dir *Node) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("composefs: %w", err)
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		f.Close()
		return fmt.Errorf("composefs: read directory %s: %w", path, err)
	}
	fd := int(f.Fd())
	sort.Strings(names)
	var subdirs []Entry
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			f.Close()
			return fmt.Errorf("composefs: %s: %w", filepath.Join(path, name), err)
		}
		typ := st.Mode & unix.S_IFMT
		if b.opts.SkipDevices && (typ == unix.S_IFCHR || typ == unix.S_IFBLK) {
			continue
		}
		p := filepath.Join(path, name)
		n, err := b.node(p, &st)
		if err != nil {
			f.Close()
			return err
		}
		if err := dir.Add(name, n); err != nil {
			f.Close()
			return fmt.Errorf("composefs: %s: %w", p, err)
		}
		if n.IsDir() {
			subdirs = append(subdirs, Entry{Name: name, Node: n})
		}
	}
	f.Close()
	for _, e := range subdirs {
		if err := b.walk(filepath.Join(path, e.Name), e.Node); err != nil {
			return err
		}
	}
	return nil
}

// errStopped ends the walk early when a worker has failed; the worker's
// error is the one reported.
var errStopped = errors.New("stopped")

// startWorkers starts the goroutines that read the regular files the walk
// finds: they inline the small ones and digest (and store) the others.
func (b *dirBuilder) startWorkers() {
	threads := b.opts.Threads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	if b.opts.Progress != nil {
		b.stopProg = make(chan struct{})
		b.progWG.Add(1)
		go func() {
			defer b.progWG.Done()
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-b.stopProg:
					return
				case <-t.C:
					b.report()
				}
			}
		}()
	}
	for range threads {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			buf := make([]byte, 256<<10)
			for j := range b.jobs {
				if b.failed.Load() {
					continue // drain the queue
				}
				if err := b.readFile(j, buf); err != nil {
					b.errMu.Lock()
					if b.firstErr == nil {
						b.firstErr = err
					}
					b.errMu.Unlock()
					b.failed.Store(true)
					continue
				}
				b.doneFiles.Add(1)
				if !b.inline(j.node) {
					b.doneBytes.Add(int64(j.node.Size))
				}
			}
		}()
	}
}

func (b *dirBuilder) report() {
	b.opts.Progress(Progress{Files: int(b.doneFiles.Load()), TotalFiles: int(b.totalFiles.Load()),
		Bytes: b.doneBytes.Load(), TotalBytes: b.totalBytes.Load(), Scanning: !b.walked.Load()})
}

// finish waits for the workers and returns the first error one had.
func (b *dirBuilder) finish() error {
	b.walked.Store(true)
	close(b.jobs)
	b.wg.Wait()
	if b.stopProg != nil {
		close(b.stopProg)
		b.progWG.Wait()
		if b.firstErr == nil {
			b.report()
		}
	}
	return b.firstErr
}

var errChanged = errors.New("file changed while it was read; build again from a quiescent tree")

func (b *dirBuilder) readFile(j *fileJob, buf []byte) error {
	// A raw descriptor: os.File would set it non-blocking and stat it
	// again, which for 100k+ files is measurable.
	fd, err := unix.Open(j.path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("composefs: open %s: %w", j.path, err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	n := j.node
	if b.inline(n) {
		content := make([]byte, n.Size+1)
		k, err := readFull(fd, content)
		if err != nil {
			return fmt.Errorf("composefs: read %s: %w", j.path, err)
		}
		if uint64(k) != n.Size {
			return fmt.Errorf("composefs: %s: %w", j.path, errChanged)
		}
		n.Content = content[:k:k]
		return b.checkUnchanged(fd, j)
	}
	tree, err := verity.NewTree(verity.Params{})
	if err != nil {
		return err
	}
	var total uint64
	for {
		k, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("composefs: read %s: %w", j.path, err)
		}
		if k == 0 {
			break
		}
		tree.Write(buf[:k])
		total += uint64(k)
	}
	if total != n.Size {
		return fmt.Errorf("composefs: %s: %w", j.path, errChanged)
	}
	if err := b.checkUnchanged(fd, j); err != nil {
		return err
	}
	n.Digest = tree.Digest().Sum
	n.Payload = ObjectPath(n.Digest)
	if s := b.opts.Store; s != nil {
		final := s.Path(n.Digest)
		if _, err := os.Lstat(final); err == nil {
			return nil
		}
		if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
			return fmt.Errorf("composefs: %s: %w", j.path, err)
		}
		f := os.NewFile(uintptr(fd), j.path)
		fd = -1 // f closes it
		defer f.Close()
		if _, err := s.put(final, n.Digest, func(tmp *os.File) error { return s.copyFile(tmp, f) }); err != nil {
			return err
		}
		if err := b.checkUnchanged(int(f.Fd()), j); err != nil {
			os.Remove(final)
			return err
		}
	}
	return nil
}

// readFull reads until p is full or the file ends.
func readFull(fd int, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k, err := unix.Read(fd, p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if k == 0 {
			break
		}
		n += k
	}
	return n, nil
}

// inline reports whether the regular file n is stored in the image.
func (b *dirBuilder) inline(n *Node) bool {
	return n.Size <= RecommendedInlineMax && !(b.opts.ExternalExec && n.Mode&0o111 != 0)
}

func (b *dirBuilder) checkUnchanged(fd int, j *fileJob) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("composefs: %s: %w", j.path, err)
	}
	if keyOf(&st) != j.st {
		return fmt.Errorf("composefs: %s: %w", j.path, errChanged)
	}
	return nil
}
