package main

import (
	"crypto"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cfsroot/cfsroot/internal/atomicfile"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/signature"
)

func init() {
	register(&command{
		name:    "policy",
		args:    "generate|sign ARGS... (run `cfsroot policy SUBCOMMAND --help`)",
		summary: "write an IPE policy allowing execution of a composefs image's files only, or sign one",
		run:     runPolicy,
	})
}

var (
	policyGenerate = &command{
		name: "policy generate",
		args: "[--mode digest|signature] [--store DIR | --source DIR] [--name N] [--version A.B.C] [--files exec|all] [--allow-initramfs] [-o FILE] IMAGE",
		summary: "Write an IPE policy that denies execution except of the files of the composefs IMAGE.\n" +
			"--mode digest (the default): one `op=EXECUTE fsverity_digest=` rule per distinct object. Files of at\n" +
			"most 64 bytes stored inline in the image have no object and cannot be allowed: they are named in a warning.\n" +
			"Without --store or --source, external files are judged by mode and name only (an execute bit, or *.so*).\n" +
			"The kernel parses at most 65535 bytes of signed policy: about 570 rules (it warns beyond).\n" +
			"--mode signature: the one rule `op=EXECUTE fsverity_signature=TRUE action=ALLOW`, for any size of root:\n" +
			"every object enabled with a builtin signature (cfsroot sign-objects, enable-objects) may execute. IMAGE\n" +
			"is optional then; given, its inline executables are named in a warning (build with mkimage --external-exec).\n" +
			"In both modes only EXECUTE is restricted: KMODULE, FIRMWARE, KEXEC_*, POLICY and X509_CERT are allowed.",
	}
	policySign = &command{
		name: "policy sign",
		args: "--key KEY.pem --cert CERT.pem [--nocerts] POLICY POLICY.p7s",
		summary: "Sign an IPE policy for the kernel: DER PKCS#7 with the policy attached and no signed\n" +
			"attributes: what `openssl smime -sign -nodetach -noattr -binary -outform der` writes (byte for byte\n" +
			"with RSA keys; ECDSA signatures are randomized). The policy is checked as the kernel parses it first.",
	}
)

func runPolicy(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "usage: cfsroot policy generate %s\n       cfsroot policy sign %s\n",
			policyGenerate.args, policySign.args)
		return usagef("policy: no subcommand given (generate or sign)")
	}
	switch args[0] {
	case "generate":
		return runPolicyGenerate(args[1:], stdout, stderr)
	case "sign":
		return runPolicySign(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintf(stdout, "usage: cfsroot policy generate %s\n       cfsroot policy sign %s\n\n%s.\nRun `cfsroot policy generate --help` or `cfsroot policy sign --help` for details.\n",
			policyGenerate.args, policySign.args, commands["policy"].summary)
		return nil
	}
	return usagef("policy: unknown subcommand %q (want generate or sign)", args[0])
}

