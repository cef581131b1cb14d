package main

import (
	"fmt"
	"io"
	"os"

	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

func init() {
	register(&command{
		name:    "verify",
		args:    "--trusted CERT.pem|DIR [--sig SIGFILE] [--hash-alg sha256|sha512] [--block-size N] [--salt HEX] FILE",
		summary: "check FILE's signature against trusted certificates; print digest and signer",
		run:     runVerify,
	})
}

func runVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(commands["verify"], stderr)
	var vf verityFlags
	vf.add(fs)
	trusted := fs.String("trusted", "", "trusted certificates: a PEM file (one or more certificates) or a directory of .pem/.crt/.der files")
	sigPath := fs.String("sig", "", "signature file (default: FILE.sig)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("verify: want one FILE, got %d arguments", len(pos))
	}
	if *trusted == "" {
		return usagef("verify: --trusted is required")
	}
	p, err := vf.params()
	if err != nil {
		return err
	}
	file := pos[0]
	if *sigPath == "" {
		*sigPath = file + ".sig"
	}
	ts, err := signature.LoadTrustStore(*trusted)
	if err != nil {
		return err
	}
	sig, err := os.ReadFile(*sigPath)
	if err != nil {
		return fmt.Errorf("verify: read signature: %w", err)
	}
	d, err := verity.DigestFile(file, p)
	if err != nil {
		return err
	}
	cert, err := signature.Verify(sig, d, ts)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	fmt.Fprintf(stdout, "digest: %s\nsigner: %s\nsigner-sha256: %s\n", d, cert.Subject, signature.Fingerprint(cert))
	return nil
}
