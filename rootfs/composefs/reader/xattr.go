package reader

import (
	"bytes"
	"strings"

	"github.com/cfsroot/cfsroot/rootfs/composefs/internal/xxhash"
)

// rawXattr is an xattr as stored in the image.
type rawXattr struct {
	name  string // full name, prefix included
	value []byte
}

// Overlay xattr names (libcomposefs lcfs-internal.h).
const (
	ovlPrefix           = "trusted.overlay."
	ovlEscapePrefix     = "trusted.overlay.overlay."
	ovlMetacopy         = "trusted.overlay.metacopy"
	ovlRedirect         = "trusted.overlay.redirect"
	ovlEscapedWhiteout  = "trusted.overlay.overlay.whiteout"
	ovlEscapedWhiteouts = "trusted.overlay.overlay.whiteouts"
	ovlUserWhiteout     = "user.overlay.whiteout"
	ovlUserWhiteouts    = "user.overlay.whiteouts"
)

// xattrs reads the inline and shared xattrs of ino, in the order
// libcomposefs' reader visits them (inline entries, then shared ones), and
// checks bounds, names, duplicates and the name filter.
func (img *Image) xattrs(ino *inode) ([]rawXattr, error) {
	if ino.xattrSize == 0 {
		return nil, nil
	}
	body, err := img.src.read(ino.tailOff-int64(ino.xattrSize), ino.xattrSize)
	if err != nil {
		return nil, err
	}
	filter := le.Uint32(body[0:])
	nShared := int(body[4])
	pos := xattrHeaderSize + 4*nShared
	if pos > len(body) {
		return nil, corrupt("%s: %d shared xattr ids do not fit the %d-byte xattr area", ino.where(), nShared, len(body))
	}
	var out []rawXattr
	for pos < len(body) {
		if len(body)-pos < xattrEntrySize {
			return nil, corrupt("%s: truncated xattr entry at byte %d of the xattr area", ino.where(), pos)
		}
		nameLen, index, valueLen := int(body[pos]), body[pos+1], int(le.Uint16(body[pos+2:]))
		size := (xattrEntrySize + nameLen + valueLen + 3) &^ 3
		if size > len(body)-pos {
			return nil, corrupt("%s: xattr entry of %d bytes overruns the xattr area", ino.where(), size)
		}
		e := body[pos+xattrEntrySize:]
		x, err := makeXattr(ino, index, e[:nameLen], e[nameLen:nameLen+valueLen])
		if err != nil {
			return nil, err
		}
		out = append(out, x)
		pos += size
	}
	for i := 0; i < nShared; i++ {
		id := le.Uint32(body[xattrHeaderSize+4*i:])
		x, err := img.sharedXattr(ino, id)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	names := make(map[string]bool, len(out))
	for _, x := range out {
		if names[x.name] {
			return nil, corrupt("%s: xattr %q appears twice", ino.where(), x.name)
		}
		names[x.name] = true
		if img.filter {
			// The kernel skips the lookup of any name whose filter bit is
			// set, so such an xattr would be invisible to getxattr.
			index, suffix := splitXattrName(x.name)
			bit := xxhash.Sum32([]byte(suffix), xattrFilterSeed+uint32(index)) & 31
			if filter&(1<<bit) != 0 {
				return nil, corrupt("%s: xattr name filter %#08x hides %q from the kernel", ino.where(), filter, x.name)
			}
		}
	}
	return out, nil
}

// sharedXattr reads shared xattr id (a 4-byte unit offset into the shared
// xattr area).
func (img *Image) sharedXattr(ino *inode, id uint32) (rawXattr, error) {
	if x, ok := img.shared[id]; ok {
		return x, nil
	}
	off := img.xattrStart + int64(id)*4
	h, err := img.src.read(off, xattrEntrySize)
	if err != nil {
		return rawXattr{}, corrupt("%s: shared xattr id %d: %v", ino.where(), id, err)
	}
	nameLen, index, valueLen := int(h[0]), h[1], int(le.Uint16(h[2:]))
	e, err := img.src.read(off+xattrEntrySize, nameLen+valueLen)
	if err != nil {
		return rawXattr{}, corrupt("%s: shared xattr id %d: %v", ino.where(), id, err)
	}
	x, err := makeXattr(ino, index, e[:nameLen], e[nameLen:])
	if err != nil {
		return rawXattr{}, err
	}
	img.shared[id] = x
	return x, nil
}

func makeXattr(ino *inode, index uint8, suffix, value []byte) (rawXattr, error) {
	if int(index) >= len(xattrPrefixes) {
		return rawXattr{}, corrupt("%s: unknown xattr name index %d", ino.where(), index)
	}
	name := xattrPrefixes[index] + string(suffix)
	if name == "" || len(name) > maxXattrNameLen || bytes.IndexByte(suffix, 0) >= 0 {
		return rawXattr{}, corrupt("%s: invalid xattr name %q", ino.where(), name)
	}
	// The kernel finds xattrs by (index, suffix) as a writer encodes the
	// name; any other encoding would be invisible to it.
	if want, _ := splitXattrName(name); want != index {
		return rawXattr{}, corrupt("%s: xattr %q stored with name index %d, not %d", ino.where(), name, index, want)
	}
	return rawXattr{name: name, value: value}, nil
}

// splitXattrName returns the EROFS prefix index and suffix a writer uses
// for name (the longest matching prefix, as libcomposefs picks it).
func splitXattrName(name string) (uint8, string) {
	for i := 1; i < len(xattrPrefixes); i++ {
		if strings.HasPrefix(name, xattrPrefixes[i]) {
			return uint8(i), name[len(xattrPrefixes[i]):]
		}
	}
	return 0, name
}
