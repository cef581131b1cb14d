// Package composefs builds composefs images: EROFS metadata images whose
// regular files point at content-addressed objects, mounted with overlayfs
// (verity=require) so that every file is checked against its fs-verity digest.
//
// The images are byte-for-byte what mkcomposefs (composefs v1.0.8) writes for
// the same tree, so a signature over either fits both. A program describes the
// tree with Node values (or reads it from a directory with FromDir, or from
// composefs dump text with package composefs/dump) and writes it with Write.
//
// The tree is the user's view of the files, the one `composefs-info dump`
// prints: whiteouts are character devices 0/0, xattrs named trusted.overlay.*
// are the user's own (Write escapes them), and the overlay xattrs that make
// the image work (metacopy, redirect, the root's whiteouts) are not in it.
package composefs

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// File type bits of Node.Mode, as in st_mode (the values are the same on
// every Linux architecture and in the composefs dump format).
const (
	ModeTypeMask uint32 = 0o170000
	ModeSocket   uint32 = 0o140000
	ModeSymlink  uint32 = 0o120000
	ModeRegular  uint32 = 0o100000
	ModeBlockDev uint32 = 0o060000
	ModeDir      uint32 = 0o040000
	ModeCharDev  uint32 = 0o020000
	ModeFIFO     uint32 = 0o010000
)

// Limits of the format and of mkcomposefs, enforced by Write and by the dump
// parser.
const (
	// MaxNameLen is the longest directory entry name.
	MaxNameLen = 255
	// MaxSymlinkLen is the longest symlink target (PATH_MAX excluding NUL).
	MaxSymlinkLen = 4095
	// MaxInlineContent is the largest Content a regular file may carry.
	MaxInlineContent = 5000
	// RecommendedInlineMax is the largest file FromDir stores inline; larger
	// files become external objects. Files this small gain nothing from
	// sharing, and cannot carry an fs-verity digest (so no IPE rule can
	// match them: keep executables external if that matters).
	RecommendedInlineMax = 64
	// MaxXattrKeyLen is the longest xattr name.
	MaxXattrKeyLen = 255
	// MaxXattrValueLen is the largest xattr value.
	MaxXattrValueLen = 65535
	// MaxInodeXattrSize bounds the xattrs of one node: the sum over its
	// xattrs of len(key)+len(value)+4 (mkcomposefs' LCFS_INODE_EXTERNAL_XATTR_MAX).
	MaxInodeXattrSize = 65535 / 2
	// MaxFileSize is the largest external regular file: its chunk table
	// (1024 chunks of 8 TiB) must fit one block.
	MaxFileSize = 1 << 53
	// DigestSize is the size of an fs-verity SHA-256 digest.
	DigestSize = 32
)

// Time is a modification time: seconds since the epoch and nanoseconds.
type Time struct {
	Sec  int64
	Nsec uint32
}

// Before reports whether t is earlier than u.
func (t Time) Before(u Time) bool {
	return t.Sec < u.Sec || (t.Sec == u.Sec && t.Nsec < u.Nsec)
}

// Xattr is one extended attribute. Key is the full name ("user.foo").
type Xattr struct {
	Key   string
	Value []byte
}

// Node is one inode of the tree: a directory, regular file, symlink, device,
// fifo or socket. A node added to several directories is a hard link
// (directories cannot be).
//
// Which fields matter depends on the type:
//   - directories: Mode, UID, GID, Mtime, Xattrs and the entries (use Add);
//     Size and Nlink are computed when writing.
//   - regular files: Size; either Content (inline data, len(Content) must be
//     Size, at most MaxInlineContent) or external data, named by Payload
//     (the object path relative to the object store, "ab/cdef…", written as
//     the overlay redirect "/ab/cdef…"; may be empty) and Digest (the
//     content's fs-verity SHA-256 digest, or nil). Size 0 files have neither.
//   - symlinks: Payload is the target (1..MaxSymlinkLen bytes); Size is
//     ignored and written as len(Payload).
//   - character and block devices: Rdev (st_rdev as glibc encodes it). A
//     character device with Rdev 0 is an overlay whiteout.
//
// Nlink is written as is for non-directories (FromDir sets 1, the dump
// parser keeps the dump's value).
type Node struct {
	Mode    uint32 // st_mode: ModeTypeMask bits and permissions
	Nlink   uint32
	UID     uint32
	GID     uint32
	Rdev    uint32
	Size    uint64
	Mtime   Time
	Payload string
	Content []byte
	Digest  []byte
	Xattrs  []Xattr

	entries []Entry // sorted by Name (byte order), directories only
	links   int     // number of directory entries naming this node
	// The entry that owns a hard-linked node: the writer places the inode
	// where this entry is (mkcomposefs places it at the dump line that is
	// not an "@" line). nil once that entry is removed; then the first
	// entry in breadth-first order owns it.
	primaryDir  *Node
	primaryName string
}

