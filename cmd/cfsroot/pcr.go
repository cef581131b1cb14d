package main

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/measure/eventlog"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

const defaultBanks = "sha1,sha256,sha384,sha512"

var (
	pcrPredictCmd = &command{
		name: "pcr predict",
		args: "--image IMAGE [--name NAME] (--sig SIG --trusted CERTS | --digest D | --signer CERT) [--fsverity-signers CERTS] [--upper DISK:DIR --upper-uuid UUID] [--policy POLICY.p7s [--ipe-enforce]] [--floor N [--floor-nv STATE]] [--hash-alg sha256|sha512] [--block-size N] [--salt HEX] [--pcr N] [--bank LIST] [--events]",
		summary: "print the PCR values cfsroot's init leaves after measuring IMAGE, from a reset PCR (all zeros)\n\n" +
			"The init extends, on every active bank, the events\n" +
			"  cfsroot-image:NAME:<IMAGE's fs-verity digest, sha256:HEX>\n" +
			"  cfsroot-signer:sha256:<SHA-256 of the signer certificate's DER> (or cfsroot-signer:pinned-digest)\n" +
			"  cfsroot-version:<IMAGE's product>:<IMAGE's security version> (only with --floor)\n" +
			"  cfsroot-floor:<floor>:nv=<off|read|missing> (only with --floor)\n" +
			"  cfsroot-fsverity-signer:sha256:<SHA-256 of the certificate's DER> (one per object signer, with fsverity_certs)\n" +
			"  cfsroot-upper:DISK:DIR:fs-uuid=UUID (only with a persistent upper layer, config \"upper\": \"DISK:DIR\")\n" +
			"  cfsroot-ipe-policy:sha256:<SHA-256 of the policy file>:enforce=0|1 (only with a policy; 1 with ipe_enforce)\n" +
			"  cfsroot-separator\n" +
			"A failed boot measures cfsroot-failure:STEP instead of what was left, so it never\n" +
			"predicts to these values.\n" +
			"Output: one line \"PCR BANK HEX\" per bank.",
	}
	pcrReplayCmd = &command{
		name: "pcr replay",
		args: "[--pcr N] [--bank LIST] [--strict] [LOG]",
		summary: "recompute PCR values from a userspace measurement log in systemd's format\n" +
			"(default " + eventlog.DefaultPath + "), each PCR from reset (all zeros).\n" +
			"Output: one line \"PCR BANK HEX\" per PCR and bank. Records whose digest is not the\n" +
			"hash of their text are reported on stderr (--strict: refused).",
	}
)

func init() {
	register(&command{
		name:    "pcr",
		args:    "predict|replay [FLAGS]",
		summary: "predict the PCR values of a measured boot, or recompute them from an event log",
		run:     runPCR,
	})
}

func runPCR(args []string, stdout, stderr io.Writer) error {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: cfsroot pcr predict %s\n       cfsroot pcr replay %s\n\nRun 'cfsroot pcr predict --help' or 'cfsroot pcr replay --help' for details.\n",
			pcrPredictCmd.args, pcrReplayCmd.args)
	}
	if len(args) == 0 {
		usage(stderr)
		return usagef("pcr: want a subcommand: predict or replay")
	}
	switch args[0] {
	case "predict":
		return runPCRPredict(args[1:], stdout, stderr)
	case "replay":
		return runPCRReplay(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		usage(stdout)
		return nil
	}
	usage(stderr)
	return usagef("pcr: unknown subcommand %q (want predict or replay)", args[0])
}

func pcrFlag(fs *flag.FlagSet, def int, help string) *int {
	return fs.Int("pcr", def, help)
}

func checkPCRIndex(pcr int) error {
	if pcr < 0 || pcr > 23 {
		return usagef("--pcr %d: want a PCR index 0..23", pcr)
	}
	return nil
}

