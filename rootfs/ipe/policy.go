package ipe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// MaxPolicySize is the largest signed policy (the whole DER PKCS#7 message)
// the kernel accepts: it parses PKCS#7 with its ASN.1 BER decoder
// (lib/asn1_decoder.c), which refuses messages over 65535 bytes with
// EMSGSIZE. (Writes over 4 MiB fail earlier, with ENOMEM.) At RuleSize bytes
// per rule, about 570 fsverity_digest rules fit (Policy.MaxRules).
const MaxPolicySize = 65535

// RuleSize is the length of one `op=EXECUTE fsverity_digest=sha256:<hex>
// action=ALLOW` line, newline included.
const RuleSize = 112

// SignatureOverhead is about what a signature adds to the policy text: a
// PKCS#7 message with a 2048-bit RSA signature and its certificate embedded
// (as `cfsroot policy sign` and openssl write by default). Without the
// certificate it is about 500 bytes.
const SignatureOverhead = 1300

// MaxRules returns how many SHA-256 fsverity_digest rules p can hold (p's
// own Digests aside) when the signature adds overhead bytes to the text.
func (p *Policy) MaxRules(overhead int) int {
	q := *p
	q.Digests = nil
	text, err := q.MarshalText()
	if err != nil {
		return 0
	}
	return max(0, (MaxPolicySize-overhead-len(text))/RuleSize)
}

// MaxNameLen bounds policy names: the name becomes a securityfs directory
// (policies/NAME), so it must be a valid file name.
const MaxNameLen = 255

// Files selects which files of an image a generated policy lets execute.
type Files int

const (
	// ExecFiles selects executables: regular files with an execute bit, ELF
	// objects (shared libraries are mapped PROT_EXEC by the loader, which IPE
	// checks as op=EXECUTE) and "#!" scripts.
	ExecFiles Files = iota
	// AllFiles selects every file that has an object.
	AllFiles
)

// String returns the name ParseFiles accepts.
func (f Files) String() string {
	switch f {
	case ExecFiles:
		return "exec"
	case AllFiles:
		return "all"
	}
	return fmt.Sprintf("Files(%d)", int(f))
}

// ParseFiles parses "exec" or "all".
func ParseFiles(s string) (Files, error) {
	switch s {
	case "exec":
		return ExecFiles, nil
	case "all":
		return AllFiles, nil
	}
	return 0, fmt.Errorf("file selection %q: want exec or all", s)
}

// Policy is an IPE policy that allows everything except execution, and
// allows execution of files whose fs-verity digest is listed (and, if asked,
// of files from the initramfs).
type Policy struct {
	Name    string // policy_name: a securityfs directory name, no spaces or '#'
	Version string // policy_version: A.B.C, each a number from 0 to 65535
	// AllowBootVerified adds `op=EXECUTE boot_verified=TRUE action=ALLOW`:
	// execution from the initramfs (the superblock the kernel unpacked it
	// into), needed only when the policy is active before switch_root.
	AllowBootVerified bool
	// AllowSigned adds `op=EXECUTE fsverity_signature=TRUE action=ALLOW`:
	// execution of any file whose fs-verity was enabled with a builtin
	// signature the kernel verified against the .fs-verity keyring (through
	// a composefs overlay, IPE looks at the object). One rule for a whole
	// root, whatever its size: the signature mode.
	AllowSigned bool
	// Digests are the fs-verity digests allowed to execute, one rule each,
	// written in this order (IPE evaluates rules in order).
	Digests []verity.Digest
}

