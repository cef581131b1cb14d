// Package initramfs builds cfsroot initramfs images: compressed newc cpio
// archives holding the static init, its config, the trusted certificates,
// an optional signed IPE policy, the kernel modules the init loads (with
// their dependencies, decompressed) and a load list, laid out as package
// initramfs/layout describes.
//
// Builds are reproducible: entries are sorted by path, owned by root, share
// one modification time (Spec.ModTime, from SOURCE_DATE_EPOCH in
// cmd/mkinitramfs) and get inode numbers in path order, so the same inputs
// give the same bytes. Building takes well under a second plus compression
// time: no Go toolchain is involved, unlike u-root's builders.
package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"

	"github.com/cfsroot/cfsroot/initramfs/kmod"
	"github.com/cfsroot/cfsroot/initramfs/layout"
	"github.com/cfsroot/cfsroot/internal/atomicfile"
)

// Compression is how the cpio archive is compressed. The kernel must have
// the matching CONFIG_RD_* option (Debian's kernels have all of them).
type Compression string

const (
	// Gzip is understood by every kernel (CONFIG_RD_GZIP).
	Gzip Compression = "gzip"
	// Zstd decompresses faster at boot (CONFIG_RD_ZSTD, Linux 5.9+).
	Zstd Compression = "zstd"
	// None writes the bare cpio archive.
	None Compression = "none"
)

// File is an extra file to put into the initramfs.
type File struct {
	// Src is the file on the host.
	Src string
	// Dst is its absolute path in the initramfs.
	Dst string
	// Mode holds the permission bits; zero means 0755 if Src is executable
	// by its owner, 0644 otherwise.
	Mode fs.FileMode
}

// Spec says what goes into an initramfs.
type Spec struct {
	// Init is the static init binary; it becomes /init. Required.
	Init string
	// ModuleDir is the kernel module tree (see kmod.Open); required when
	// Modules is not empty.
	ModuleDir string
	// Modules are the module names to carry and load; their hard and soft
	// dependencies are added.
	Modules []string
	// Certs are trusted certificates (PEM or DER X.509), stored under
	// layout.CertDir with their base names.
	Certs []string
	// FsverityCerts are the certificates of the keys that sign objects'
	// builtin fs-verity signatures (PEM or DER X.509), stored under
	// layout.FsverityCertDir with their base names; the init adds them to
	// the .fs-verity keyring (config key fsverity_certs).
	FsverityCerts []string
	// Config is the init's config file, stored as layout.Config; optional.
	Config string
	// Policy is a signed IPE policy (DER PKCS#7), stored as layout.Policy;
	// optional.
	Policy string
	// Files are extra files, e.g. a test program.
	Files []File
	// Compression defaults to Zstd, which the kernel unpacks faster than
	// gzip (Debian's kernels have CONFIG_RD_ZSTD).
	Compression Compression
	// ModTime is the modification time of every entry, in seconds since
	// the Unix epoch (SOURCE_DATE_EPOCH).
	ModTime int64
}

// Result describes a built initramfs.
type Result struct {
	// KernelVersion is the release of the module tree used, if any.
	KernelVersion string
	// Modules are the modules carried, in load order.
	Modules []kmod.Module
	// Builtin are the wanted modules that are built into the kernel, so
	// nothing was carried for them.
	Builtin []string
	// Paths are the archive's entries, sorted.
	Paths []string
	// Size is the compressed size in bytes; CPIOSize the uncompressed one.
	Size, CPIOSize int64
}

type entry struct {
	data []byte
	info cpio.Info
}

