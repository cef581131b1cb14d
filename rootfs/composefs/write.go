package composefs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unsafe"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// Format constants (libcomposefs lcfs-erofs.h, kernel erofs_fs.h).
const (
	headerMagic     = 0xd078629a // LCFS_EROFS_MAGIC
	headerVersion   = 1          // LCFS_EROFS_VERSION
	headerFlagACL   = 1          // LCFS_EROFS_FLAGS_HAS_ACL
	erofsMagic      = 0xE0F5E1E2
	superOffset     = 1024
	superSize       = 128
	blockSize       = 4096
	blockBits       = 12
	slotSize        = 32
	compactSize     = 32
	extendedSize    = 64
	xattrHeaderSize = 12
	xattrEntrySize  = 4
	direntSize      = 12
	maxChunks       = 1024 // LCFS_MAX_NONINLINE_CHUNKS
	chunkBitsMask   = 31   // EROFS_CHUNK_FORMAT_BLKBITS_MASK
	maxSharedPerIno = 128  // EROFS_XATTR_LONG_PREFIX: shared refs per inode

	layoutFlatPlain  = 0
	layoutFlatInline = 2
	layoutChunkBased = 4

	featureCompatMtime       = 0x2
	featureCompatXattrFilter = 0x4
	xattrFilterSeed          = 0x25BBE08F

	// maxVersion is the newest format version this package writes.
	maxVersion = 1
)

// Overlay xattrs (libcomposefs lcfs-internal.h).
const (
	xattrOverlayPrefix  = "trusted.overlay."
	xattrEscapePrefix   = "trusted.overlay.overlay."
	xattrMetacopy       = "trusted.overlay.metacopy"
	xattrRedirect       = "trusted.overlay.redirect"
	xattrOpaque         = "trusted.overlay.opaque"
	xattrEscWhiteout    = "trusted.overlay.overlay.whiteout"
	xattrEscWhiteouts   = "trusted.overlay.overlay.whiteouts"
	xattrEscOpaque      = "trusted.overlay.overlay.opaque"
	xattrUserWhiteout   = "user.overlay.whiteout"
	xattrUserWhiteouts  = "user.overlay.whiteouts"
	xattrUserOpaque     = "user.overlay.opaque"
	xattrSELinux        = "security.selinux"
	xattrACLAccess      = "system.posix_acl_access"
	xattrACLDefault     = "system.posix_acl_default"
	xattrEntryOverhead  = 2*xattrEntrySize - 1 // lcfs accounting per xattr
	fsverityHashSHA256  = 1
	metacopyDigestValue = 4 + DigestSize
)

// WriteOptions control Write. The zero value writes format version 0 only;
// use DefaultWriteOptions for mkcomposefs' defaults.
type WriteOptions struct {
	// MinVersion is the format version written (0 or 1), unless the tree
	// has a whiteout and MaxVersion allows 1: then 1. Version 1 also marks
	// directories holding whiteouts with overlayfs' "xwhiteouts" opaque=x
	// xattrs (composefs ≥ 1.0.3 readers need it for such directories).
	MinVersion int
	// MaxVersion is the newest version that may be chosen (0 or 1); values
	// below MinVersion are raised to it.
	MaxVersion int
}

// DefaultWriteOptions returns mkcomposefs' defaults (versions 0 to 1).
func DefaultWriteOptions() *WriteOptions { return &WriteOptions{MinVersion: 0, MaxVersion: 1} }

// WriteResult describes a written image.
type WriteResult struct {
	// Digest is the fs-verity digest (SHA-256, 4 KiB blocks, no salt) of
	// the image: its identity, what signatures sign and what
	// `mkcomposefs --print-digest` prints.
	Digest verity.Digest
	// Version is the format version written.
	Version int
	// Size is the image size in bytes.
	Size int64
	// Inodes is the number of inodes, including the 256 whiteouts every
	// image has in its root.
	Inodes int
}