// MarshalText returns the policy text:
//
//	policy_name=NAME policy_version=A.B.C
//	DEFAULT action=ALLOW
//	DEFAULT op=EXECUTE action=DENY
//	op=EXECUTE boot_verified=TRUE action=ALLOW            (AllowBootVerified)
//	op=EXECUTE fsverity_signature=TRUE action=ALLOW       (AllowSigned)
//	op=EXECUTE fsverity_digest=sha256:<hex> action=ALLOW  (one per digest)
//
// Operations other than EXECUTE (KMODULE, FIRMWARE, KEXEC_*, POLICY,
// X509_CERT) are allowed: kernel modules are left to the kernel's module
// signature check, which Secure Boot's lockdown enforces.
func (p *Policy) MarshalText() ([]byte, error) {
	if err := CheckName(p.Name); err != nil {
		return nil, fmt.Errorf("ipe policy: %w", err)
	}
	if _, err := ParseVersion(p.Version); err != nil {
		return nil, fmt.Errorf("ipe policy: %w", err)
	}
	var b bytes.Buffer
	b.Grow(128 + len(p.Digests)*112)
	fmt.Fprintf(&b, "policy_name=%s policy_version=%s\n", p.Name, p.Version)
	b.WriteString("DEFAULT action=ALLOW\n")
	b.WriteString("DEFAULT op=EXECUTE action=DENY\n")
	if p.AllowBootVerified {
		b.WriteString("op=EXECUTE boot_verified=TRUE action=ALLOW\n")
	}
	if p.AllowSigned {
		b.WriteString("op=EXECUTE fsverity_signature=TRUE action=ALLOW\n")
	}
	for _, d := range p.Digests {
		if n := d.Algorithm.Size(); n == 0 || len(d.Sum) != n {
			return nil, fmt.Errorf("ipe policy: invalid fs-verity digest %s", d)
		}
		// IPE compares the algorithm by the kernel's hash name ("sha256",
		// "sha512"), which is what Digest.String prints.
		fmt.Fprintf(&b, "op=EXECUTE fsverity_digest=%s action=ALLOW\n", d)
	}
	return b.Bytes(), nil
}

// CheckName reports whether name can be an IPE policy name: the kernel takes
// the rest of the policy_name= token (so no blanks or '#'), and makes it a
// securityfs directory (so no '/', not "." or "..").
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty policy name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("policy name is %d bytes, at most %d allowed", len(name), MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("policy name %q is reserved", name)
	}
	for _, c := range []byte(name) {
		if c <= ' ' || c == 0x7f || c == '/' || c == '#' {
			return fmt.Errorf("policy name %q: no spaces, control characters, '/' or '#' allowed", name)
		}
	}
	return nil
}

// ParseVersion parses an IPE policy version "A.B.C" (three decimal numbers of
// 0 to 65535) into a number that orders versions as the kernel does.
func ParseVersion(v string) (uint64, error) {
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return 0, fmt.Errorf("version %q: want A.B.C", v)
	}
	var n uint64
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return 0, fmt.Errorf("version %q: want A.B.C with decimal numbers", v)
		}
		x, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("version %q: each number must be at most 65535", v)
		}
		n = n<<16 | x
	}
	return n, nil
}

// GenerateOptions control Generate.
type GenerateOptions struct {
	Name    string
	Version string
	Files   Files
	// AllowBootVerified: see Policy.
	AllowBootVerified bool
	// Objects is the object store the image refers to (what overlayfs uses
	// as its data-only layer; names are the image's payloads, "ab/cdef…"),
	// used to read the first bytes of external files to tell ELF objects and
	// scripts. nil: external files are judged by their mode and name only
	// (an execute bit, or a name ending in ".so" or containing ".so.").
	Objects fs.FS
	// Source, instead of Objects, is the tree the image was built from:
	// external files are read by their path in the image. It must not have
	// changed since (only the choice of files depends on it; the rules'
	// digests always come from the image).
	Source fs.FS
}

// Generated is a policy made by Generate and what the caller should be told.
type Generated struct {
	Policy Policy
	// Selected is how many files (names, counting hard links) the chosen
	// files with objects are; the rules are their distinct digests.
	Selected int
	// InlineExecutables are the paths of executables stored inline in the
	// image (at most a few dozen bytes): they have no object and no
	// fs-verity digest, so no rule can allow them and IPE will deny their
	// execution. Build the image with executables kept external to fix it.
	InlineExecutables []string
	// NoDigest are the paths of chosen external files whose image entry has
	// no fs-verity digest: no rule can name them (and a verity=require mount
	// refuses to open them anyway).
	NoDigest []string
	// ContentChecked reports whether external files were judged by their
	// content (Objects or Source was given) rather than by mode and name
	// only.
	ContentChecked bool
}