// Build writes the initramfs described by s to w.
func Build(w io.Writer, s Spec) (*Result, error) {
	if s.Init == "" {
		return nil, fmt.Errorf("initramfs: no init binary given")
	}
	comp := s.Compression
	if comp == "" {
		comp = Zstd
	}
	if comp != Gzip && comp != Zstd && comp != None {
		return nil, fmt.Errorf("initramfs: unknown compression %q (want gzip, zstd or none)", comp)
	}
	b := builder{entries: map[string]*entry{}}
	res := &Result{}

	if err := b.addFile(s.Init, layout.Init, 0o755); err != nil {
		return nil, err
	}
	if s.Config != "" {
		if err := b.addFile(s.Config, layout.Config, 0o644); err != nil {
			return nil, err
		}
	}
	for _, set := range []struct {
		certs []string
		dir   string
	}{{s.Certs, layout.CertDir}, {s.FsverityCerts, layout.FsverityCertDir}} {
		for _, c := range set.certs {
			data, err := os.ReadFile(c)
			if err != nil {
				return nil, fmt.Errorf("initramfs: certificate: %w", err)
			}
			if err := checkCert(data); err != nil {
				return nil, fmt.Errorf("initramfs: certificate %s: %w", c, err)
			}
			if err := b.add(path.Join(set.dir, filepath.Base(c)), data, 0o644); err != nil {
				return nil, err
			}
		}
	}
	if s.Policy != "" {
		data, err := os.ReadFile(s.Policy)
		if err != nil {
			return nil, fmt.Errorf("initramfs: IPE policy: %w", err)
		}
		// IPE takes the DER PKCS#7 that openssl smime -sign -nodetach
		// -outform der writes; PEM or a bare policy would fail at boot.
		if len(data) < 2 || data[0] != 0x30 {
			return nil, fmt.Errorf("initramfs: IPE policy %s is not DER PKCS#7 (sign it with openssl smime -sign -nodetach -noattr -binary -outform der)", s.Policy)
		}
		if err := b.add(layout.Policy, data, 0o644); err != nil {
			return nil, err
		}
	}
	if len(s.Modules) > 0 || s.ModuleDir != "" {
		if s.ModuleDir == "" {
			return nil, fmt.Errorf("initramfs: modules %v wanted but no module tree given", s.Modules)
		}
		if err := b.addModules(s.ModuleDir, s.Modules, res); err != nil {
			return nil, err
		}
	}
	for _, f := range s.Files {
		if err := b.addFile(f.Src, f.Dst, f.Mode); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"/dev", "/proc", "/sys", "/run", "/tmp"} {
		if err := b.dir(d); err != nil {
			return nil, err
		}
	}
	// The kernel opens /dev/console for PID 1's stdio before devtmpfs is
	// mounted; without the node the init would start with no output.
	if err := b.node("/dev/console", 0o600, 5, 1); err != nil {
		return nil, err
	}
	if err := b.node("/dev/null", 0o666, 1, 3); err != nil {
		return nil, err
	}

	cw := &countWriter{w: w}
	var zw io.WriteCloser
	switch comp {
	case Gzip:
		g, err := gzip.NewWriterLevel(cw, gzip.DefaultCompression)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		zw = g
	case Zstd:
		z, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedBetterCompression),
			zstd.WithEncoderConcurrency(1), zstd.WithZeroFrames(true))
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		zw = z
	default:
		zw = nopCloser{cw}
	}
	raw := &countWriter{w: zw}
	paths, err := b.write(raw, s.ModTime)
	if err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("initramfs: compressing: %w", err)
	}
	res.Paths = paths
	res.Size, res.CPIOSize = cw.n, raw.n
	return res, nil
}

// WriteFile builds the initramfs into the file name, atomically: a failed
// build leaves nothing behind and an existing file untouched.
func WriteFile(name string, s Spec) (*Result, error) {
	var res *Result
	var buildErr error
	err := atomicfile.Write(name, 0o644, func(w io.Writer) error {
		res, buildErr = Build(w, s)
		return buildErr
	})
	switch {
	case buildErr != nil:
		return nil, buildErr
	case err != nil:
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	return res, nil
}

func checkCert(data []byte) error {
	if block, rest := pem.Decode(data); block != nil {
		n := 0
		for ; block != nil; block, rest = pem.Decode(rest) {
			if block.Type != "CERTIFICATE" {
				return fmt.Errorf("PEM block %q is not a CERTIFICATE", block.Type)
			}
			if _, err := x509.ParseCertificate(block.Bytes); err != nil {
				return err
			}
			n++
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return fmt.Errorf("trailing data after %d PEM certificate(s)", n)
		}
		return nil
	}
	if _, err := x509.ParseCertificate(data); err != nil {
		return fmt.Errorf("not an X.509 certificate in PEM or DER: %w", err)
	}
	return nil
}

type builder struct {
	entries map[string]*entry
}

// add stores a regular file at the absolute path p, with its parents.
func (b *builder) add(p string, data []byte, perm fs.FileMode) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return fmt.Errorf("initramfs: destination %q must be a clean absolute file path", p)
	}
	if e, ok := b.entries[p]; ok {
		if e.isDir() {
			return fmt.Errorf("initramfs: %s is a directory of the initramfs and cannot be a file", p)
		}
		return fmt.Errorf("initramfs: two files for %s", p)
	}
	if err := b.dir(path.Dir(p)); err != nil {
		return err
	}
	b.entries[p] = &entry{data: data, info: cpio.Info{Mode: cpio.S_IFREG | uint64(perm.Perm()), NLink: 1}}
	return nil
}

func (b *builder) addFile(src, dst string, perm fs.FileMode) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s is not a regular file", src)
	}
	if perm == 0 {
		perm = 0o644
		if fi.Mode()&0o100 != 0 {
			perm = 0o755
		}
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return b.add(dst, data, perm)
}

