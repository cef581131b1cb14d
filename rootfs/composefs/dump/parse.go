package dump

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
)

// MaxLineLen bounds one line of dump text. The fixed fields of a valid
// line (path, payload, inline content, all escaped) take well under 64 KiB
// and mkcomposefs caps the xattrs at 64 KiB, so real dumps stay far below it;
// the bound keeps hostile input from using unbounded memory.
const MaxLineLen = 1 << 20

// maxXattrText is mkcomposefs' cap on the text after the fixed fields.
const maxXattrText = 65535

// Options control Parse.
type Options struct {
	// Strict is mkcomposefs' strict mode (CFS_PARSE_STRICT, used by the
	// composefs tests): the last line must end in a newline, a symlink's
	// SIZE must be its target's length and it cannot have content, and
	// RDEV must be 0 except for devices.
	Strict bool
}

// Error is a parse error, with the 1-based line it is about.
type Error struct {
	Line int
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Field indexes of a dump line.
const (
	fPath = iota
	fSize
	fMode
	fNlink
	fUID
	fGID
	fRdev
	fMtime
	fPayload
	fContent
	fDigest
	nFixed
)

// Parse reads composefs dump text (as mkcomposefs --from-file does) and
// returns the root of the tree it describes; errors name the line. It
// accepts what mkcomposefs accepts, with these exceptions, all places where
// mkcomposefs would silently store something else than the text says:
// numbers must be plain decimal (octal for MODE; a leading "-" only for
// MTIME seconds) and fit their field (UID, GID, NLINK, RDEV and MTIME
// nanoseconds 32 bits); DIGEST must be 64 hex digits (an empty field only
// where no digest is used); paths, payloads and xattr names cannot contain
// NUL; a line is at most MaxLineLen bytes. opts nil means non-strict.
func Parse(r io.Reader, opts *Options) (*composefs.Node, error) {
	p := &parser{strict: opts != nil && opts.Strict}
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte // a line longer than the reader's buffer
	for {
		chunk, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			if len(long)+len(chunk) > MaxLineLen {
				return nil, &Error{p.line + 1, fmt.Errorf("line is longer than %d bytes", MaxLineLen)}
			}
			long = append(long, chunk...)
			continue
		}
		line := chunk
		if len(long) > 0 {
			long = append(long, chunk...)
			line = long
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("dump: read: %w", err)
		}
		if err == io.EOF && len(line) == 0 {
			break
		}
		p.line++
		if err == nil {
			line = line[:len(line)-1]
		} else if p.strict {
			return nil, &Error{p.line, errors.New("missing newline at the end of the last line (required in strict mode)")}
		}
		if len(line) > MaxLineLen {
			return nil, &Error{p.line, fmt.Errorf("line is longer than %d bytes", MaxLineLen)}
		}
		if perr := p.parseLine(line); perr != nil {
			return nil, &Error{p.line, perr}
		}
		if err == io.EOF {
			break
		}
		long = long[:0]
	}
	if p.root == nil {
		return nil, errors.New("dump: no files in the dump (the first line must be the root directory \"/\")")
	}
	if err := p.resolveLinks(); err != nil {
		return nil, err
	}
	return p.root, nil
}

type parser struct {
	strict bool
	line   int
	root   *composefs.Node
	links  []*hardlink
	isLink map[*composefs.Node]*hardlink
}

// hardlink is an "@" line: a placeholder entry until all lines are read.
type hardlink struct {
	line   int
	parent *composefs.Node
	name   string
	node   *composefs.Node // the placeholder
	target *string         // path of the target, nil for "-"
}

