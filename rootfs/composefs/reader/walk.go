package reader

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// MaxPathLen is the longest path the reader accepts (PATH_MAX without the
// NUL). It bounds the work per entry on hostile images with very deep trees.
const MaxPathLen = 4095

// Xattr is an extended attribute: full name ("user.foo") and value.
type Xattr struct {
	Name  string
	Value []byte
}

// Entry is one file of the image as composefs presents it.
type Entry struct {
	// Path is the absolute path ("/" for the root, "/etc/passwd").
	Path string
	// Nid is the EROFS inode number, what stat reports as st_ino on a
	// mount of the image. Hard links share it.
	Nid uint64
	// Mode is st_mode (type and permission bits). Whiteouts are character
	// devices with Rdev 0, as overlayfs shows them.
	Mode  uint32
	Nlink uint32
	UID   uint32
	GID   uint32
	Rdev  uint32
	Size  uint64
	// MtimeSec and MtimeNsec are the modification time.
	MtimeSec  int64
	MtimeNsec uint32
	// Symlink is the target of a symlink.
	Symlink string
	// Content is the data of a regular file stored inside the image
	// (inline); nil for external files.
	Content []byte
	// Payload is the object path of an external regular file relative to
	// the object store ("ab/cdef…"), from its overlay redirect; "" if the
	// file has none (overlayfs then looks it up by its own path).
	Payload string
	// Digest is the fs-verity digest overlayfs checks an external file's
	// object against (from trusted.overlay.metacopy); zero if not set.
	Digest verity.Digest
	// Xattrs are the xattrs a user of the mounted image sees, in image
	// order: composefs' own overlay xattrs are hidden and escaped
	// trusted.overlay.overlay.* ones are shown un-escaped.
	Xattrs []Xattr
	// RawXattrs are the xattrs as stored, what a plain EROFS mount of the
	// image shows.
	RawXattrs []Xattr
	// RawMode is the mode as stored: whiteouts below the root are stored as
	// regular files.
	RawMode uint32
	// HardlinkTo is, for the second and later names of an inode (in walk
	// order), the path of its first name; "" otherwise. The metadata is the
	// inode's in both cases (and the slices may be shared between them).
	HardlinkTo string

	external bool
	parent   uint64 // nid of the directory holding this entry
}

// IsDir reports whether e is a directory.
func (e *Entry) IsDir() bool { return e.Mode&sIFMT == sIFDIR }

// IsRegular reports whether e is a regular file.
func (e *Entry) IsRegular() bool { return e.Mode&sIFMT == sIFREG }

// IsInline reports whether e is a non-empty regular file whose data is stored
// in the image itself. Such files carry no fs-verity digest of their own: only
// the image's digest covers them.
func (e *Entry) IsInline() bool { return e.IsRegular() && e.Content != nil }

// IsExternal reports whether e is a non-empty regular file whose data lives
// in the object store (named by Payload, checked against Digest when mounted
// with verity=require).
func (e *Entry) IsExternal() bool { return e.IsRegular() && e.external }

// WalkFunc is called for each entry. Returning an error stops the walk and
// Walk returns that error. The Entry is the callee's to keep.
type WalkFunc func(e *Entry) error

// Walk calls fn for every entry of the image in depth-first order, parents
// before children, names in byte order (the order `composefs-info dump`
// prints them). Real whiteouts (character devices 0/0, which composefs adds
// to the root to hide the object store) are skipped, as composefs-info does.
// It stops with an error wrapping ErrCorrupt at the first invalid structure;
// entries already passed to fn were valid, but the image as a whole is not
// and should be rejected.
func (img *Image) Walk(fn WalkFunc) error {
	root, err := img.inode(uint64(img.sb.rootNid))
	if err != nil {
		return fmt.Errorf("root: %w", err)
	}
	if root.typ() != sIFDIR {
		return corrupt("root inode %d is not a directory (mode %#o)", root.nid, root.mode)
	}
	w := walker{img: img, fn: fn, dirs: map[uint64]link{root.nid: {}}, files: map[uint64]link{}}
	return w.dir(root, root.nid, "/")
}