// dir records p and its parents as directories.
func (b *builder) dir(p string) error {
	for ; p != "/" && p != "."; p = path.Dir(p) {
		if e, ok := b.entries[p]; ok {
			if !e.isDir() {
				return fmt.Errorf("initramfs: %s is a file of the initramfs and cannot be a directory", p)
			}
			continue
		}
		b.entries[p] = &entry{info: cpio.Info{Mode: cpio.S_IFDIR | 0o755, NLink: 2}}
	}
	return nil
}

func (e *entry) isDir() bool { return e.info.Mode&cpio.S_IFMT == cpio.S_IFDIR }

func (b *builder) node(p string, perm uint64, major, minor uint64) error {
	if _, ok := b.entries[p]; ok {
		return fmt.Errorf("initramfs: %s is reserved for a device node", p)
	}
	if err := b.dir(path.Dir(p)); err != nil {
		return err
	}
	b.entries[p] = &entry{info: cpio.Info{Mode: cpio.S_IFCHR | perm, NLink: 1, Rmajor: major, Rminor: minor}}
	return nil
}

func (b *builder) addModules(dir string, names []string, res *Result) error {
	tree, err := kmod.Open(dir)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	mods, err := tree.Resolve(names...)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	res.KernelVersion, res.Modules = tree.Version, mods
	for _, n := range names {
		if _, ok := tree.Path(n); !ok && tree.IsBuiltin(n) {
			res.Builtin = append(res.Builtin, n)
		}
	}
	base := path.Join(layout.ModulesRoot, tree.Version)
	var list []kmod.Entry
	dstOf := map[string]string{}
	for _, m := range mods {
		rel := stripCompression(m.Path)
		dst := path.Join(base, rel)
		data, err := readModule(filepath.Join(tree.Dir, filepath.FromSlash(m.Path)))
		if err != nil {
			return fmt.Errorf("initramfs: module %s: %w", m.Name, err)
		}
		if err := b.add(dst, data, 0o644); err != nil {
			return err
		}
		list = append(list, kmod.Entry{Path: dst, Optional: m.Optional})
		dstOf[m.Name] = rel
	}
	var l bytes.Buffer
	if err := kmod.WriteList(&l, list); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := b.add(layout.ModuleList, l.Bytes(), 0o644); err != nil {
		return err
	}
	// A modules.dep for just these modules lets u-root's kmodule.Probe
	// work in the initramfs too.
	var dep strings.Builder
	for _, m := range mods {
		dep.WriteString(dstOf[m.Name] + ":")
		for _, d := range tree.Deps(m.Name) {
			if r, ok := dstOf[d]; ok {
				dep.WriteString(" " + r)
			}
		}
		dep.WriteString("\n")
	}
	return b.add(path.Join(base, "modules.dep"), []byte(dep.String()), 0o644)
}

func stripCompression(p string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// readModule returns a module file's contents, decompressed: the kernel
// can decompress modules itself, but under emulation that took ten times
// as long as loading decompressed ones, and the archive's own compression
// keeps the size down anyway.
func readModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The xz decoder reads a byte at a time.
	br := bufio.NewReaderSize(f, 64<<10)
	var r io.Reader
	switch {
	case strings.HasSuffix(p, ".xz"):
		x, err := xz.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		r = x
	case strings.HasSuffix(p, ".gz"):
		g, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		r = g
	case strings.HasSuffix(p, ".zst"):
		z, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		defer z.Close()
		r = z
	default:
		r = br
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	// Every module is an ELF object; anything else means a broken file or
	// a wrong decompressor.
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s: not an ELF module after decompression", p)
	}
	return data, nil
}

// write writes the sorted records and the trailer.
func (b *builder) write(w io.Writer, mtime int64) ([]string, error) {
	paths := make([]string, 0, len(b.entries))
	for p := range b.entries {
		paths = append(paths, p)
	}
	// Byte order puts every directory before what it holds.
	sort.Strings(paths)
	rw := cpio.Newc.Writer(w)
	for i, p := range paths {
		e := b.entries[p]
		info := e.info
		info.Name = p
		rec := cpio.StaticRecord(e.data, info)
		if e.data == nil {
			rec.ReaderAt = nil
		}
		rec = cpio.MakeReproducible(rec)
		rec.Ino = uint64(i + 1)
		rec.MTime = uint64(mtime)
		if err := rw.WriteRecord(rec); err != nil {
			return nil, fmt.Errorf("initramfs: writing %s: %w", p, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return nil, fmt.Errorf("initramfs: writing trailer: %w", err)
	}
	return paths, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
