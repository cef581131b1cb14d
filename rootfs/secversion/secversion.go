// Package secversion is the security version and product name a composefs
// image carries for anti-rollback, inside the image so that the image's
// signature (over its fs-verity digest) covers them.
//
// The format is two small files in the image, stored inline (so they are
// part of the image's own bytes, not objects):
//
//	/.cfsroot/security-version   decimal, 0 to 2^64-1, no sign, no leading
//	                             zeros, one trailing newline ("3\n")
//	/.cfsroot/product            1 to 63 characters from A-Z a-z 0-9 . _ + @ ~ -,
//	                             one trailing newline ("appliance\n")
//
// Both are regular files, mode 0444, owner 0:0, mtime 0, in a directory
// /.cfsroot of mode 0555, owner 0:0, mtime 0: what `cfsroot mkimage
// --security-version N --product NAME` adds and what mkcomposefs writes for a
// tree holding the same files. An image without /.cfsroot/security-version
// has version 0; without /.cfsroot/product, product "". Anything else at
// those paths (another file type, an object instead of inline data, other
// bytes) is an error: the init refuses such an image rather than guess.
package secversion

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
)

// Paths in the image.
const (
	Dir         = "/.cfsroot"
	VersionPath = Dir + "/security-version"
	ProductPath = Dir + "/product"
)

// MaxProductLen is the longest product name: with its newline the file
// stays within composefs' 64-byte inline limit for files read from a
// directory, so mkcomposefs stores it inline too.
const MaxProductLen = 63

// Info is what an image says about itself.
type Info struct {
	// Version is the security version: the init refuses the image when it
	// is below the floor.
	Version uint64
	// Product names what the image is built for; the init refuses an image
	// whose product is not the config's.
	Product string
}

func (i Info) String() string {
	p := i.Product
	if p == "" {
		p = `""`
	}
	return fmt.Sprintf("version %d, product %s", i.Version, p)
}

// CheckProduct tells whether p can be a product name ("" is allowed and
// means none).
func CheckProduct(p string) error {
	if len(p) > MaxProductLen {
		return fmt.Errorf("product name %q is longer than %d characters", p, MaxProductLen)
	}
	if c, bad := BadNameChar(p); bad {
		return fmt.Errorf("product name %q has %q; only %s are allowed", p, c, NameChars)
	}
	return nil
}

// NameChars are the characters a product name, and an image name in the
// event log (package measure), may use: nothing a shell, a path or a log
// line would read as special.
const NameChars = "A-Z a-z 0-9 . _ + @ ~ -"

// BadNameChar returns the first byte of s that is not in NameChars, and
// whether there is one.
func BadNameChar(s string) (byte, bool) {
	for _, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '_' || c == '+' || c == '@' || c == '~' || c == '-':
		default:
			return c, true
		}
	}
	return 0, false
}

// Add puts info into the tree rooted at root, as /.cfsroot. It refuses a
// tree that already has /.cfsroot, so that what the image says is what was
// asked for.
func Add(root *composefs.Node, info Info) error {
	if !root.IsDir() {
		return errors.New("secversion: the tree's root is not a directory")
	}
	if err := CheckProduct(info.Product); err != nil {
		return fmt.Errorf("secversion: %w", err)
	}
	if root.Lookup(Dir[1:]) != nil {
		return fmt.Errorf("secversion: the tree already has %s; remove it, or build without --security-version and --product to keep it", Dir)
	}
	dir := &composefs.Node{Mode: composefs.ModeDir | 0o555, Nlink: 1}
	file := func(content string) *composefs.Node {
		return &composefs.Node{Mode: composefs.ModeRegular | 0o444, Nlink: 1, Size: uint64(len(content)), Content: []byte(content)}
	}
	if err := dir.Add("security-version", file(strconv.FormatUint(info.Version, 10)+"\n")); err != nil {
		return fmt.Errorf("secversion: %w", err)
	}
	if info.Product != "" {
		if err := dir.Add("product", file(info.Product+"\n")); err != nil {
			return fmt.Errorf("secversion: %w", err)
		}
	}
	if err := root.Add(Dir[1:], dir); err != nil {
		return fmt.Errorf("secversion: %w", err)
	}
	return nil
}

// ReadAt reads the version and product of the composefs image of the given
// size in r. It reads only the root directory, /.cfsroot and the two files,
// every structure bounds-checked by package reader, so a hostile image
// gives an error, never a panic or a large allocation.
func ReadAt(r io.ReaderAt, size int64) (Info, error) {
	img, err := reader.New(r, size)
	if err != nil {
		return Info{}, fmt.Errorf("secversion: %w", err)
	}
	return Read(img)
}

// Read reads the version and product of an open image.
func Read(img *reader.Image) (Info, error) {
	var info Info
	v, err := readFile(img, VersionPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return Info{}, err
	default:
		if info.Version, err = parseVersion(v); err != nil {
			return Info{}, fmt.Errorf("secversion: %s: %w", VersionPath, err)
		}
	}
	p, err := readFile(img, ProductPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return Info{}, err
	default:
		if len(p) < 2 || p[len(p)-1] != '\n' {
			return Info{}, fmt.Errorf("secversion: %s: want a name and one newline, got %q", ProductPath, p)
		}
		info.Product = string(p[:len(p)-1])
		if err := CheckProduct(info.Product); err != nil {
			return Info{}, fmt.Errorf("secversion: %s: %w", ProductPath, err)
		}
	}
	return info, nil
}

// readFile returns the inline content of the regular file at p.
func readFile(img *reader.Image, p string) ([]byte, error) {
	e, err := img.Lookup(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("secversion: %w", err)
	}
	switch {
	case !e.IsRegular():
		return nil, fmt.Errorf("secversion: %s is not a regular file (mode %#o)", p, e.Mode)
	case e.IsExternal() || e.Payload != "":
		return nil, fmt.Errorf("secversion: %s is stored as an object, not inline in the image", p)
	case len(e.Content) > MaxProductLen+1:
		return nil, fmt.Errorf("secversion: %s is %d bytes, at most %d allowed", p, len(e.Content), MaxProductLen+1)
	}
	return e.Content, nil
}

// parseVersion accepts exactly what Add writes.
func parseVersion(b []byte) (uint64, error) {
	if len(b) < 2 || b[len(b)-1] != '\n' {
		return 0, fmt.Errorf("want a decimal number and one newline, got %q", b)
	}
	s := string(b[:len(b)-1])
	if len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("leading zero in %q", s)
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("want a decimal number and one newline, got %q", b)
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	return v, nil
}
