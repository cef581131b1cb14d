package reader

import (
	"fmt"
	"io/fs"
	"strings"
)

// Lookup returns the entry at the absolute path p ("/etc/passwd"), reading
// only the directories on the way to it rather than walking the image. It
// does not follow symlinks. A missing name gives an error wrapping
// fs.ErrNotExist; an invalid structure on the way one wrapping ErrCorrupt.
// Whiteouts are reported as missing, as a mount of the image shows them.
func (img *Image) Lookup(p string) (*Entry, error) {
	if !strings.HasPrefix(p, "/") || len(p) > MaxPathLen {
		return nil, fmt.Errorf("lookup %q: want an absolute path of at most %d bytes", p, MaxPathLen)
	}
	ino, err := img.inode(uint64(img.sb.rootNid))
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	parent := ino.nid
	walked := ""
	for _, name := range strings.Split(p, "/") {
		if name == "" {
			continue
		}
		if name == "." || name == ".." {
			return nil, fmt.Errorf("lookup %q: . and .. are not allowed", p)
		}
		if ino.typ() != sIFDIR {
			return nil, fmt.Errorf("lookup %s: %s is not a directory: %w", p, walked, fs.ErrNotExist)
		}
		ents, err := img.dirents(ino)
		if err != nil {
			return nil, fmt.Errorf("lookup %s: %w", p, err)
		}
		var found *dirent
		for i := range ents {
			if ents[i].name == name {
				found = &ents[i]
				break
			}
		}
		walked += "/" + name
		if found == nil {
			return nil, fmt.Errorf("lookup %s: %w", p, fs.ErrNotExist)
		}
		child, err := img.inode(found.nid)
		if err != nil {
			return nil, fmt.Errorf("lookup %s: %w", p, err)
		}
		if want := fileTypeOfMode[child.typ()]; found.ftype != want {
			return nil, corrupt("%s: directory entry file type %d does not match inode mode %#o", walked, found.ftype, child.mode)
		}
		if child.typ() == sIFCHR && child.u == 0 {
			return nil, fmt.Errorf("lookup %s: %s is a whiteout: %w", p, walked, fs.ErrNotExist)
		}
		parent, ino = ino.nid, child
	}
	if walked == "" {
		walked = "/"
	}
	e, err := img.entry(ino, walked)
	if err != nil {
		return nil, err
	}
	e.parent = parent
	return e, nil
}

// ReadDir returns the entries of directory p (an absolute path, as for
// Lookup) in name order, without "." and "..", whiteouts left out as Walk
// does. It reads only the inodes on p and p's entries: the init uses it to
// check an image's root before mounting it, where a full Walk would cost a
// read of every inode.
func (img *Image) ReadDir(p string) ([]*Entry, error) {
	dir, err := img.Lookup(p)
	if err != nil {
		return nil, err
	}
	if !dir.IsDir() {
		return nil, fmt.Errorf("readdir %s: not a directory", p)
	}
	ino, err := img.inode(dir.Nid)
	if err != nil {
		return nil, fmt.Errorf("readdir %s: %w", p, err)
	}
	ents, err := img.dirents(ino)
	if err != nil {
		return nil, fmt.Errorf("readdir %s: %w", p, err)
	}
	var out []*Entry
	for _, d := range ents {
		if d.name == "." || d.name == ".." {
			continue
		}
		child, err := img.inode(d.nid)
		if err != nil {
			return nil, fmt.Errorf("readdir %s: %s: %w", p, d.name, err)
		}
		if want := fileTypeOfMode[child.typ()]; d.ftype != want {
			return nil, corrupt("%s/%s: directory entry file type %d does not match inode mode %#o", p, d.name, d.ftype, child.mode)
		}
		if child.typ() == sIFCHR && child.u == 0 {
			continue
		}
		path := strings.TrimSuffix(p, "/") + "/" + d.name
		e, err := img.entry(child, path)
		if err != nil {
			return nil, err
		}
		e.parent = ino.nid
		out = append(out, e)
	}
	return out, nil
}
