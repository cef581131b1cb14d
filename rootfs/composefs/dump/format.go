// Package dump reads and writes the composefs dump format (composefs-dump(5)):
// one line per file with its metadata, inline content, object path, digest
// and xattrs. mkcomposefs --from-file builds images from it, and
// composefs-info dump prints images in it; Parse and Write do the same for
// composefs.Node trees.
package dump

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
)

// Escaping modes of composefs-info's print_escaped.
const (
	escapeEqual    = 1 << iota // '=' as \x3d (xattr names and values)
	escapeLoneDash             // a value that is exactly "-" as \x2d
)

// appendEscaped appends s escaped as composefs-info prints it: backslash,
// newline, CR and tab as \\, \n, \r, \t; every byte that is not a graphic
// ASCII character as \xhh.
func appendEscaped(b []byte, s string, mode int) []byte {
	if mode&escapeLoneDash != 0 && s == "-" {
		return append(b, `\x2d`...)
	}
	const hexdigits = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '\r':
			b = append(b, `\r`...)
		case c == '\t':
			b = append(b, `\t`...)
		case c == '=' && mode&escapeEqual != 0,
			c < 0x21 || c > 0x7e:
			b = append(b, '\\', 'x', hexdigits[c>>4], hexdigits[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}

// Write writes the dump of the tree rooted at root, exactly as
// `composefs-info dump` prints an image holding that tree: depth first,
// entries in name order, xattrs in the order the nodes hold them. A node
// named by several entries (a hard link) is printed in full at the first
// entry and as an "@" line pointing at that path at the others.
//
// As with composefs-info, a file whose xattrs take more than 64 KiB once
// escaped gives a line that Parse and mkcomposefs reject ("too many
// xattrs").
func Write(w io.Writer, root *composefs.Node) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	d := &dumper{w: bw, root: root, seen: map[*composefs.Node]string{}}
	d.node("/", root)
	if d.err != nil {
		return d.err
	}
	return bw.Flush()
}

type dumper struct {
	w    *bufio.Writer
	root *composefs.Node
	buf  []byte
	seen map[*composefs.Node]string // hard-linked nodes already printed, by path
	err  error
}

func (d *dumper) node(path string, n *composefs.Node) {
	if d.err != nil {
		return
	}
	linkPath, isLink := "", false
	if n.NumLinks() > 1 {
		if p, ok := d.seen[n]; ok {
			linkPath, isLink = p, true
		} else {
			d.seen[n] = path
		}
	}
	b := appendEscaped(d.buf[:0], path, 0)
	b = append(b, ' ')
	size := n.Size
	if n.Type() == composefs.ModeSymlink {
		size = uint64(len(n.Payload)) // what an image stores
	}
	b = strconv.AppendUint(b, size, 10)
	b = append(b, ' ')
	if isLink {
		b = append(b, '@')
	}
	b = strconv.AppendUint(b, uint64(n.Mode), 8)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(n.Nlink), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(n.UID), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(n.GID), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(n.Rdev), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, n.Mtime.Sec, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(n.Mtime.Nsec), 10)
	b = append(b, ' ')
	switch {
	case isLink:
		b = appendEscaped(b, linkPath, escapeLoneDash)
	case n.Payload != "":
		b = appendEscaped(b, n.Payload, escapeLoneDash)
	default:
		b = append(b, '-')
	}
	b = append(b, ' ')
	if len(n.Content) > 0 {
		b = appendEscaped(b, string(n.Content), escapeLoneDash)
	} else {
		b = append(b, '-')
	}
	b = append(b, ' ')
	if n.Digest != nil {
		b = hex.AppendEncode(b, n.Digest)
	} else {
		b = append(b, '-')
	}
	for _, x := range n.Xattrs {
		b = append(b, ' ')
		b = appendEscaped(b, x.Key, escapeEqual)
		b = append(b, '=')
		b = appendEscaped(b, string(x.Value), escapeEqual)
	}
	b = append(b, '\n')
	d.buf = b
	if _, err := d.w.Write(b); err != nil {
		d.err = err
		return
	}
	if isLink {
		return
	}
	prefix := path
	if prefix == "/" {
		prefix = ""
	}
	for _, e := range n.Entries() {
		if e.Node == d.root {
			// A directory has one name, so only the root can be met
			// again: the tree is a cycle, which no image can hold.
			d.err = fmt.Errorf("dump: %s/%s is the root directory again (a cycle)", prefix, e.Name)
			return
		}
		d.node(prefix+"/"+e.Name, e.Node)
	}
}
