package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/internal/atomicfile"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
)

func init() {
	register(&command{
		name: "mkimage",
		args: "[--digest-store DIR] [--use-epoch] [--min-version N] [--max-version N] [--from-file] " +
			"[--skip-xattrs] [--user-xattrs] [--skip-devices] [--external-exec] [--security-version N] [--product NAME] [--threads N] [--print-digest] [--print-digest-only] SOURCE [IMAGE]",
		summary: "build a composefs image from a directory or a dump file, byte for byte as mkcomposefs 1.0.8 does",
		run:     runMkimage,
		help:    mkimageHelp,
	})
}

const mkimageHelp = `SOURCE is a directory, or with --from-file a composefs dump file (- for
stdin; strict parsing when the environment has CFS_PARSE_STRICT, as
mkcomposefs). IMAGE is written through a temporary file and renamed, or
to stdout if it is - (not a terminal). With --print-digest-only there is no
IMAGE. The flags are mkcomposefs' (but --external-exec); without --min-version and --max-version
the format version is 0, or 1 if the tree has whiteouts; giving one of them
makes the other default to 0.

--security-version and --product (not in mkcomposefs) add /.cfsroot/security-version
and /.cfsroot/product to the image, so its signature covers them; cfsroot's init
refuses an image whose version is below its floor or whose product is not the
one its config names. Without them the image is mkcomposefs' byte for byte, and
reads as version 0, product "".`

func runMkimage(args []string, stdout, stderr io.Writer) error {
	c := commands["mkimage"]
	fs := newFlagSet(c, stderr)
	store := fs.String("digest-store", "", "copy every external file into the object store `DIR` (DIR/xx/yyyy…)")
	useEpoch := fs.Bool("use-epoch", false, "make all mtimes zero")
	minVersion := fs.Int("min-version", 0, "lowest format version to write (0 or 1)")
	maxVersion := fs.Int("max-version", 1, "highest format version to write (0 or 1)")
	fromFile := fs.Bool("from-file", false, "SOURCE is a composefs dump file (- for stdin), not a directory")
	skipXattrs := fs.Bool("skip-xattrs", false, "do not store xattrs")
	userXattrs := fs.Bool("user-xattrs", false, "store only user.* xattrs")
	skipDevices := fs.Bool("skip-devices", false, "do not store block and character devices (whiteouts included)")
	externalExec := fs.Bool("external-exec", false, "keep files with an execute bit external (an object with an fs-verity digest) however small,\nso that IPE rules (cfsroot policy generate) can allow them; NOT in mkcomposefs: the image bytes\ndiffer from mkcomposefs' when the tree has executables of 64 bytes or less")
	secVersion := fs.Uint64("security-version", 0, "anti-rollback: write security version `N` into the image (/.cfsroot/security-version)")
	product := fs.String("product", "", "anti-rollback: write the product `NAME` the image is for into the image (/.cfsroot/product)")
	threads := fs.Int("threads", 0, "files digested and copied at once (default: the number of CPUs)")
	printDigest := fs.Bool("print-digest", false, "print the image's fs-verity digest (hex)")
	printDigestOnly := fs.Bool("print-digest-only", false, "print the image's fs-verity digest, write no image")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	switch {
	case len(pos) == 0:
		return usagef("mkimage: no SOURCE given")
	case len(pos) > 2:
		return usagef("mkimage: too many arguments")
	case pos[0] == "":
		return usagef("mkimage: empty SOURCE")
	case *printDigestOnly && len(pos) == 2:
		return usagef("mkimage: no IMAGE with --print-digest-only")
	case !*printDigestOnly && len(pos) == 1:
		return usagef("mkimage: no IMAGE given")
	}
	if set["threads"] && *threads <= 0 {
		return usagef("mkimage: --threads must be at least 1")
	}
	if *skipXattrs && *userXattrs {
		return usagef("mkimage: --skip-xattrs and --user-xattrs exclude each other")
	}
	wopt := composefs.DefaultWriteOptions()
	if set["min-version"] || set["max-version"] {
		// mkcomposefs: either flag makes the other default to 0.
		wopt.MinVersion, wopt.MaxVersion = 0, 0
		if set["min-version"] {
			wopt.MinVersion = *minVersion
		}
		if set["max-version"] {
			wopt.MaxVersion = *maxVersion
		}
	}
	for _, v := range []int{wopt.MinVersion, wopt.MaxVersion} {
		if v < 0 || v > 1 {
			return usagef("mkimage: format versions are 0 or 1, got %d", v)
		}
	}
	if err := secversion.CheckProduct(*product); err != nil {
		return usagef("mkimage: --product: %v", err)
	}
	if *fromFile {
		// mkcomposefs ignores these with --from-file; so do we, but say so.
		for _, name := range []string{"digest-store", "use-epoch", "skip-xattrs", "user-xattrs", "skip-devices", "threads", "external-exec"} {
			if set[name] {
				fmt.Fprintf(stderr, "cfsroot mkimage: warning: --%s has no effect with --from-file\n", name)
			}
		}
	}

	defer tuneGC()()

	source := pos[0]
	var root *composefs.Node
	if *fromFile {
		root, err = readDump(source)
	} else {
		root, err = readDir(source, *store, composefs.BuildOptions{
			UseEpoch: *useEpoch, SkipXattrs: *skipXattrs, UserXattrs: *userXattrs,
			SkipDevices: *skipDevices, Threads: *threads, ExternalExec: *externalExec,
		}, stderr)
	}
	if err != nil {
		return fmt.Errorf("mkimage: %w", err)
	}
	if set["security-version"] || set["product"] {
		if err := secversion.Add(root, secversion.Info{Version: *secVersion, Product: *product}); err != nil {
			return fmt.Errorf("mkimage: %w", err)
		}
	}
	if !*fromFile {
		for _, w := range rootLayoutWarnings(source) {
			fmt.Fprintf(stderr, "cfsroot mkimage: warning: %s\n", w)
		}
	}

	var res composefs.WriteResult
	switch {
	case *printDigestOnly:
		res, err = composefs.Write(io.Discard, root, wopt)
	case pos[1] == "-":
		if isTerminal(os.Stdout) && stdout == io.Writer(os.Stdout) {
			return errors.New("mkimage: stdout is a terminal; refusing to write an image to it")
		}
		res, err = composefs.Write(stdout, root, wopt)
	default:
		res, err = writeImageFile(pos[1], root, wopt)
	}
	if err != nil {
		return fmt.Errorf("mkimage: %w", err)
	}
	if *printDigest || *printDigestOnly {
		fmt.Fprintln(stdout, hex.EncodeToString(res.Digest.Sum))
	}
	return nil
}