// Generate makes a policy that allows executing the chosen files of img.
func Generate(img *reader.Image, opts GenerateOptions) (*Generated, error) {
	if err := CheckName(opts.Name); err != nil {
		return nil, fmt.Errorf("ipe policy: %w", err)
	}
	if _, err := ParseVersion(opts.Version); err != nil {
		return nil, fmt.Errorf("ipe policy: %w", err)
	}
	if opts.Files != ExecFiles && opts.Files != AllFiles {
		return nil, fmt.Errorf("ipe policy: unknown file selection %v", opts.Files)
	}
	g := &Generated{
		Policy:         Policy{Name: opts.Name, Version: opts.Version, AllowBootVerified: opts.AllowBootVerified},
		ContentChecked: opts.Objects != nil || opts.Source != nil,
	}
	seen := map[string]bool{}
	err := img.Walk(func(e *reader.Entry) error {
		switch {
		case e.IsInline():
			if isExecutable(e.Mode, e.Content) {
				g.InlineExecutables = append(g.InlineExecutables, e.Path)
			}
			return nil
		case !e.IsExternal():
			return nil
		}
		if opts.Files == ExecFiles {
			exec, err := externalIsExecutable(e, opts.Objects, opts.Source)
			if err != nil {
				return err
			}
			if !exec {
				return nil
			}
		}
		g.Selected++
		if len(e.Digest.Sum) == 0 {
			g.NoDigest = append(g.NoDigest, e.Path)
			return nil
		}
		if k := e.Digest.String(); !seen[k] {
			seen[k] = true
			g.Policy.Digests = append(g.Policy.Digests, e.Digest)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipe policy: %w", err)
	}
	// Sorted by digest: the same image gives the same policy bytes, whatever
	// the walk order, and a diff between two policies shows what changed.
	sort.Slice(g.Policy.Digests, func(i, j int) bool {
		a, b := g.Policy.Digests[i], g.Policy.Digests[j]
		if a.Algorithm != b.Algorithm {
			return a.Algorithm < b.Algorithm
		}
		return bytes.Compare(a.Sum, b.Sum) < 0
	})
	return g, nil
}

// headSize is how much of a file isExecutable looks at.
const headSize = 4

// isExecutable tells an executable from its mode and first bytes: an execute
// bit, an ELF header, or "#!".
func isExecutable(mode uint32, head []byte) bool {
	return mode&0o111 != 0 || bytes.HasPrefix(head, []byte("\x7fELF")) || bytes.HasPrefix(head, []byte("#!"))
}

// externalIsExecutable judges an external file by its mode and the first
// bytes of its object (or source file); without either, by mode and name.
func externalIsExecutable(e *reader.Entry, objects, source fs.FS) (bool, error) {
	if e.Mode&0o111 != 0 {
		return true, nil
	}
	var (
		f   fs.File
		err error
		src string
	)
	switch {
	case source != nil:
		src = strings.TrimPrefix(e.Path, "/")
		if f, err = source.Open(src); err != nil {
			return false, fmt.Errorf("%s: %w (is the source tree the one the image was built from?)", e.Path, err)
		}
	case objects != nil:
		if e.Payload == "" {
			return false, fmt.Errorf("%s: external file without an object path (redirect); cannot find its object", e.Path)
		}
		src = "object " + e.Payload
		if f, err = objects.Open(e.Payload); err != nil {
			return false, fmt.Errorf("%s: %s: %w (is the object store the one the image was built with?)", e.Path, src, err)
		}
	default:
		base := path.Base(e.Path)
		return strings.HasSuffix(base, ".so") || strings.Contains(base, ".so."), nil
	}
	defer f.Close()
	head := make([]byte, headSize)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("%s: %s: %w", e.Path, src, err)
	}
	return isExecutable(e.Mode, head[:n]), nil
}

// Check parses a policy text as the kernel's IPE parser does (Linux 6.12,
// security/ipe/policy_parser.c) and reports the first error, so that a
// broken policy is caught before it is signed rather than as EBADMSG at
// boot. It returns the header.
func Check(text []byte) (Header, error) {
	var h Header
	headerSeen := false
	globalDefault := false
	opDefaults := map[string]bool{}
	for i, line := range splitLines(text) {
		if line == "" {
			continue
		}
		lineno := i + 1
		if !headerSeen {
			var err error
			if h, err = parseHeaderLine(line); err != nil {
				return Header{}, fmt.Errorf("ipe policy: line %d: %w", lineno, err)
			}
			headerSeen = true
			continue
		}
		if err := checkRule(line, &globalDefault, opDefaults); err != nil {
			return Header{}, fmt.Errorf("ipe policy: line %d: %w", lineno, err)
		}
	}
	if !headerSeen {
		return Header{}, errors.New("ipe policy: no header line (policy_name=N policy_version=A.B.C)")
	}
	if !globalDefault && len(opDefaults) < len(ipeOps) {
		return Header{}, errors.New("ipe policy: no default action: add `DEFAULT action=ALLOW|DENY` or a DEFAULT for every operation")
	}
	return h, nil
}

// splitLines splits a policy as the kernel does: at '\n' and '\r', dropping
// everything from '#' to the end of the line and trailing blanks.
func splitLines(text []byte) []string {
	raw := strings.Split(strings.ReplaceAll(string(text), "\r", "\n"), "\n")
	for i, l := range raw {
		if j := strings.IndexByte(l, '#'); j >= 0 {
			l = l[:j]
		}
		raw[i] = strings.TrimRight(l, " \t\v\f")
	}
	return raw
}

// parseHeaderLine parses "policy_name=N policy_version=A.B.C", in this order
// and nothing else, as the kernel requires.
func parseHeaderLine(line string) (Header, error) {
	f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
	if len(f) != 2 || !strings.HasPrefix(f[0], "policy_name=") || !strings.HasPrefix(f[1], "policy_version=") {
		return Header{}, fmt.Errorf("header %q: want exactly `policy_name=N policy_version=A.B.C`", line)
	}
	h := Header{Name: strings.TrimPrefix(f[0], "policy_name="), Version: strings.TrimPrefix(f[1], "policy_version=")}
	if err := CheckName(h.Name); err != nil {
		return Header{}, err
	}
	if _, err := ParseVersion(h.Version); err != nil {
		return Header{}, err
	}
	return h, nil
}

// ipeOps are the operations of the 6.12 parser.
var ipeOps = map[string]bool{
	"EXECUTE": true, "FIRMWARE": true, "KMODULE": true, "KEXEC_IMAGE": true,
	"KEXEC_INITRAMFS": true, "POLICY": true, "X509_CERT": true,
}

// checkRule checks one rule line: [DEFAULT] op=OP [property...] action=ACT.
func checkRule(line string, globalDefault *bool, opDefaults map[string]bool) error {
	f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
	isDefault := f[0] == "DEFAULT"
	if isDefault {
		f = f[1:]
	}
	if len(f) == 0 {
		return fmt.Errorf("%q: missing action=", line)
	}
	action := f[len(f)-1]
	if action != "action=ALLOW" && action != "action=DENY" {
		return fmt.Errorf("%q: the last token must be action=ALLOW or action=DENY", line)
	}
	f = f[:len(f)-1]
	op := ""
	if len(f) > 0 {
		o, ok := strings.CutPrefix(f[0], "op=")
		if !ok || !ipeOps[o] {
			return fmt.Errorf("%q: %q is not a known operation (op=EXECUTE, op=KMODULE, ...)", line, f[0])
		}
		op, f = o, f[1:]
	}
	if isDefault {
		switch {
		case len(f) > 0:
			return fmt.Errorf("%q: a DEFAULT rule takes no properties", line)
		case op == "" && *globalDefault, op != "" && opDefaults[op]:
			return fmt.Errorf("%q: duplicate DEFAULT", line)
		case op == "":
			*globalDefault = true
		default:
			opDefaults[op] = true
		}
		return nil
	}
	if op == "" {
		return fmt.Errorf("%q: a rule needs op=", line)
	}
	for _, p := range f {
		if err := checkProperty(p); err != nil {
			return fmt.Errorf("%q: %w", line, err)
		}
	}
	return nil
}

func checkProperty(p string) error {
	switch p {
	case "boot_verified=TRUE", "boot_verified=FALSE",
		"dmverity_signature=TRUE", "dmverity_signature=FALSE",
		"fsverity_signature=TRUE", "fsverity_signature=FALSE":
		return nil
	}
	k, v, _ := strings.Cut(p, "=")
	if k != "fsverity_digest" && k != "dmverity_roothash" {
		return fmt.Errorf("unknown property %q", p)
	}
	alg, hexpart, ok := strings.Cut(v, ":")
	if !ok || alg == "" || hexpart == "" {
		return fmt.Errorf("%s: want ALG:HEX", p)
	}
	if k == "fsverity_digest" {
		// Only these can ever match: the kernel compares with the name of
		// the file's fs-verity hash algorithm.
		if _, err := verity.ParseDigest(v); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	}
	for _, c := range hexpart {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return fmt.Errorf("%s: digest is not hex", p)
		}
	}
	return nil
}
