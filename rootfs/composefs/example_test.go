package composefs_test

import (
	"bytes"
	"fmt"
	"log"
	"os"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
)

// An installer describes the tree itself: directories, a file whose content
// lives in the object store, a small inline file, a symlink, a hard link.
func Example() {
	dir, err := os.MkdirTemp("", "objects")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := composefs.OpenStore(dir)
	if err != nil {
		log.Fatal(err)
	}
	// The object: content addressed by its fs-verity digest (the one
	// `fsverity digest` prints for the same 1200 bytes).
	digest, _, err := store.Add(bytes.NewReader(bytes.Repeat([]byte("#!/bin/true\n"), 100)))
	if err != nil {
		log.Fatal(err)
	}

	root := composefs.NewNode(composefs.ModeDir | 0o755)
	bin := composefs.NewNode(composefs.ModeDir | 0o755)
	etc := composefs.NewNode(composefs.ModeDir | 0o755)
	tool := composefs.NewNode(composefs.ModeRegular | 0o755)
	tool.Size = 1200
	tool.Digest = digest
	tool.Payload = composefs.ObjectPath(digest)
	tool.SetXattr("security.capability", []byte{1, 0, 0, 2})
	motd := composefs.NewNode(composefs.ModeRegular | 0o644)
	motd.Content = []byte("hello\n")
	motd.Size = uint64(len(motd.Content))
	link := composefs.NewNode(composefs.ModeSymlink | 0o777)
	link.Payload = "../bin/tool"
	for _, e := range []struct {
		dir  *composefs.Node
		name string
		n    *composefs.Node
	}{
		{root, "bin", bin}, {root, "etc", etc}, {bin, "tool", tool},
		{bin, "tool-again", tool}, // a hard link
		{etc, "motd", motd}, {etc, "tool", link},
	} {
		if err := e.dir.Add(e.name, e.n); err != nil {
			log.Fatal(err)
		}
	}
	tool.Nlink = 2

	var img bytes.Buffer // or an atomically written file
	res, err := composefs.Write(&img, root, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes, %d inodes, format version %d\n", res.Size, res.Inodes, res.Version)
	dump.Write(os.Stdout, root)
	// Output:
	// 16384 bytes, 262 inodes, format version 0
	// / 0 40755 1 0 0 0 0.0 - - -
	// /bin 0 40755 1 0 0 0 0.0 - - -
	// /bin/tool 1200 100755 2 0 0 0 0.0 14/21e99eb0d358c63ba00320e0d399c1f9a837d76241591229d76d7eb83c3a2f - 1421e99eb0d358c63ba00320e0d399c1f9a837d76241591229d76d7eb83c3a2f security.capability=\x01\x00\x00\x02
	// /bin/tool-again 1200 @100755 2 0 0 0 0.0 /bin/tool - 1421e99eb0d358c63ba00320e0d399c1f9a837d76241591229d76d7eb83c3a2f security.capability=\x01\x00\x00\x02
	// /etc 0 40755 1 0 0 0 0.0 - - -
	// /etc/motd 6 100644 1 0 0 0 0.0 - hello\n -
	// /etc/tool 11 120777 1 0 0 0 0.0 ../bin/tool - -
}