func runPolicyGenerate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(policyGenerate, stderr)
	store := fs.String("store", "", "object store of the image (the directory holding ab/cdef… objects, or a composefs\nrepository holding objects/); used to recognise ELF objects and #! scripts by content")
	source := fs.String("source", "", "instead of --store: the unchanged `DIR` the image was built from, read by path to recognise ELF objects and #! scripts")
	name := fs.String("name", "cfsroot", "policy name (policy_name)")
	version := fs.String("version", "0.0.1", "policy version A.B.C; the kernel refuses to replace an active policy by a lower version")
	files := fs.String("files", "exec", "which files get rules: exec (execute bits, ELF objects including shared libraries, #! scripts) or all (every file with an object)")
	initramfs := fs.Bool("allow-initramfs", false, "also allow executing files from the initramfs (boot_verified=TRUE), for a policy activated before switch_root")
	out := fs.String("o", "", "write the policy to `FILE` (default: standard output)")
	mode := fs.String("mode", "digest", "digest (a rule per executable object) or signature (one rule: objects with a builtin fs-verity signature)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	switch *mode {
	case "digest":
	case "signature":
		return policyGenerateSigned(pos, *name, *version, *initramfs, *out, fs, stdout, stderr)
	default:
		return usagef("policy generate: --mode %q: want digest or signature", *mode)
	}
	if len(pos) != 1 {
		return usagef("policy generate: want one IMAGE, got %d arguments", len(pos))
	}
	sel, err := ipe.ParseFiles(*files)
	if err != nil {
		return usagef("policy generate: --files: %v", err)
	}
	if err := ipe.CheckName(*name); err != nil {
		return usagef("policy generate: --name: %v", err)
	}
	if _, err := ipe.ParseVersion(*version); err != nil {
		return usagef("policy generate: --version: %v", err)
	}
	opts := ipe.GenerateOptions{Name: *name, Version: *version, Files: sel, AllowBootVerified: *initramfs}
	if *store != "" && *source != "" {
		return usagef("policy generate: --store and --source exclude each other")
	}
	if *source != "" {
		if st, err := os.Stat(*source); err != nil || !st.IsDir() {
			return fmt.Errorf("policy generate: --source %s is not a directory (%v)", *source, err)
		}
		opts.Source = os.DirFS(*source)
	}
	if *store != "" {
		objects, err := openStore(*store)
		if err != nil {
			return fmt.Errorf("policy generate: %w", err)
		}
		opts.Objects = objects
	}
	img, err := reader.Open(pos[0])
	if err != nil {
		return fmt.Errorf("policy generate: %w", err)
	}
	defer img.Close()
	g, err := ipe.Generate(img, opts)
	if err != nil {
		return fmt.Errorf("policy generate: %s: %w", pos[0], err)
	}
	if g.Selected > 0 && len(g.Policy.Digests) == 0 {
		return fmt.Errorf("policy generate: %s: none of the %d chosen files has an fs-verity digest in the image, so the policy would deny every execution; build the image with digests (cfsroot mkimage, mkcomposefs --digest-store)", pos[0], g.Selected)
	}
	text, err := g.Policy.MarshalText()
	if err != nil {
		return fmt.Errorf("policy generate: %w", err)
	}

	if sel == ipe.ExecFiles && !g.ContentChecked {
		fmt.Fprintln(stderr, "cfsroot: warning: no --store or --source: executables were chosen by execute bits and *.so* names only;"+
			" ELF objects and #! scripts without either get no rule and will be denied (give --store or --source, or --files all)")
	}
	warnPaths(stderr, g.InlineExecutables, "executables are stored inline in the image (no object, so no rule can allow them; IPE will deny them): rebuild the image with `cfsroot mkimage --external-exec`")
	warnPaths(stderr, g.NoDigest, "files have no fs-verity digest in the image (no rule can name them, and a verity=require mount refuses them)")
	if len(text)+ipe.SignatureOverhead > ipe.MaxPolicySize {
		fmt.Fprintf(stderr, "cfsroot: warning: the policy is %d bytes with %d rules; signed, it exceeds the %d bytes of PKCS#7 the kernel parses (EMSGSIZE), "+
			"which hold about %d rules: the kernel will refuse it. Allow fewer files (--files exec, fewer executables in the image)\n",
			len(text), len(g.Policy.Digests), ipe.MaxPolicySize, g.Policy.MaxRules(ipe.SignatureOverhead))
	}
	fmt.Fprintf(stderr, "cfsroot: policy %s %s: %d rules for %d files (--files %s), %d bytes\n",
		g.Policy.Name, g.Policy.Version, len(g.Policy.Digests), g.Selected, sel, len(text))

	if *out == "" {
		_, err = stdout.Write(text)
		return err
	}
	return atomicfile.WriteFile(*out, text, 0o644)
}