// NewNode returns a node with the given st_mode and one link, ready to be
// added to a directory.
func NewNode(mode uint32) *Node { return &Node{Mode: mode, Nlink: 1} }

// Entry is a directory entry: a name and the node it names.
type Entry struct {
	Name string
	Node *Node
}

// Type returns the file type bits of Mode.
func (n *Node) Type() uint32 { return n.Mode & ModeTypeMask }

// IsDir reports whether n is a directory.
func (n *Node) IsDir() bool { return n.Type() == ModeDir }

// IsWhiteout reports whether n is an overlay whiteout (character device 0/0).
func (n *Node) IsWhiteout() bool { return n.Type() == ModeCharDev && n.Rdev == 0 }

// NumLinks returns how many directory entries name n: more than one means
// n is hard linked.
func (n *Node) NumLinks() int { return n.links }

// Entries returns the entries of directory n sorted by name (byte order,
// without "." and ".."). The slice belongs to n: do not modify it.
func (n *Node) Entries() []Entry { return n.entries }

// Lookup returns the node named name in directory n, or nil.
func (n *Node) Lookup(name string) *Node {
	i, ok := n.find(name)
	if !ok {
		return nil
	}
	return n.entries[i].Node
}

func (n *Node) find(name string) (int, bool) {
	// Entries usually arrive in order; check the end first.
	k := len(n.entries)
	if k == 0 || n.entries[k-1].Name < name {
		return k, false
	}
	i := sort.Search(k, func(i int) bool { return n.entries[i].Name >= name })
	return i, i < k && n.entries[i].Name == name
}

// ErrExist is returned (wrapped) by Add when the name is already taken.
var ErrExist = errors.New("entry already exists")

// Add adds child to directory n under name. Adding a non-directory node that
// is already in the tree makes a hard link. It fails if n is not a directory,
// the name is invalid (empty, ".", "..", containing '/' or NUL, longer than
// MaxNameLen), the name is taken, or child is a directory that already has a
// name (directories cannot be hard linked).
func (n *Node) Add(name string, child *Node) error {
	if !n.IsDir() {
		return fmt.Errorf("add %q: parent is not a directory", name)
	}
	if err := CheckName(name); err != nil {
		return fmt.Errorf("add %q: %w", name, err)
	}
	if child == nil {
		return fmt.Errorf("add %q: nil node", name)
	}
	if child.IsDir() && (child.links > 0 || child == n) {
		return fmt.Errorf("add %q: a directory cannot have two names (no hard links to directories)", name)
	}
	i, ok := n.find(name)
	if ok {
		return fmt.Errorf("add %q: %w", name, ErrExist)
	}
	n.entries = append(n.entries, Entry{})
	copy(n.entries[i+1:], n.entries[i:])
	n.entries[i] = Entry{Name: name, Node: child}
	if child.links == 0 {
		child.primaryDir, child.primaryName = n, name
	}
	child.links++
	return nil
}

// Remove removes the entry name from directory n and reports whether it
// existed.
func (n *Node) Remove(name string) bool {
	i, ok := n.find(name)
	if !ok {
		return false
	}
	child := n.entries[i].Node
	child.links--
	if child.primaryDir == n && child.primaryName == name {
		child.primaryDir, child.primaryName = nil, ""
	}
	n.entries = append(n.entries[:i], n.entries[i+1:]...)
	return true
}

// CheckName reports whether name is a valid directory entry name.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case name == "." || name == "..":
		return fmt.Errorf("name %q is reserved", name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name is %d bytes, at most %d allowed", len(name), MaxNameLen)
	case strings.IndexByte(name, '/') >= 0:
		return errors.New("name contains '/'")
	case strings.IndexByte(name, 0) >= 0:
		return errors.New("name contains a NUL byte")
	}
	return nil
}

// Xattr returns the value of the xattr key and whether n has it.
func (n *Node) Xattr(key string) ([]byte, bool) {
	for _, x := range n.Xattrs {
		if x.Key == key {
			return x.Value, true
		}
	}
	return nil, false
}

// SetXattr sets the xattr key to value, replacing an existing value.
func (n *Node) SetXattr(key string, value []byte) {
	for i := range n.Xattrs {
		if n.Xattrs[i].Key == key {
			n.Xattrs[i].Value = value
			return
		}
	}
	n.Xattrs = append(n.Xattrs, Xattr{Key: key, Value: value})
}

// RemoveXattr removes the xattr key and reports whether it existed.
func (n *Node) RemoveXattr(key string) bool {
	for i := range n.Xattrs {
		if n.Xattrs[i].Key == key {
			n.Xattrs = append(n.Xattrs[:i], n.Xattrs[i+1:]...)
			return true
		}
	}
	return false
}

// SortXattrs sorts n's xattrs by key (byte order), the order images store
// them in and dumps print them in.
func (n *Node) SortXattrs() {
	sort.SliceStable(n.Xattrs, func(i, j int) bool { return n.Xattrs[i].Key < n.Xattrs[j].Key })
}