// Write writes root as a composefs image to w, byte for byte as mkcomposefs
// (composefs 1.0.8) writes the same tree, and returns the image's fs-verity
// digest. opts nil means DefaultWriteOptions. The tree is not modified.
func Write(w io.Writer, root *Node, opts *WriteOptions) (WriteResult, error) {
	if opts == nil {
		opts = DefaultWriteOptions()
	}
	minV, maxV := opts.MinVersion, opts.MaxVersion
	if minV < 0 || minV > maxVersion || maxV < 0 || maxV > maxVersion {
		return WriteResult{}, fmt.Errorf("composefs: format versions must be 0 or 1 (got min %d, max %d)", minV, maxV)
	}
	if maxV < minV {
		maxV = minV
	}
	if root == nil || !root.IsDir() {
		return WriteResult{}, errors.New("composefs: the root must be a directory")
	}
	version := minV
	if version < 1 && maxV >= 1 && hasWhiteout(root) {
		version = 1
	}
	b := &builder{version: version, links: map[*Node]*winode{}}
	if err := b.build(root); err != nil {
		return WriteResult{}, fmt.Errorf("composefs: %w", err)
	}
	b.computeShared()
	if err := b.layout(); err != nil {
		return WriteResult{}, fmt.Errorf("composefs: %w", err)
	}
	tree, err := verity.NewTree(verity.Params{})
	if err != nil {
		return WriteResult{}, err
	}
	cw := &countingWriter{w: w, tree: tree}
	bw := bufio.NewWriterSize(cw, 1<<20)
	if err := b.write(bw); err != nil {
		return WriteResult{}, fmt.Errorf("composefs: write image: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return WriteResult{}, fmt.Errorf("composefs: write image: %w", err)
	}
	if cw.n != int64(b.totalSize) {
		return WriteResult{}, fmt.Errorf("composefs: internal error: wrote %d bytes, laid out %d", cw.n, b.totalSize)
	}
	return WriteResult{Digest: tree.Digest(), Version: version, Size: cw.n, Inodes: len(b.inodes)}, nil
}

// countingWriter passes bytes on to w and to the fs-verity tree.
type countingWriter struct {
	w    io.Writer
	tree *verity.Tree
	n    int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.tree.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// hasWhiteout reports whether the tree under root has a whiteout. A
// directory has one name, so only root can be met twice (a cycle that
// build reports); it is not entered again.
func hasWhiteout(root *Node) bool {
	stack := []*Node{root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, e := range n.entries {
			if e.Node.IsWhiteout() {
				return true
			}
			if e.Node.IsDir() && e.Node != root {
				stack = append(stack, e.Node)
			}
		}
	}
	return false
}

// winode is one inode as it will be written: the node after the overlay
// rewrite (escaped xattrs, metacopy/redirect, whiteouts as files) and its
// place in the image.
type winode struct {
	node    *Node   // nil for the root whiteouts the writer adds
	parent  *winode // the directory holding the entry that placed it
	name    string  // that entry's name ("" for the root)
	mode    uint32
	nlink   uint32
	uid     uint32
	gid     uint32
	rdev    uint32
	size    uint64 // st_size as mkcomposefs keeps it (the compact rule uses it)
	mtime   Time
	xattrs  []Xattr
	shared  []int64 // per xattr: offset in the shared table, or -1
	acct    int64   // libcomposefs' xattr_size accounting since the clone
	ents    []went  // directories: entries with "." and "..", sorted
	chunked bool    // external regular file: chunk-based, null chunks
	inline  bool    // regular file with inline content (node.Content)

	ino     uint32
	nid     uint64
	compact bool
	ipad    uint64
	xsize   uint64
	nblocks uint64
	tail    uint64
	isize   uint64
}

type went struct {
	name string
	node *Node   // nil for "." and ".." and the added root whiteouts
	w    *winode // resolved target
}

func (w *winode) typ() uint32 { return w.mode & ModeTypeMask }

func (w *winode) path() string {
	if w.parent == nil || w.parent == w {
		return "/"
	}
	var parts []string
	for x := w; x.parent != nil && x.parent != x; x = x.parent {
		parts = append(parts, x.name)
	}
	var sb strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		sb.WriteByte('/')
		sb.WriteString(parts[i])
	}
	return sb.String()
}

func (w *winode) xattrIndex(key string) int {
	for i := range w.xattrs {
		if w.xattrs[i].Key == key {
			return i
		}
	}
	return -1
}

// setXattr sets an xattr the way lcfs_node_set_xattr does on the writer's
// clone of the tree, including its size accounting (which starts at zero on
// the clone and so can fail when a generated xattr replaces a longer value
// the input already had: mkcomposefs then fails with ERANGE, and so do we).
func (w *winode) setXattr(key string, value []byte) error {
	if i := w.xattrIndex(key); i >= 0 {
		old := w.xattrs[i]
		last := len(w.xattrs) - 1
		w.xattrs[i] = w.xattrs[last]
		w.xattrs = w.xattrs[:last]
		if len(w.xattrs) > 0 {
			w.acct -= int64(xattrEntryOverhead + len(old.Key) + len(old.Value))
		} else {
			w.acct = 0
		}
	}
	entry := int64(xattrEntryOverhead + len(key) + len(value))
	if len(w.xattrs) == 0 {
		entry += xattrHeaderSize
	}
	if sum := w.acct + entry; sum < 0 {
		return fmt.Errorf("%s: cannot set xattr %s: it replaces a longer value the tree gave it, which libcomposefs' xattr accounting rejects (mkcomposefs fails the same way, with ERANGE)", w.path(), key)
	} else if sum > MaxInodeXattrSize {
		return fmt.Errorf("%s: cannot set xattr %s: the node's xattrs would exceed %d bytes", w.path(), key, MaxInodeXattrSize)
	}
	w.acct += entry
	w.xattrs = append(w.xattrs, Xattr{Key: key, Value: value})
	return nil
}

type builder struct {
	version int
	inodes  []*winode // breadth-first order
	links   map[*Node]*winode
	pending []*went // link entries seen before the node was placed

	sharedTable []Xattr
	sharedSize  uint64
	sharedOff   map[xattrKey]int64
	minMtime    Time
	hasACL      bool

	inodesEnd      uint64
	dataBlockStart uint64
	dataBlocks     uint64
	totalSize      uint64
}

// checkNode validates what the C library validates when a node is created
// or written; the caller adds the path to the error.
func checkNode(n *Node) error {
	switch n.Type() {
	case ModeRegular:
		if len(n.Content) > 0 {
			if len(n.Content) > MaxInlineContent {
				return fmt.Errorf("inline content is %d bytes, at most %d allowed", len(n.Content), MaxInlineContent)
			}
			if uint64(len(n.Content)) != n.Size {
				return fmt.Errorf("inline content is %d bytes but size is %d", len(n.Content), n.Size)
			}
		} else if n.Size > 0 {
			if _, count := chunking(n.Size); count > maxChunks {
				return fmt.Errorf("file size %d is too big for composefs (at most %d bytes)", n.Size, uint64(MaxFileSize))
			}
		}
		if len(n.Payload) > MaxSymlinkLen {
			return fmt.Errorf("payload is %d bytes, at most %d allowed", len(n.Payload), MaxSymlinkLen)
		}
		if strings.IndexByte(n.Payload, 0) >= 0 {
			return errors.New("payload contains a NUL byte")
		}
		if n.Digest != nil && len(n.Digest) != DigestSize {
			return fmt.Errorf("digest is %d bytes, want %d (fs-verity SHA-256)", len(n.Digest), DigestSize)
		}
	case ModeSymlink:
		if n.Payload == "" {
			return errors.New("symlink has an empty target")
		}
		if len(n.Payload) > MaxSymlinkLen {
			return fmt.Errorf("symlink target is %d bytes, at most %d allowed", len(n.Payload), MaxSymlinkLen)
		}
		if strings.IndexByte(n.Payload, 0) >= 0 {
			return errors.New("symlink target contains a NUL byte")
		}
	case ModeDir, ModeCharDev, ModeBlockDev, ModeFIFO, ModeSocket:
	default:
		return fmt.Errorf("invalid file type in mode %o", n.Mode)
	}
	return CheckXattrs(n.Xattrs)
}

// CheckXattrs reports whether xattrs are within the limits mkcomposefs
// accepts for one node: names of 1..MaxXattrKeyLen bytes without NUL, no
// duplicates, values of at most MaxXattrValueLen bytes, and in total at most
// MaxInodeXattrSize bytes as libcomposefs counts them.
func CheckXattrs(xattrs []Xattr) error {
	if len(xattrs) == 0 {
		return nil
	}
	total := xattrHeaderSize
	var seen map[string]struct{}
	if len(xattrs) > 8 {
		seen = make(map[string]struct{}, len(xattrs))
	}
	for i, x := range xattrs {
		if x.Key == "" || len(x.Key) > MaxXattrKeyLen {
			return fmt.Errorf("xattr name %.40q is %d bytes, must be 1..%d", x.Key, len(x.Key), MaxXattrKeyLen)
		}
		if strings.IndexByte(x.Key, 0) >= 0 {
			return fmt.Errorf("xattr name %q contains a NUL byte", x.Key)
		}
		if len(x.Value) > MaxXattrValueLen {
			return fmt.Errorf("xattr %s: value is %d bytes, at most %d allowed", x.Key, len(x.Value), MaxXattrValueLen)
		}
		dup := false
		if seen != nil {
			_, dup = seen[x.Key]
			seen[x.Key] = struct{}{}
		} else {
			for _, y := range xattrs[:i] {
				dup = dup || y.Key == x.Key
			}
		}
		if dup {
			return fmt.Errorf("xattr %s is set twice", x.Key)
		}
		total += xattrEntryOverhead + len(x.Key) + len(x.Value)
		if total > MaxInodeXattrSize {
			return fmt.Errorf("xattrs exceed %d bytes (at %s)", MaxInodeXattrSize, x.Key)
		}
	}
	return nil
}

// newInode makes the writer's copy of n and applies mkcomposefs' overlay
// rewrite to it (add_overlayfs_xattrs): escape trusted.overlay.*, add
// metacopy and redirect to external files, turn whiteouts into regular files
// and mark their directory.
func (b *builder) newInode(n *Node, parent *winode, name string) (*winode, error) {
	w := &winode{node: n, parent: parent, name: name, mode: n.Mode, nlink: n.Nlink,
		uid: n.UID, gid: n.GID, rdev: n.Rdev, size: n.Size, mtime: n.Mtime}
	if err := checkNode(n); err != nil {
		return nil, fmt.Errorf("%s: %w", w.path(), err)
	}
	if len(n.Xattrs) > 0 {
		w.xattrs = make([]Xattr, len(n.Xattrs), len(n.Xattrs)+2)
		for i, x := range n.Xattrs {
			if strings.HasPrefix(x.Key, xattrOverlayPrefix) {
				x.Key = xattrEscapePrefix + x.Key[len(xattrOverlayPrefix):]
			}
			w.xattrs[i] = x
		}
	}
	switch n.Type() {
	case ModeRegular:
		if len(n.Content) > 0 {
			w.inline = true
		} else if n.Size > 0 {
			w.chunked = true
			// One allocation for both values: a big tree has many.
			buf := make([]byte, 0, metacopyDigestValue+1+len(n.Payload))
			var mc []byte
			if n.Digest != nil {
				buf = append(buf, 0, metacopyDigestValue, 0, fsverityHashSHA256)
				buf = append(buf, n.Digest...)
				mc = buf[:metacopyDigestValue:metacopyDigestValue]
			}
			if err := w.setXattr(xattrMetacopy, mc); err != nil {
				return nil, err
			}
			if n.Payload != "" {
				start := len(buf)
				buf = append(buf, '/')
				buf = append(buf, n.Payload...)
				if err := w.setXattr(xattrRedirect, buf[start:]); err != nil {
					return nil, err
				}
			}
		}
	case ModeSymlink:
		w.size = uint64(len(n.Payload))
	case ModeCharDev:
		if n.Rdev == 0 {
			w.size = 0
			w.mode = ModeRegular | (n.Mode &^ ModeTypeMask)
			for _, k := range []string{xattrEscWhiteout, xattrUserWhiteout} {
				if err := w.setXattr(k, []byte{}); err != nil {
					return nil, err
				}
			}
			marks := []Xattr{{xattrEscWhiteouts, []byte{}}, {xattrUserWhiteouts, []byte{}}}
			if b.version >= 1 {
				marks = append(marks, Xattr{xattrEscOpaque, []byte("x")}, Xattr{xattrUserOpaque, []byte("x")})
			}
			for _, m := range marks {
				if err := parent.setXattr(m.Key, m.Value); err != nil {
					return nil, err
				}
			}
		}
	}
	return w, nil
}

// build lays the tree out in breadth-first order (lcfs_compute_tree) after
// the overlay rewrite (rewrite_tree_for_erofs).
func (b *builder) build(root *Node) error {
	rw, err := b.newInode(root, nil, "")
	if err != nil {
		return err
	}
	rw.parent = rw
	b.inodes = append(b.inodes, rw)
	for i := 0; i < len(b.inodes); i++ {
		w := b.inodes[i]
		w.ino = uint32(i)
		if w.typ() != ModeDir {
			continue
		}
		if err := b.addEntries(w, root); err != nil {
			return err
		}
	}
	for _, e := range b.pending {
		t, ok := b.links[e.node]
		if !ok {
			return fmt.Errorf("hard link %q: the entry that owns its node is not in the tree", e.name)
		}
		e.w = t
	}
	b.pending = nil

	// The root is opaque to lower layers, and hides the object store's
	// fan-out directories 00..ff with whiteouts (rewrite_tree_for_erofs).
	if err := rw.setXattr(xattrOpaque, []byte("y")); err != nil {
		return err
	}

	b.minMtime = rw.mtime
	for _, w := range b.inodes {
		if w.mtime.Before(b.minMtime) {
			b.minMtime = w.mtime
		}
		if len(w.xattrs) > 1 {
			sort.Slice(w.xattrs, func(i, j int) bool { return w.xattrs[i].Key < w.xattrs[j].Key })
		}
		if w.xattrIndex(xattrACLAccess) >= 0 || w.xattrIndex(xattrACLDefault) >= 0 {
			b.hasACL = true
		}
	}
	return nil
}

// addEntries gives directory w its entries: the tree's, ".", "..", and for
// the root the whiteouts 00..ff; it creates and queues, in name order, the
// inodes they place.
func (b *builder) addEntries(w *winode, root *Node) error {
	n := w.node
	isRoot := w.parent == w
	ents := make([]went, 0, len(n.entries)+2)
	ents = append(ents, went{name: ".", w: w}, went{name: "..", w: w.parent})
	subdirs := uint32(0)
	for _, e := range n.entries {
		if e.Node.IsDir() {
			subdirs++
		}
		ents = append(ents, went{name: e.Name, node: e.Node})
	}
	w.nlink = 2 + subdirs
	if isRoot {
		// The root hides the object store's fan-out directories 00..ff
		// with whiteouts, unless it has entries of those names
		// (add_overlay_whiteouts).
		const hex = "0123456789abcdef"
		for i := 0; i < 256; i++ {
			name := string([]byte{hex[i>>4], hex[i&15]})
			if n.Lookup(name) == nil {
				ents = append(ents, went{name: name})
			}
		}
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	for i := range ents {
		e := &ents[i]
		if e.w != nil {
			continue
		}
		c := e.node
		if c == nil {
			e.w = b.rootWhiteout(w, e.name)
			b.inodes = append(b.inodes, e.w)
			continue
		}
		if t, ok := b.links[c]; ok {
			e.w = t
			continue
		}
		owner := c.links <= 1 || c.primaryDir == nil || (c.primaryDir == n && c.primaryName == e.name)
		if !owner {
			b.pending = append(b.pending, e)
			continue
		}
		if c == root {
			return fmt.Errorf("%s/%s: the root directory cannot be inside itself", strings.TrimSuffix(w.path(), "/"), e.name)
		}
		cw, err := b.newInode(c, w, e.name)
		if err != nil {
			return err
		}
		b.inodes = append(b.inodes, cw)
		if c.links > 1 {
			b.links[c] = cw
		}
		e.w = cw
	}
	w.ents = ents
	return nil
}

// rootWhiteout makes one of the root's whiteouts: a real overlay whiteout
// (character device 0/0, not escaped) with the root's owner, mtime and
// SELinux label.
func (b *builder) rootWhiteout(rw *winode, name string) *winode {
	w := &winode{parent: rw, name: name, mode: ModeCharDev | 0o644, nlink: 1,
		uid: rw.uid, gid: rw.gid, mtime: rw.mtime}
	if i := rw.xattrIndex(xattrSELinux); i >= 0 {
		w.xattrs = []Xattr{rw.xattrs[i]}
	}
	return w
}

// computeShared finds the xattrs (key and value) used by more than one
// inode and lays out the shared xattr table (compute_erofs_shared_xattrs).
func (b *builder) computeShared() {
	type use struct {
		x     Xattr
		count int
	}
	counts := make(map[xattrKey]*use)
	var uniq []*use
	for _, w := range b.inodes {
		for _, x := range w.xattrs {
			k := keyOfXattr(x)
			u := counts[k]
			if u == nil {
				u = &use{x: x}
				counts[k] = u
				uniq = append(uniq, u)
			}
			u.count++
		}
	}
	var shared []Xattr
	for _, u := range uniq {
		if u.count > 1 {
			shared = append(shared, u.x)
		}
	}
	counts, uniq = nil, nil
	// Descending by key, then value length, then value bytes.
	sort.Slice(shared, func(i, j int) bool {
		a, c := shared[i], shared[j]
		if a.Key != c.Key {
			return a.Key > c.Key
		}
		if len(a.Value) != len(c.Value) {
			return len(a.Value) > len(c.Value)
		}
		return bytes.Compare(a.Value, c.Value) > 0
	})
	b.sharedTable = shared
	b.sharedOff = make(map[xattrKey]int64, len(shared))
	off := uint64(0)
	for _, x := range shared {
		b.sharedOff[keyOfXattr(x)] = int64(off)
		off += xattrEntryLen(x)
	}
	b.sharedSize = off
	for _, w := range b.inodes {
		if len(w.xattrs) == 0 {
			continue
		}
		w.shared = make([]int64, len(w.xattrs))
		n := 0
		for i, x := range w.xattrs {
			w.shared[i] = -1
			if len(shared) == 0 {
				continue
			}
			if off, ok := b.sharedOff[keyOfXattr(x)]; ok && n < maxSharedPerIno {
				w.shared[i] = off
				n++
			}
		}
	}
}

// xattrKey identifies an xattr by name and value. The value is a string
// view of the Xattr's bytes, which Write does not change.
type xattrKey struct{ key, value string }

func keyOfXattr(x Xattr) xattrKey {
	return xattrKey{x.Key, unsafe.String(unsafe.SliceData(x.Value), len(x.Value))}
}
