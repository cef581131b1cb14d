//go:build linux

package kmod

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LoadFile loads one module file with finit_module(2). A module that is
// already loaded counts as loaded. Compressed files (.ko.xz, .ko.zst,
// .ko.gz) are handed to the kernel to decompress, which needs a kernel with
// MODULE_DECOMPRESS and is slow under emulation: mkinitramfs stores modules
// decompressed.
func LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("kmod: loading %s: %w", path, err)
	}
	return nil
}

// Load loads the modules of a load list in order. A required module that
// fails to load stops the loading with an error naming it; an optional one
// is reported through logf (which may be nil) and skipped. Each load is
// reported through logf with its duration.
func Load(entries []Entry, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, e := range entries {
		start := time.Now()
		err := LoadFile(e.Path)
		switch {
		case err == nil:
			logf("loaded %s in %v", Name(e.Path), time.Since(start).Round(time.Millisecond))
		case e.Optional:
			logf("optional module %s not loaded: %v", Name(e.Path), err)
		default:
			return err
		}
	}
	return nil
}