// policyGenerateSigned writes the signature-mode policy: constant but for its
// name and version. An image, if given, is only checked for executables
// that cannot carry a signature.
func policyGenerateSigned(pos []string, name, version string, initramfs bool, out string, fs *flag.FlagSet, stdout, stderr io.Writer) error {
	if len(pos) > 1 {
		return usagef("policy generate: want at most one IMAGE with --mode signature, got %d arguments", len(pos))
	}
	var ignored []string
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "store" || f.Name == "source" || f.Name == "files" {
			ignored = append(ignored, "--"+f.Name)
		}
	})
	if len(ignored) > 0 {
		return usagef("policy generate: %s: no use with --mode signature (the policy names no file)", strings.Join(ignored, ", "))
	}
	if err := ipe.CheckName(name); err != nil {
		return usagef("policy generate: --name: %v", err)
	}
	if _, err := ipe.ParseVersion(version); err != nil {
		return usagef("policy generate: --version: %v", err)
	}
	if len(pos) == 1 {
		if err := warnInlineExecutables(pos, stderr); err != nil {
			return fmt.Errorf("policy generate: %w", err)
		}
	}
	p := ipe.Policy{Name: name, Version: version, AllowBootVerified: initramfs, AllowSigned: true}
	text, err := p.MarshalText()
	if err != nil {
		return fmt.Errorf("policy generate: %w", err)
	}
	fmt.Fprintf(stderr, "cfsroot: policy %s %s: objects with a builtin fs-verity signature may execute (%d bytes)\n", name, version, len(text))
	if out == "" {
		_, err = stdout.Write(text)
		return err
	}
	return atomicfile.WriteFile(out, text, 0o644)
}

// openStore returns the object directory: DIR itself, or DIR/objects when
// DIR is a composefs repository.
func openStore(dir string) (fs.FS, error) {
	dir, err := storeDir(dir)
	if err != nil {
		return nil, err
	}
	return os.DirFS(dir), nil
}

// storeDir returns the object directory: dir itself, or dir/objects when
// dir is a composefs repository.
func storeDir(dir string) (string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("object store: %w", err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("object store %s is not a directory", dir)
	}
	if st, err := os.Stat(filepath.Join(dir, "objects")); err == nil && st.IsDir() {
		dir = filepath.Join(dir, "objects")
	}
	return dir, nil
}

// warnPaths prints one warning naming paths (at most 20, then a count).
func warnPaths(w io.Writer, paths []string, what string) {
	if len(paths) == 0 {
		return
	}
	fmt.Fprintf(w, "cfsroot: warning: %d %s:\n", len(paths), what)
	const max = 20
	for i, p := range paths {
		if i == max {
			fmt.Fprintf(w, "  ... and %d more\n", len(paths)-max)
			break
		}
		fmt.Fprintf(w, "  %s\n", p)
	}
}

func runPolicySign(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(policySign, stderr)
	keyPath := fs.String("key", "", "PEM private key (RSA 2048-4096 bits, or ECDSA P-256/P-384)")
	certPath := fs.String("cert", "", "PEM or DER certificate of the key; the kernel must trust it (builtin, secondary or platform/UEFI db keyring)")
	noCerts := fs.Bool("nocerts", false, "leave the certificate out of the signature, as openssl smime -nocerts does (the kernel finds the signer by issuer and serial)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("policy sign: want POLICY POLICY.p7s, got %d arguments", len(pos))
	}
	if *keyPath == "" || *certPath == "" {
		return usagef("policy sign: --key and --cert are required")
	}
	text, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("policy sign: %w", err)
	}
	// Catch what the kernel would only answer with EBADMSG at boot.
	h, err := ipe.Check(text)
	if err != nil {
		return fmt.Errorf("policy sign: %s: %w", pos[0], err)
	}
	key, err := signature.LoadKey(*keyPath)
	if err != nil {
		return fmt.Errorf("policy sign: %w", err)
	}
	cert, err := signature.LoadCertificate(*certPath)
	if err != nil {
		return fmt.Errorf("policy sign: %w", err)
	}
	p7, err := signature.Sign(text, key, cert, signature.Options{Hash: crypto.SHA256, IncludeCertificate: !*noCerts})
	if err != nil {
		return fmt.Errorf("policy sign: %w", err)
	}
	if len(p7) > ipe.MaxPolicySize {
		return fmt.Errorf("policy sign: the signed policy would be %d bytes, but the kernel parses at most %d bytes of PKCS#7 and would refuse it (EMSGSIZE); "+
			"remove %d or more rules (each is %d bytes)", len(p7), ipe.MaxPolicySize, (len(p7)-ipe.MaxPolicySize+ipe.RuleSize-1)/ipe.RuleSize, ipe.RuleSize)
	}
	if err := atomicfile.WriteFile(pos[1], p7, 0o644); err != nil {
		return fmt.Errorf("policy sign: %w", err)
	}
	fmt.Fprintf(stdout, "Signed IPE policy %s %s (%s)\n", h.Name, h.Version, pos[1])
	return nil
}