// tuneGC sets up garbage collection for mkimage and returns a function
// that stops the tuning. Digesting makes a lot of short-lived garbage while
// the live heap (the tree) stays small, so collections are spaced out
// (GOGC 300) but the heap is held to a soft limit that follows the live heap:
// 1.5 times it plus 64 MiB, at least 192 MiB. For /usr (150k entries, 130
// MiB live at most) mkimage peaks at about 220 MiB; a much bigger tree gets
// room to grow instead of a collector that never stops. GOGC or GOMEMLIMIT
// in the environment turn this off.
func tuneGC() (stop func()) {
	_, gogc := os.LookupEnv("GOGC")
	_, limit := os.LookupEnv("GOMEMLIMIT")
	if gogc || limit {
		return func() {}
	}
	const floor = 192 << 20
	oldPercent := debug.SetGCPercent(300)
	oldLimit := debug.SetMemoryLimit(floor)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			metrics.Read(sample)
			if sample[0].Value.Kind() != metrics.KindUint64 {
				return
			}
			live := int64(sample[0].Value.Uint64())
			debug.SetMemoryLimit(max(floor, live+live/2+64<<20))
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		debug.SetGCPercent(oldPercent)
		debug.SetMemoryLimit(oldLimit)
	}
}

func readDump(source string) (*composefs.Node, error) {
	var r io.Reader = os.Stdin
	name := "stdin"
	if source != "-" {
		f, err := os.Open(source)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r, name = f, source
	}
	_, strict := os.LookupEnv("CFS_PARSE_STRICT")
	root, err := dump.Parse(r, &dump.Options{Strict: strict})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return root, nil
}

func readDir(dir, storeDir string, opts composefs.BuildOptions, stderr io.Writer) (*composefs.Node, error) {
	if storeDir != "" {
		s, err := composefs.OpenStore(storeDir)
		if err != nil {
			return nil, err
		}
		opts.Store = s
	}
	if f, ok := stderr.(*os.File); ok && isTerminal(f) {
		p := &progressLine{w: f}
		opts.Progress = p.update
		defer p.clear()
	}
	return composefs.FromDir(dir, &opts)
}

// rootLayoutWarnings says what cfsroot's init will miss in the root tree
// dir: the directories it moves its /dev, /proc, /sys and /run mounts into
// at switch_root, and /sbin/init, the program it runs by default (resolved
// inside dir, as the init resolves it). mkimage builds any tree, so these are
// warnings, but an image without them does not boot.
func rootLayoutWarnings(dir string) []string {
	var warnings, missing []string
	for _, d := range []string{"dev", "proc", "sys", "run"} {
		if fi, err := os.Lstat(filepath.Join(dir, d)); err != nil || !fi.IsDir() {
			missing = append(missing, "/"+d)
		}
	}
	if len(missing) > 0 {
		warnings = append(warnings, fmt.Sprintf("%s has no directory %s: cfsroot's init moves its /dev, /proc, /sys and /run "+
			"into the root at switch_root and stops the boot without them (create them, empty)", dir, strings.Join(missing, ", ")))
	}
	if err := boot.CheckInit(dir, boot.DefaultInit); err != nil {
		warnings = append(warnings, fmt.Sprintf("%s: %v (cfsroot's init runs %s unless its config's \"init\" names another program)",
			dir, err, boot.DefaultInit))
	}
	return warnings
}

// writeImageFile writes the image through a temporary file beside path,
// so path only ever holds a complete image.
func writeImageFile(path string, root *composefs.Node, wopt *composefs.WriteOptions) (composefs.WriteResult, error) {
	f, err := atomicfile.Create(filepath.Clean(path), 0o644)
	if err != nil {
		return composefs.WriteResult{}, err
	}
	defer f.Abort()
	res, err := composefs.Write(f, root, wopt)
	if err != nil {
		return res, err
	}
	return res, f.Commit()
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressLine shows digest progress on one terminal line.
type progressLine struct {
	w     io.Writer
	shown bool
}

func (p *progressLine) update(pr composefs.Progress) {
	state := "reading the tree"
	if !pr.Scanning {
		pct := 100.0
		if pr.TotalBytes > 0 {
			pct = 100 * float64(pr.Bytes) / float64(pr.TotalBytes)
		}
		state = fmt.Sprintf("%.0f%%", pct)
	}
	fmt.Fprintf(p.w, "\rmkimage: %d/%d files, %.1f/%.1f MiB digested (%s)\x1b[K",
		pr.Files, pr.TotalFiles, float64(pr.Bytes)/(1<<20), float64(pr.TotalBytes)/(1<<20), state)
	p.shown = true
}

func (p *progressLine) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}