// link records where an inode was first found: its directory and name.
type link struct {
	dir  uint64
	name string
}

type walker struct {
	img   *Image
	fn    WalkFunc
	dirs  map[uint64]link // every directory visited, to catch loops
	files map[uint64]link // first name of each non-directory inode
	// whiteouts holds nids of real whiteouts skipped, so hard links to
	// them are skipped too.
	whiteouts map[uint64]bool
	big       map[uint64]*Entry // decoded large inodes, see bigInode
}

// path rebuilds the path of a recorded link from the directory chain.
func (w *walker) path(l link) string {
	var parts []string
	for d := l; ; {
		parts = append(parts, d.name)
		if d.dir == uint64(w.img.sb.rootNid) {
			break
		}
		d = w.dirs[d.dir]
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteByte('/')
		b.WriteString(parts[i])
	}
	return b.String()
}

func (w *walker) dir(ino *inode, parent uint64, path string) error {
	e, err := w.img.entry(ino, path)
	if err != nil {
		return err
	}
	e.parent = parent
	if err := w.fn(e); err != nil {
		return err
	}
	ents, err := w.img.dirents(ino)
	if err != nil {
		return err
	}
	var sawDot, sawDotDot bool
	for _, d := range ents {
		switch d.name {
		case ".":
			if d.nid != ino.nid || d.ftype != fileTypeOfMode[sIFDIR] {
				return corrupt("%s (%s): \".\" points at inode %d, not itself", ino.where(), path, d.nid)
			}
			sawDot = true
			continue
		case "..":
			if d.nid != parent || d.ftype != fileTypeOfMode[sIFDIR] {
				return corrupt("%s (%s): \"..\" points at inode %d, not the parent %d", ino.where(), path, d.nid, parent)
			}
			sawDotDot = true
			continue
		}
		childPath := path + "/" + d.name
		if path == "/" {
			childPath = path + d.name
		}
		if len(childPath) > MaxPathLen {
			return corrupt("path %s… is longer than %d bytes", childPath[:64], MaxPathLen)
		}
		if err := w.child(ino, d, childPath); err != nil {
			return err
		}
	}
	if !sawDot || !sawDotDot {
		return corrupt("%s (%s): directory lacks \".\" or \"..\"", ino.where(), path)
	}
	return nil
}

func (w *walker) child(parent *inode, d dirent, path string) error {
	if w.whiteouts[d.nid] {
		return nil
	}
	if _, ok := w.dirs[d.nid]; ok {
		return corrupt("%s: inode %d is a directory already reached by another path (directory loop or hard-linked directory)", path, d.nid)
	}
	ino, err := w.img.inode(d.nid)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if want := fileTypeOfMode[ino.typ()]; d.ftype != want {
		return corrupt("%s: directory entry file type %d does not match inode mode %#o", path, d.ftype, ino.mode)
	}
	if ino.typ() == sIFCHR && ino.u == 0 {
		if w.whiteouts == nil {
			w.whiteouts = map[uint64]bool{}
		}
		w.whiteouts[d.nid] = true
		return nil
	}
	if ino.typ() == sIFDIR {
		w.dirs[d.nid] = link{dir: parent.nid, name: d.name}
		return w.dir(ino, parent.nid, path)
	}
	var e *Entry
	if c := w.big[d.nid]; c != nil {
		cp := *c
		e = &cp
		e.Path = path
	} else if e, err = w.img.entry(ino, path); err != nil {
		return err
	}
	e.parent = parent.nid
	if first, ok := w.files[d.nid]; ok {
		e.HardlinkTo = w.path(first)
	} else {
		w.files[d.nid] = link{dir: parent.nid, name: d.name}
		if ino.xattrSize+len(e.Content) > bigInode {
			// Decoding is linear in these bytes: keep the result so that
			// many links to one large inode cannot make the walk quadratic.
			if w.big == nil {
				w.big = map[uint64]*Entry{}
			}
			cp := *e
			w.big[d.nid] = &cp
		}
	}
	return w.fn(e)
}

// bigInode is the xattr and inline data size above which decoded inodes are
// kept for later hard links.
const bigInode = 512

