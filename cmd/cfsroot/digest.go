package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/cfsroot/cfsroot/rootfs/verity"
)

func init() {
	register(&command{
		name:    "digest",
		args:    "[--hash-alg sha256|sha512] [--block-size N] [--salt HEX] [--compact] FILE...",
		summary: "print the fs-verity digest of each FILE, as `fsverity digest` does",
		run:     runDigest,
	})
}

// verityFlags are the fs-verity parameter flags, named as in fsverity-utils.
type verityFlags struct {
	hashAlg   string
	blockSize int
	salt      string
}

func (v *verityFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&v.hashAlg, "hash-alg", "sha256", "fs-verity hash algorithm: sha256 or sha512")
	fs.IntVar(&v.blockSize, "block-size", verity.DefaultBlockSize, "Merkle tree block size in bytes (1024 to 65536, a power of two)")
	fs.StringVar(&v.salt, "salt", "", "salt, in hex, prepended to every hashed block (at most 32 bytes)")
}

func (v *verityFlags) params() (verity.Params, error) {
	alg, err := verity.ParseAlgorithm(v.hashAlg)
	if err != nil {
		return verity.Params{}, usagef("--hash-alg: %v", err)
	}
	salt, err := hex.DecodeString(v.salt)
	if err != nil {
		return verity.Params{}, usagef("--salt %q is not hex: %v", v.salt, err)
	}
	p := verity.Params{Algorithm: alg, BlockSize: v.blockSize, Salt: salt}
	if _, err := verity.NewTree(p); err != nil {
		return verity.Params{}, usagef("%v", err)
	}
	return p, nil
}

func runDigest(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(commands["digest"], stderr)
	var vf verityFlags
	vf.add(fs)
	compact := fs.Bool("compact", false, "print only the hex digest, without the algorithm and file name")
	files, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usagef("digest: no FILE given")
	}
	p, err := vf.params()
	if err != nil {
		return err
	}
	type result struct {
		d   verity.Digest
		err error
	}
	// Digest files on all cores; print in the order given.
	results := make([]chan result, len(files))
	for i := range results {
		results[i] = make(chan result, 1)
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(files)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				d, err := verity.DigestFile(files[i], p)
				results[i] <- result{d, err}
			}
		}()
	}
	go func() {
		for i := range files {
			work <- i
		}
		close(work)
	}()
	failed := 0
	for i, f := range files {
		r := <-results[i]
		switch {
		case r.err != nil:
			fmt.Fprintf(stderr, "cfsroot digest: %v\n", r.err)
			failed++
		case *compact:
			fmt.Fprintln(stdout, hex.EncodeToString(r.d.Sum))
		default:
			fmt.Fprintf(stdout, "%s %s\n", r.d, f)
		}
	}
	wg.Wait()
	if failed > 0 {
		return fmt.Errorf("digest: %d of %d files failed", failed, len(files))
	}
	return nil
}