// unescape decodes a dump field (unescape_string).
func unescape(s []byte) ([]byte, error) {
	if bytes.IndexByte(s, '\\') < 0 {
		return s, nil
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(s) {
			return nil, errors.New(`"\" at the end of a field (nothing to escape)`)
		}
		switch s[i] {
		case '\\':
			out = append(out, '\\')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'x':
			if i+2 >= len(s) {
				return nil, errors.New(`"\x" needs two hex digits`)
			}
			h1, ok1 := unhex(s[i+1])
			h2, ok2 := unhex(s[i+2])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf(`invalid hex escape "\x%s"`, s[i+1:i+3])
			}
			out = append(out, h1<<4|h2)
			i += 2
		default:
			return nil, fmt.Errorf(`unsupported escape "\%c" (use \\, \n, \r, \t or \xHH)`, s[i])
		}
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// optional decodes a field where "-" means unset.
func optional(s []byte) ([]byte, bool, error) {
	if len(s) == 1 && s[0] == '-' {
		return nil, false, nil
	}
	u, err := unescape(s)
	return u, err == nil, err
}

func parseUint(name string, s []byte, base int, bitSize int) (uint64, error) {
	if len(s) == 0 {
		return 0, fmt.Errorf("%s is missing", name)
	}
	for _, c := range s {
		if c < '0' || c > '9' || (base == 8 && c > '7') {
			return 0, fmt.Errorf("%s %q is not a %s number", name, s, map[int]string{8: "octal", 10: "decimal"}[base])
		}
	}
	v, err := strconv.ParseUint(string(s), base, bitSize)
	if err != nil {
		return 0, fmt.Errorf("%s %q is out of range (at most %d bits)", name, s, bitSize)
	}
	return v, nil
}

func parseMtime(s []byte) (composefs.Time, error) {
	secS, nsecS, ok := bytes.Cut(s, []byte{'.'})
	if !ok {
		return composefs.Time{}, fmt.Errorf("MTIME %q is not SECONDS.NANOSECONDS", s)
	}
	neg := false
	if len(secS) > 0 && secS[0] == '-' {
		neg, secS = true, secS[1:]
	}
	sec, err := parseUint("MTIME seconds", secS, 10, 63)
	if err != nil {
		return composefs.Time{}, err
	}
	nsec, err := parseUint("MTIME nanoseconds", nsecS, 10, 32)
	if err != nil {
		return composefs.Time{}, err
	}
	t := composefs.Time{Sec: int64(sec), Nsec: uint32(nsec)}
	if neg {
		t.Sec = -t.Sec
	}
	return t, nil
}

// splitPath splits a dump path into its components as mkcomposefs'
// lookup_parent_path reads it: leading and repeated slashes are skipped,
// but a trailing slash leaves an empty (invalid) final name.
func splitPath(p string) []string {
	p = strings.TrimLeft(p, "/")
	parts := strings.Split(p, "/")
	out := parts[:0]
	for i, c := range parts {
		if c != "" || i == len(parts)-1 {
			out = append(out, c)
		}
	}
	return out
}

func (p *parser) parseLine(line []byte) error {
	if i := bytes.IndexByte(line, 0); i >= 0 {
		return fmt.Errorf("NUL byte at position %d (write it as \\x00)", i)
	}
	var f [nFixed][]byte
	rest := line
	for i := range f {
		field, after, found := bytes.Cut(rest, []byte{' '})
		f[i] = field
		if found {
			rest = after
		} else {
			rest = nil
		}
	}
	pathB, err := unescape(f[fPath])
	if err != nil {
		return fmt.Errorf("PATH: %w", err)
	}
	if len(pathB) == 0 {
		return errors.New("empty PATH")
	}
	path := string(pathB)
	if strings.IndexByte(path, 0) >= 0 {
		return fmt.Errorf("PATH %q contains a NUL byte", path)
	}

	modeS := f[fMode]
	isLink := len(modeS) > 0 && modeS[0] == '@'
	if isLink {
		modeS = modeS[1:]
	}
	mode64, err := parseUint("MODE", modeS, 8, 32)
	if err != nil {
		return err
	}
	mode := uint32(mode64)
	if !validType(mode) {
		return fmt.Errorf("invalid MODE %o (not a known file type)", mode)
	}
	n := composefs.NewNode(mode)
	if err := p.add(path, n, isLink); err != nil {
		return err
	}
	if isLink {
		if n.IsDir() {
			return fmt.Errorf("%s: directories cannot be hard links", path)
		}
		target, ok, err := optional(f[fPayload])
		if err != nil {
			return fmt.Errorf("PAYLOAD: %w", err)
		}
		h := p.links[len(p.links)-1]
		if ok {
			t := string(target)
			h.target = &t
		}
		return nil
	}

	size, err := parseUint("SIZE", f[fSize], 10, 64)
	if err != nil {
		return err
	}
	nlink, err := parseUint("NLINK", f[fNlink], 10, 32)
	if err != nil {
		return err
	}
	uid, err := parseUint("UID", f[fUID], 10, 32)
	if err != nil {
		return err
	}
	gid, err := parseUint("GID", f[fGID], 10, 32)
	if err != nil {
		return err
	}
	rdev, err := parseUint("RDEV", f[fRdev], 10, 64)
	if err != nil {
		return err
	}
	mtime, err := parseMtime(f[fMtime])
	if err != nil {
		return err
	}
	payload, hasPayload, err := optional(f[fPayload])
	if err != nil {
		return fmt.Errorf("PAYLOAD: %w", err)
	}
	content, hasContent, err := optional(f[fContent])
	if err != nil {
		return fmt.Errorf("CONTENT: %w", err)
	}
	if hasContent && uint64(len(content)) != size {
		return fmt.Errorf("CONTENT is %d bytes but SIZE is %d", len(content), size)
	}
	digestS, hasDigest, err := optional(f[fDigest])
	if err != nil {
		return fmt.Errorf("DIGEST: %w", err)
	}

	typ := mode & composefs.ModeTypeMask
	if typ != composefs.ModeSymlink {
		n.Size = size
	}
	n.Nlink = uint32(nlink)
	n.UID = uint32(uid)
	n.GID = uint32(gid)
	if typ == composefs.ModeCharDev || typ == composefs.ModeBlockDev {
		if rdev > 0xFFFFFFFF {
			return fmt.Errorf("RDEV %d does not fit the 32 bits composefs stores", rdev)
		}
		n.Rdev = uint32(rdev)
	} else if p.strict && rdev != 0 {
		return fmt.Errorf("RDEV is %d but only devices have one (strict mode)", rdev)
	}
	n.Mtime = mtime
	if hasPayload && bytes.IndexByte(payload, 0) >= 0 {
		return errors.New("PAYLOAD contains a NUL byte")
	}
	if typ == composefs.ModeSymlink {
		if !hasPayload || len(payload) == 0 {
			return errors.New("symlink without a target (PAYLOAD is empty)")
		}
		if len(payload) > composefs.MaxSymlinkLen {
			return fmt.Errorf("symlink target is %d bytes, at most %d allowed", len(payload), composefs.MaxSymlinkLen)
		}
		n.Payload = string(payload)
		n.Size = uint64(len(payload))
		if p.strict {
			if size != uint64(len(payload)) {
				return fmt.Errorf("symlink SIZE is %d but its target is %d bytes (strict mode)", size, len(payload))
			}
			if hasContent && len(content) > 0 {
				return errors.New("a symlink cannot have CONTENT (strict mode)")
			}
		}
	} else {
		if len(payload) > composefs.MaxSymlinkLen {
			return fmt.Errorf("PAYLOAD is %d bytes, at most %d allowed", len(payload), composefs.MaxSymlinkLen)
		}
		n.Payload = string(payload)
		if hasContent {
			if len(content) > composefs.MaxInlineContent {
				return fmt.Errorf("inline CONTENT is %d bytes, at most %d allowed", len(content), composefs.MaxInlineContent)
			}
			if len(content) > 0 {
				n.Content = bytes.Clone(content)
			}
		}
	}
	if typ == composefs.ModeRegular && n.Content == nil && n.Size > composefs.MaxFileSize {
		return fmt.Errorf("SIZE %d is too big for an external file (at most %d bytes)", n.Size, uint64(composefs.MaxFileSize))
	}
	if hasDigest && len(digestS) == 0 {
		// A missing DIGEST field (the line ends early). mkcomposefs then
		// sets a digest of uninitialized bytes; that matters only where
		// the digest is used, so only there is it an error.
		if typ == composefs.ModeRegular && n.Size > 0 && n.Content == nil {
			return errors.New("DIGEST field is empty (use - for no digest)")
		}
		hasDigest = false
	}
	if hasDigest {
		if len(digestS) != 2*composefs.DigestSize {
			return fmt.Errorf("DIGEST must be %d hex digits (fs-verity SHA-256), got %d characters", 2*composefs.DigestSize, len(digestS))
		}
		d := make([]byte, composefs.DigestSize)
		for i := range d {
			h1, ok1 := unhex(digestS[2*i])
			h2, ok2 := unhex(digestS[2*i+1])
			if !ok1 || !ok2 {
				return fmt.Errorf("DIGEST %q is not hex", digestS)
			}
			d[i] = h1<<4 | h2
		}
		n.Digest = d
	}

	if len(rest) > maxXattrText {
		return fmt.Errorf("too many xattrs: %d bytes after the fixed fields, at most %d allowed", len(rest), maxXattrText)
	}
	acct := xattrAccount{}
	for rest != nil {
		field, after, found := bytes.Cut(rest, []byte{' '})
		if found {
			rest = after
		} else {
			rest = nil
		}
		if err := p.parseXattr(n, field, &acct); err != nil {
			return err
		}
	}
	return nil
}

func validType(mode uint32) bool {
	switch mode & composefs.ModeTypeMask {
	case composefs.ModeRegular, composefs.ModeDir, composefs.ModeSymlink, composefs.ModeBlockDev,
		composefs.ModeCharDev, composefs.ModeSocket, composefs.ModeFIFO:
		return true
	}
	return false
}

// xattrAccount is libcomposefs' per-node xattr size accounting
// (lcfs_node_set_xattr with external input).
type xattrAccount struct{ size int }

func (p *parser) parseXattr(n *composefs.Node, field []byte, acct *xattrAccount) error {
	keyS, valS, ok := bytes.Cut(field, []byte{'='})
	if !ok {
		if len(field) == 0 {
			return errors.New(`empty xattr (two spaces in a row, or a space at the end of the line)`)
		}
		return fmt.Errorf("xattr %q has no \"=\"", field)
	}
	key, err := unescape(keyS)
	if err != nil {
		return fmt.Errorf("xattr name: %w", err)
	}
	val, err := unescape(valS)
	if err != nil {
		return fmt.Errorf("xattr %s value: %w", key, err)
	}
	switch {
	case len(key) == 0:
		return errors.New("xattr with an empty name")
	case len(key) > composefs.MaxXattrKeyLen:
		return fmt.Errorf("xattr name is %d bytes, at most %d allowed", len(key), composefs.MaxXattrKeyLen)
	case bytes.IndexByte(key, 0) >= 0:
		return fmt.Errorf("xattr name %q contains a NUL byte", key)
	case len(val) > composefs.MaxXattrValueLen:
		return fmt.Errorf("xattr %s: value is %d bytes, at most %d allowed", key, len(val), composefs.MaxXattrValueLen)
	}
	k := string(key)
	const overhead = 7 // 2*sizeof(struct erofs_xattr_entry)-1
	if old, ok := n.Xattr(k); ok {
		n.RemoveXattr(k)
		if len(n.Xattrs) > 0 {
			acct.size -= overhead + len(k) + len(old)
		} else {
			acct.size = 0
		}
	}
	entry := overhead + len(k) + len(val)
	if len(n.Xattrs) == 0 {
		entry += 12
	}
	if acct.size+entry > composefs.MaxInodeXattrSize {
		return fmt.Errorf("xattrs of this file exceed %d bytes (at %s)", composefs.MaxInodeXattrSize, k)
	}
	acct.size += entry
	n.Xattrs = append(n.Xattrs, composefs.Xattr{Key: k, Value: bytes.Clone(val)})
	return nil
}

// add puts n at path (tree_add_node).
func (p *parser) add(fullPath string, n *composefs.Node, isLink bool) error {
	path := short(fullPath) // for messages
	if fullPath == "/" {
		if !n.IsDir() {
			return errors.New("the root \"/\" must be a directory")
		}
		if p.root != nil {
			return errors.New("a second root \"/\"")
		}
		p.root = n
		return nil
	}
	if p.root == nil {
		return fmt.Errorf("%s: the first line must be the root directory \"/\"", path)
	}
	parts := splitPath(fullPath)
	dir := p.root
	for _, c := range parts[:len(parts)-1] {
		next := dir.Lookup(c)
		if next == nil {
			return fmt.Errorf("%s: parent directory missing (parents must come before their children)", path)
		}
		dir = next
	}
	if !dir.IsDir() {
		return fmt.Errorf("%s: parent is not a directory", path)
	}
	name := parts[len(parts)-1]
	if name == "." || name == ".." {
		return fmt.Errorf("%s: invalid . or .. in path", path)
	}
	if err := composefs.CheckName(name); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := dir.Add(name, n); err != nil {
		if errors.Is(err, composefs.ErrExist) {
			return fmt.Errorf("%s: path already exists", path)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	if isLink {
		h := &hardlink{line: p.line, parent: dir, name: name, node: n}
		p.links = append(p.links, h)
		if p.isLink == nil {
			p.isLink = map[*composefs.Node]*hardlink{}
		}
		p.isLink[n] = h
	}
	return nil
}

// short shortens a path for an error message.
func short(path string) string {
	if len(path) > 200 {
		return path[:100] + "…" + path[len(path)-100:]
	}
	return path
}

// lookup finds the node at path (lookup_path): empty components are
// skipped.
func (p *parser) lookup(path string) *composefs.Node {
	n := p.root
	for _, c := range strings.Split(path, "/") {
		if c == "" {
			continue
		}
		if n = n.Lookup(c); n == nil {
			return nil
		}
	}
	return n
}

// resolveLinks replaces the "@" placeholders by the nodes they name
// (tree_resolve_hardlinks). A link may name another link; the chain is
// followed to a real node.
func (p *parser) resolveLinks() error {
	final := map[*hardlink]*composefs.Node{}
	var resolve func(h *hardlink, depth int) (*composefs.Node, error)
	resolve = func(h *hardlink, depth int) (*composefs.Node, error) {
		if t, ok := final[h]; ok {
			return t, nil
		}
		if depth > len(p.links) {
			return nil, &Error{h.line, errors.New("hard links form a cycle")}
		}
		if h.target == nil {
			return nil, &Error{h.line, errors.New("hard link without a target path (PAYLOAD is -)")}
		}
		t := p.lookup(*h.target)
		if t == nil {
			return nil, &Error{h.line, fmt.Errorf("hard link target %s does not exist", short(*h.target))}
		}
		if t == h.node {
			return nil, &Error{h.line, fmt.Errorf("hard link %s points to itself", short(*h.target))}
		}
		if th, ok := p.isLink[t]; ok {
			var err error
			if t, err = resolve(th, depth+1); err != nil {
				return nil, err
			}
		}
		if t.IsDir() {
			return nil, &Error{h.line, fmt.Errorf("hard link target %s is a directory", short(*h.target))}
		}
		final[h] = t
		return t, nil
	}
	for i := len(p.links) - 1; i >= 0; i-- {
		if _, err := resolve(p.links[i], 0); err != nil {
			return err
		}
	}
	for _, h := range p.links {
		h.parent.Remove(h.name)
		if err := h.parent.Add(h.name, final[h]); err != nil {
			return &Error{h.line, err}
		}
	}
	return nil
}
