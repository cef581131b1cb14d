// Package diskfile opens and reads files that an attacker may have placed:
// everything the init reads from the boot disk. A path that is a symbolic
// link, a FIFO, a device or a directory is refused rather than followed,
// waited on or read without end, and reads are bounded, so a hostile file
// can neither hang PID 1 nor make it run out of memory.
package diskfile

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Errors that Open and ReadFile wrap.
var (
	ErrSymlink    = errors.New("is a symbolic link (refused: files on the disk are opened without following links)")
	ErrNotRegular = errors.New("is not a regular file")
	ErrTooLarge   = errors.New("is larger than allowed")
)

// Open opens a regular file for reading. The last path component must not
// be a symbolic link (O_NOFOLLOW), opening never blocks (O_NONBLOCK: a FIFO
// without a writer would otherwise hang the caller for ever) and the
// descriptor is not inherited (O_CLOEXEC). Anything but a regular file is
// refused after opening, from fstat of the descriptor itself, so the file
// checked is the file returned. O_NONBLOCK is cleared again before
// returning (it means nothing for regular files).
func Open(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s %w", path, ErrSymlink)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s %w (it is a %s)", path, ErrNotRegular, fileType(st.Mode))
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_RDONLY); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// ReadFile reads a regular file of at most max bytes, opened as Open does.
// The size is checked before reading (so an 8 GiB sparse file costs
// nothing) and again while reading (so a file growing under the reader
// cannot exceed it): at most max+1 bytes are ever read.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s %w: %d bytes, the limit is %d", path, ErrTooLarge, fi.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s %w: more than %d bytes", path, ErrTooLarge, max)
	}
	return b, nil
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFLNK:
		return "symbolic link"
	}
	return fmt.Sprintf("file of type %#o", mode&unix.S_IFMT)
}
