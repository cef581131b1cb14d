package main

import (
	"bufio"
	"fmt"
	"io"
	"sort"

	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
)

func init() {
	register(&command{
		name:    "objects",
		args:    "IMAGE...",
		summary: "list the object paths the composefs IMAGEs reference (sorted, unique), as `composefs-info objects` does",
		run:     runObjects,
	})
}

func runObjects(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(commands["objects"], stderr)
	images, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(images) == 0 {
		return usagef("objects: no IMAGE given")
	}
	seen := map[string]bool{}
	for _, path := range images {
		err := walkImage(path, func(e *reader.Entry) error {
			if e.IsRegular() && e.Payload != "" {
				seen[e.Payload] = true
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("objects: %w", err)
		}
	}
	objects := make([]string, 0, len(seen))
	for o := range seen {
		objects = append(objects, o)
	}
	sort.Strings(objects) // byte order, as composefs-info's strcmp
	bw := bufio.NewWriter(stdout)
	for _, o := range objects {
		fmt.Fprintln(bw, o)
	}
	return bw.Flush()
}

// walkImage opens the image at path and walks it.
func walkImage(path string, fn reader.WalkFunc) error {
	img, err := reader.Open(path)
	if err != nil {
		return err
	}
	defer img.Close()
	if err := img.Walk(fn); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
