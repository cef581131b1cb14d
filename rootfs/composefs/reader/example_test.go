package reader_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
)

// List the executables of an image and how each is protected: external files
// by their own fs-verity digest (checked by overlayfs verity=require), inline
// ones only by the image's digest.
func Example() {
	image, cleanup := exampleImage()
	defer cleanup()

	img, err := reader.Open(image)
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	err = img.Walk(func(e *reader.Entry) error {
		if !e.IsRegular() || e.Mode&0o111 == 0 || e.HardlinkTo != "" {
			return nil
		}
		switch {
		case e.IsExternal():
			fmt.Printf("%s object %s digest %s\n", e.Path, e.Payload, e.Digest)
		case e.IsInline():
			fmt.Printf("%s inline, %d bytes\n", e.Path, len(e.Content))
		}
		return nil
	})
	if err != nil {
		log.Fatal(err) // the image is invalid: reject it as a whole
	}
	// Output:
	// /usr/bin/hello inline, 21 bytes
	// /usr/bin/tool object 4f/4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f digest sha256:4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f
}

// exampleImage writes a small image (as `cfsroot mkimage --from-file` would
// from this dump) to a temporary file.
func exampleImage() (string, func()) {
	const text = `/ 0 40755 3 0 0 0 0.0 - - -
/etc 0 40755 2 0 0 0 0.0 - - -
/etc/motd 6 100644 1 0 0 0 0.0 - hello\n -
/usr 0 40755 3 0 0 0 0.0 - - -
/usr/bin 0 40755 2 0 0 0 0.0 - - -
/usr/bin/hello 21 100755 1 0 0 0 0.0 - #!/bin/sh\necho\x20hello\n -
/usr/bin/tool 70000 100755 1 0 0 0 0.0 4f/4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f - 4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f
`
	root, err := dump.Parse(strings.NewReader(text), &dump.Options{Strict: true})
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "reader-example")
	if err != nil {
		log.Fatal(err)
	}
	p := filepath.Join(dir, "image.cfs")
	f, err := os.Create(p)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := composefs.Write(f, root, nil); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	return p, func() { os.RemoveAll(dir) }
}
