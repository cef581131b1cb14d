package main

import (
	"fmt"
	"io"

	"github.com/cfsroot/cfsroot/internal/atomicfile"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

func init() {
	register(&command{
		name:    "sign",
		args:    "--key KEY.pem --cert CERT.pem [--hash-alg sha256|sha512] [--block-size N] [--salt HEX] FILE SIGFILE",
		summary: "write a PKCS#7 signature of FILE's fs-verity digest, as `fsverity sign` does",
		run:     runSign,
	})
}

func runSign(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(commands["sign"], stderr)
	var vf verityFlags
	vf.add(fs)
	keyPath := fs.String("key", "", "PEM private key (RSA 2048-4096 bits, or ECDSA P-256/P-384)")
	certPath := fs.String("cert", "", "PEM or DER certificate of the key")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("sign: want FILE SIGFILE, got %d arguments", len(pos))
	}
	if *keyPath == "" || *certPath == "" {
		return usagef("sign: --key and --cert are required")
	}
	p, err := vf.params()
	if err != nil {
		return err
	}
	key, err := signature.LoadKey(*keyPath)
	if err != nil {
		return err
	}
	cert, err := signature.LoadCertificate(*certPath)
	if err != nil {
		return err
	}
	d, err := verity.DigestFile(pos[0], p)
	if err != nil {
		return err
	}
	sig, err := signature.SignDigest(d, key, cert)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(pos[1], sig, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Signed file '%s' (%s)\n", pos[0], d)
	return nil
}
