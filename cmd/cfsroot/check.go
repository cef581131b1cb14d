package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

func init() {
	register(&command{
		name: "check",
		args: "--store DIR [--verify] IMAGE...",
		summary: "check that the object store DIR holds every object the composefs IMAGEs reference " +
			"(with --verify, also that each object's fs-verity digest is the one the image expects)",
		run: runCheck,
	})
}

// object is one object an image references, with what the image says of it.
type object struct {
	path   string // relative to the store ("ab/cdef…")
	size   uint64
	digest verity.Digest // zero if the image carries none
	user   string        // the first file (image and path) that uses it
}

func runCheck(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet(commands["check"], stderr)
	store := flags.String("store", "", "object store directory (as given to mkcomposefs --digest-store or mount basedir=)")
	verify := flags.Bool("verify", false, "also compute each object's fs-verity digest and compare it with the image's (reads every object)")
	images, err := parseArgs(flags, args)
	if err != nil {
		return err
	}
	if *store == "" {
		return usagef("check: --store DIR is required")
	}
	if len(images) == 0 {
		return usagef("check: no IMAGE given")
	}
	if st, err := os.Stat(*store); err != nil {
		return fmt.Errorf("check: object store: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("check: object store %s is not a directory", *store)
	}

	var problems []string
	objects := map[string]*object{}
	noPayload, noDigest := 0, 0
	for _, img := range images {
		err := walkImage(img, func(e *reader.Entry) error {
			if !e.IsExternal() || e.HardlinkTo != "" {
				return nil
			}
			if e.Payload == "" {
				noPayload++ // overlayfs looks these up by their own path
				return nil
			}
			if !filepath.IsLocal(e.Payload) {
				problems = append(problems, fmt.Sprintf("invalid object path %q (%s:%s): not a relative path inside the store", e.Payload, img, e.Path))
				return nil
			}
			o := objects[e.Payload]
			if o == nil {
				objects[e.Payload] = &object{path: e.Payload, size: e.Size, digest: e.Digest, user: img + ":" + e.Path}
				return nil
			}
			if o.size != e.Size || (e.Digest.Sum != nil && o.digest.Sum != nil && !o.digest.Equal(e.Digest)) {
				problems = append(problems, fmt.Sprintf("object %s is used with different sizes or digests (%s and %s:%s)", e.Payload, o.user, img, e.Path))
			}
			if o.digest.Sum == nil {
				o.digest = e.Digest
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
	}

	list := make([]*object, 0, len(objects))
	for _, o := range objects {
		list = append(list, o)
		if o.digest.Sum == nil {
			noDigest++
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].path < list[j].path })
	results := make([]string, len(list))
	var missing, corrupt int
	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(1, min(runtime.GOMAXPROCS(0), len(list))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				msg, isMissing := checkObject(*store, list[i], *verify)
				if msg == "" {
					continue
				}
				mu.Lock()
				results[i] = msg
				if isMissing {
					missing++
				} else {
					corrupt++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range list {
		work <- i
	}
	close(work)
	wg.Wait()

	bw := bufio.NewWriter(stdout)
	for _, p := range problems {
		fmt.Fprintln(bw, p)
	}
	for _, r := range results {
		if r != "" {
			fmt.Fprintln(bw, r)
		}
	}
	how := "present with the right size"
	if *verify {
		how = "present with the right size and digest"
	}
	fmt.Fprintf(bw, "%d objects: %d %s, %d missing, %d corrupt", len(list), len(list)-missing-corrupt, how, missing, corrupt)
	if *verify && noDigest > 0 {
		fmt.Fprintf(bw, ", %d without a digest in the image (not verifiable)", noDigest)
	}
	if noPayload > 0 {
		fmt.Fprintf(bw, "; %d external files without an object path", noPayload)
	}
	fmt.Fprintln(bw)
	if err := bw.Flush(); err != nil {
		return err
	}
	if n := missing + corrupt + len(problems); n > 0 {
		return fmt.Errorf("check: %d problem(s) found in store %s", n, *store)
	}
	return nil
}

// checkObject checks one object in the store and returns a line describing
// what is wrong ("" if nothing) and whether the object is missing.
func checkObject(store string, o *object, verify bool) (string, bool) {
	p := filepath.Join(store, o.path)
	st, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("missing %s (used by %s)", o.path, o.user), true
	case err != nil:
		return fmt.Sprintf("unreadable %s: %v (used by %s)", o.path, err, o.user), false
	case !st.Mode().IsRegular():
		return fmt.Sprintf("corrupt %s: not a regular file (%v) (used by %s)", o.path, st.Mode().Type(), o.user), false
	case uint64(st.Size()) != o.size:
		return fmt.Sprintf("corrupt %s: %d bytes, the image expects %d (used by %s)", o.path, st.Size(), o.size, o.user), false
	}
	if !verify || o.digest.Sum == nil {
		return "", false
	}
	d, err := verity.DigestFile(p, verity.Params{Algorithm: o.digest.Algorithm})
	if err != nil {
		return fmt.Sprintf("unreadable %s: %v (used by %s)", o.path, err, o.user), false
	}
	if !d.Equal(o.digest) {
		return fmt.Sprintf("corrupt %s: fs-verity digest %s, the image expects %s (used by %s)", o.path, d, o.digest, o.user), false
	}
	return "", false
}