// entry decodes everything about ino except directory contents.
func (img *Image) entry(ino *inode, path string) (*Entry, error) {
	e := &Entry{
		Path: path, Nid: ino.nid, Mode: ino.mode, RawMode: ino.mode, Nlink: ino.nlink,
		UID: ino.uid, GID: ino.gid, Size: ino.size, MtimeSec: ino.sec, MtimeNsec: ino.nsec,
	}
	wrap := func(err error) error { return fmt.Errorf("%s: %w", path, err) }
	switch ino.typ() {
	case sIFCHR, sIFBLK:
		e.Rdev = ino.u
	case sIFLNK:
		t, err := img.symlink(ino)
		if err != nil {
			return nil, wrap(err)
		}
		e.Symlink = t
	case sIFREG:
		switch {
		case ino.layout == layoutChunkBased:
			if err := img.checkChunks(ino); err != nil {
				return nil, wrap(err)
			}
			e.external = ino.size > 0
		case ino.size > maxInlineContent:
			return nil, wrap(corrupt("%s: inline file of %d bytes, composefs allows at most %d", ino.where(), ino.size, maxInlineContent))
		case ino.size > 0:
			c, err := img.data(ino)
			if err != nil {
				return nil, wrap(err)
			}
			e.Content = c
		}
	}
	raw, err := img.xattrs(ino)
	if err != nil {
		return nil, wrap(err)
	}
	for _, x := range raw {
		if !img.HasACL() && (x.name == "system.posix_acl_access" || x.name == "system.posix_acl_default") {
			// mount.composefs mounts such images with noacl, hiding it.
			return nil, wrap(corrupt("%s: has %s but the composefs header lacks the HAS_ACL flag", ino.where(), x.name))
		}
		e.RawXattrs = append(e.RawXattrs, Xattr{Name: x.name, Value: x.value})
		if err := e.addXattr(x); err != nil {
			return nil, wrap(fmt.Errorf("%s: %w", ino.where(), err))
		}
	}
	return e, nil
}

// addXattr interprets one stored xattr as libcomposefs' reader does
// (lcfs_build_node_erofs_xattr), validating the overlay ones.
func (e *Entry) addXattr(x rawXattr) error {
	reg := e.Mode&sIFMT == sIFREG
	switch x.name {
	case ovlRedirect:
		if reg {
			if len(x.value) == 0 {
				return corrupt("empty %s", ovlRedirect)
			}
			v := string(x.value)
			if len(v) > 1 && v[0] == '/' {
				v = v[1:]
			}
			e.Payload = v
		}
		return nil
	case ovlMetacopy:
		if !reg {
			return nil
		}
		v := x.value
		switch {
		case len(v) == 0:
		case len(v) == 4 && v[0] == 0 && v[1] == 4 && v[3] == 0:
		case len(v) == 4+32 && v[0] == 0 && v[1] == byte(len(v)) && v[3] == byte(verity.SHA256):
			e.Digest = verity.Digest{Algorithm: verity.SHA256, Sum: v[4:]}
		default:
			return corrupt("malformed %s value %s", ovlMetacopy, hex.EncodeToString(v))
		}
		return nil
	case ovlEscapedWhiteout:
		if reg {
			if e.Size != 0 {
				return corrupt("whiteout file has %d bytes of data", e.Size)
			}
			// Stored as a regular file so that overlayfs does not apply
			// it; shown as the whiteout it stands for.
			e.Mode = e.Mode&^sIFMT | sIFCHR
			e.Rdev = 0
			e.external = false
			return nil
		}
	case ovlEscapedWhiteouts, ovlUserWhiteout, ovlUserWhiteouts:
		return nil
	}
	name := x.name
	if strings.HasPrefix(name, ovlPrefix) {
		if !strings.HasPrefix(name, ovlEscapePrefix) {
			return nil // composefs' own (e.g. the root's opaque)
		}
		name = "trusted." + name[len(ovlPrefix):]
	}
	e.Xattrs = append(e.Xattrs, Xattr{Name: name, Value: x.value})
	return nil
}