func runPCRPredict(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(pcrPredictCmd, stderr)
	var vf verityFlags
	vf.add(fs)
	image := fs.String("image", "", "the composefs image file (its fs-verity digest is measured)")
	name := fs.String("name", "", "the image NAME the init measures, as in composefs/images/NAME.cfs (default: IMAGE's file name without .cfs)")
	sigPath := fs.String("sig", "", "the image's signature; with --trusted, the signer is the trusted certificate that made it")
	trusted := fs.String("trusted", "", "trusted certificates: a PEM file or a directory of .pem/.crt/.der files (with --sig)")
	pinned := fs.String("digest", "", "the image was accepted by this pinned digest (sha256:HEX), which must be IMAGE's")
	signerPath := fs.String("signer", "", "take this certificate as the signer without checking a signature (to predict before signing)")
	policyPath := fs.String("policy", "", "the signed IPE policy (.p7s) the init loads, if any")
	floor := fs.Uint64("floor", 0, "the anti-rollback floor the init checks IMAGE against (max of min_version and the NV counter); give it when the\nconfig sets min_version, product or rollback_nv: the init then measures IMAGE's security version and the floor")
	floorNV := fs.String("floor-nv", "read", "with --floor: the NV counter's state at boot: off (rollback_nv off), read, or missing (rollback_nv optional, no counter)")
	fvSigners := fs.String("fsverity-signers", "", "the object signers' certificates the init adds to the .fs-verity keyring (config fsverity_certs):\n"+
		"a PEM file or a directory of .pem/.crt/.der files, as in the initramfs (the order is the init's: file names, then order in a file)")
	ipeEnforce := fs.Bool("ipe-enforce", false, "the config sets ipe_enforce (with --policy)")
	upperSpec := fs.String("upper", "", "the config's persistent upper layer, DISK:DIR, if any")
	upperUUID := fs.String("upper-uuid", "", "the filesystem UUID of the upper layer's disk, as blkid prints it (with --upper)")
	pcr := pcrFlag(fs, measure.DefaultPCR, "PCR index the init extends (only labels the output: the value from reset does not depend on it)")
	banks := fs.String("bank", defaultBanks, "comma-separated PCR banks: sha1, sha256, sha384, sha512, sm3_256")
	showEvents := fs.Bool("events", false, "also print each measured event as \"event TYPE TEXT\", before the values")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("pcr predict: unexpected arguments %q (the image goes in --image)", pos)
	}
	if *image == "" {
		return usagef("pcr predict: --image is required")
	}
	if err := measure.CheckBootPCR(*pcr); err != nil {
		return usagef("--pcr: %v", err)
	}
	algs, err := measure.ParseAlgs(*banks)
	if err != nil {
		return usagef("--bank: %v", err)
	}
	for _, a := range algs {
		if !a.Known() {
			return usagef("--bank: cannot compute bank %s", a)
		}
	}
	n := 0
	for _, s := range []string{*sigPath, *pinned, *signerPath} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return usagef("pcr predict: say how the init accepts the image: exactly one of --sig (with --trusted), --digest or --signer")
	}
	if (*sigPath != "") != (*trusted != "") {
		return usagef("pcr predict: --sig and --trusted go together")
	}
	p, err := vf.params()
	if err != nil {
		return err
	}
	if *name == "" {
		*name = strings.TrimSuffix(filepath.Base(*image), ".cfs")
	}

	info := measure.ImageInfo{Name: *name}
	if *pinned != "" {
		want, err := verity.ParseDigest(*pinned)
		if err != nil {
			return usagef("--digest: %v", err)
		}
		p.Algorithm = want.Algorithm
		if info.Digest, err = verity.DigestFile(*image, p); err != nil {
			return err
		}
		if !info.Digest.Equal(want) {
			return fmt.Errorf("%s: fs-verity digest %s is not the pinned %s; the init would refuse this image", *image, info.Digest, want)
		}
		info.Pinned = true
	} else if info.Digest, err = verity.DigestFile(*image, p); err != nil {
		return err
	}
	switch {
	case *sigPath != "":
		ts, err := signature.LoadTrustStore(*trusted)
		if err != nil {
			return err
		}
		sig, err := os.ReadFile(*sigPath)
		if err != nil {
			return fmt.Errorf("pcr predict: read signature: %w", err)
		}
		if info.Signer, err = signature.Verify(sig, info.Digest, ts); err != nil {
			return fmt.Errorf("%s: %w; the init would refuse this image", *image, err)
		}
	case *signerPath != "":
		var err error
		if info.Signer, err = loadOneCert(*signerPath); err != nil {
			return err
		}
	}
	if *fvSigners != "" {
		ts, err := signature.LoadTrustStore(*fvSigners)
		if err != nil {
			return fmt.Errorf("pcr predict: --fsverity-signers: %w", err)
		}
		info.FsveritySigners = ts.Certificates()
	}
	if *policyPath != "" {
		if info.Policy, err = os.ReadFile(*policyPath); err != nil {
			return fmt.Errorf("pcr predict: read policy: %w", err)
		}
		info.IPEEnforce = *ipeEnforce
	} else if *ipeEnforce {
		return usagef("pcr predict: --ipe-enforce needs --policy")
	}
	if (*upperSpec != "") != (*upperUUID != "") {
		return usagef("pcr predict: --upper and --upper-uuid go together")
	}
	if *upperSpec != "" {
		if _, _, ok := strings.Cut(*upperSpec, ":"); !ok || *upperSpec == "tmpfs" || *upperSpec == "none" {
			return usagef("pcr predict: --upper %q: want the config's DISK:DIR (none and tmpfs are not measured)", *upperSpec)
		}
		info.Upper = &measure.Upper{Spec: *upperSpec, FSUUID: strings.ToLower(*upperUUID)}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["floor-nv"] && !set["floor"] {
		return usagef("pcr predict: --floor-nv goes with --floor")
	}
	if set["floor"] {
		switch *floorNV {
		case "off", "read", "missing":
		default:
			return usagef("--floor-nv %q: want off, read or missing", *floorNV)
		}
		sv, err := readSecVersion(*image)
		if err != nil {
			return err
		}
		if sv.Version < *floor {
			return fmt.Errorf("%s: security version %d is below the floor %d; the init would refuse this image", *image, sv.Version, *floor)
		}
		info.Rollback = &measure.RollbackInfo{Version: sv.Version, Product: sv.Product, Floor: *floor, NV: *floorNV}
	}
	evs, err := measure.Events(info)
	if err != nil {
		return err
	}
	vals, err := measure.Predict(evs, algs)
	if err != nil {
		return err
	}
	if *showEvents {
		for _, ev := range evs {
			fmt.Fprintf(stdout, "event %s %s\n", ev.Type, ev.Data)
		}
	}
	for _, a := range algs {
		fmt.Fprintf(stdout, "%d %s %s\n", *pcr, a, hex.EncodeToString(vals[a]))
	}
	return nil
}

