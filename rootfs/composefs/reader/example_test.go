package reader_test

import (
	"fmt"
	"log"

	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
)

// List the executables of an image and how each is protected: external files
// by their own fs-verity digest (checked by overlayfs verity=require), inline
// ones only by the image's digest.
func Example() {
	img, err := reader.Open("image.cfs")
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
}
