package main

import (
	"fmt"
	"io"

	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
)

func init() {
	register(&command{
		name:    "dump",
		args:    "IMAGE...",
		summary: "print each composefs IMAGE as composefs-dump(5) text, as `composefs-info dump` does",
		run:     runDump,
	})
}

func runDump(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(commands["dump"], stderr)
	images, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(images) == 0 {
		return usagef("dump: no IMAGE given")
	}
	for _, path := range images {
		if err := dumpImage(path, stdout); err != nil {
			return err
		}
	}
	return nil
}

func dumpImage(path string, w io.Writer) error {
	img, err := reader.Open(path)
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	defer img.Close()
	root, err := img.Tree()
	if err != nil {
		return fmt.Errorf("dump %s: %w", path, err)
	}
	if err := dump.Write(w, root); err != nil {
		return fmt.Errorf("dump %s: %w", path, err)
	}
	return nil
}