// readSecVersion reads the security version and product inside an image
// file.
func readSecVersion(path string) (secversion.Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return secversion.Info{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return secversion.Info{}, err
	}
	info, err := secversion.ReadAt(f, st.Size())
	if err != nil {
		return secversion.Info{}, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// optionalTrustStore loads the certificates at path, a PEM file or a
// directory, or returns a nil store when path is "" (the flag not given).
func optionalTrustStore(path string) (*signature.TrustStore, error) {
	if path == "" {
		return nil, nil
	}
	return signature.LoadTrustStore(path)
}

// loadOneCert reads a certificate that must be the only one in its file, so
// that the signer is not picked by accident.
func loadOneCert(path string) (*x509.Certificate, error) {
	certs, err := signature.LoadCertificates(path)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s holds %d certificates; --signer wants exactly one", path, len(certs))
	}
	return certs[0], nil
}

func runPCRReplay(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(pcrReplayCmd, stderr)
	pcr := pcrFlag(fs, -1, "print only this PCR (default: every PCR in the log)")
	banks := fs.String("bank", "", "print only these comma-separated banks (default: every bank in the log)")
	strict := fs.Bool("strict", false, "refuse a log with a record whose digest is not the hash of its text")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("pcr replay: want at most one LOG, got %d", len(pos))
	}
	path := eventlog.DefaultPath
	if len(pos) == 1 {
		path = pos[0]
	}
	if *pcr != -1 {
		if err := checkPCRIndex(*pcr); err != nil {
			return err
		}
	}
	var only []measure.Alg
	if *banks != "" {
		if only, err = measure.ParseAlgs(*banks); err != nil {
			return usagef("--bank: %v", err)
		}
	}
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSticky != 0 {
		msg := "a writer was interrupted between extending a PCR and logging it (sticky bit set): the log may not match the PCRs"
		if *strict {
			return fmt.Errorf("%s: %s", path, msg)
		}
		fmt.Fprintf(stderr, "cfsroot: warning: %s: %s\n", path, msg)
	}
	recs, err := eventlog.ParseFile(path)
	if err != nil {
		return err
	}
	for i, r := range recs {
		if err := measure.CheckRecord(r); err != nil {
			if *strict {
				return fmt.Errorf("%s: record %d: %w", path, i+1, err)
			}
			fmt.Fprintf(stderr, "cfsroot: warning: %s: record %d: %v\n", path, i+1, err)
		}
	}
	vals, err := measure.Replay(recs)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	printed := 0
	for _, p := range vals.PCRs() {
		if *pcr != -1 && p != uint32(*pcr) {
			continue
		}
		algs := measure.SortedAlgs(vals[p])
		if only != nil {
			algs = only
		}
		for _, a := range algs {
			v, ok := vals[p][a]
			if !ok {
				continue
			}
			fmt.Fprintf(stdout, "%d %s %s\n", p, a, hex.EncodeToString(v))
			printed++
		}
	}
	if printed == 0 {
		return errors.New(path + ": no records for the PCRs and banks asked for")
	}
	return nil
}
