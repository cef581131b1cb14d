package reader

import (
	"fmt"
	"path"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
)

// Tree reads the whole image into a composefs.Node tree, the model the
// writer and the dump formatter use: writing the tree again gives the same
// image, and dump.Write prints what `composefs-info dump` prints. Hard links
// become one Node in several directories. The tree holds every entry in
// memory; use Walk to stream instead.
func (img *Image) Tree() (*composefs.Node, error) {
	var root *composefs.Node
	dirs := map[uint64]*composefs.Node{}  // directory nodes by nid
	files := map[uint64]*composefs.Node{} // hard-link targets by nid
	err := img.Walk(func(e *Entry) error {
		if e.HardlinkTo != "" {
			n := files[e.Nid]
			if n == nil {
				return fmt.Errorf("%s: hard link to unknown inode %d", e.Path, e.Nid)
			}
			return dirs[e.parent].Add(path.Base(e.Path), n)
		}
		n := &composefs.Node{
			Mode:    e.Mode,
			Nlink:   e.Nlink,
			UID:     e.UID,
			GID:     e.GID,
			Rdev:    e.Rdev,
			Size:    e.Size,
			Mtime:   composefs.Time{Sec: e.MtimeSec, Nsec: e.MtimeNsec},
			Content: e.Content,
			Digest:  e.Digest.Sum,
		}
		if e.Mode&sIFMT == sIFLNK {
			n.Payload = e.Symlink
		} else {
			n.Payload = e.Payload
		}
		for _, x := range e.Xattrs {
			n.Xattrs = append(n.Xattrs, composefs.Xattr{Key: x.Name, Value: x.Value})
		}
		if e.Path == "/" {
			root = n
			dirs[e.Nid] = n
			return nil
		}
		if e.IsDir() {
			dirs[e.Nid] = n
		} else {
			files[e.Nid] = n
		}
		parent := dirs[e.parent]
		if parent == nil {
			return fmt.Errorf("%s: parent directory inode %d not read", e.Path, e.parent)
		}
		if err := parent.Add(path.Base(e.Path), n); err != nil {
			return corrupt("%s: %v", e.Path, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return root, nil
}
