package kmod

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// Entry is one line of a load list: a module file and whether a failure to
// load it may be ignored.
type Entry struct {
	// Path is the module file's absolute path in the initramfs.
	Path string
	// Optional marks soft dependencies (see Module.Optional).
	Optional bool
}

// The load list is a text file, one module per line, in load order:
//
//	# comment
//	/lib/modules/6.12.57+deb13-amd64/kernel/lib/crc16.ko
//	/lib/modules/6.12.57+deb13-amd64/kernel/arch/x86/crypto/crc32c-intel.ko optional
//
// A path is absolute and has no white space; the only flag is "optional".
// Blank lines and lines starting with '#' are ignored.
const listHeader = "# cfsroot module load list: loaded in this order; \"optional\": may fail to load\n"

// WriteList writes entries as a load list.
func WriteList(w io.Writer, entries []Entry) error {
	var b strings.Builder
	b.WriteString(listHeader)
	for _, e := range entries {
		if err := checkListPath(e.Path); err != nil {
			return err
		}
		b.WriteString(e.Path)
		if e.Optional {
			b.WriteString(" optional")
		}
		b.WriteByte('\n')
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("kmod: writing load list: %w", err)
	}
	return nil
}

func checkListPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.IndexFunc(p, unicode.IsSpace) >= 0 {
		return fmt.Errorf("kmod: load list path %q must be absolute and free of white space", p)
	}
	return nil
}

// ParseList reads a load list written by WriteList.
func ParseList(r io.Reader) ([]Entry, error) {
	var out []Entry
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		e := Entry{Path: f[0]}
		if err := checkListPath(e.Path); err != nil {
			return nil, fmt.Errorf("kmod: load list line %d: %w", n, err)
		}
		for _, flag := range f[1:] {
			if flag != "optional" {
				return nil, fmt.Errorf("kmod: load list line %d: unknown flag %q (only \"optional\" is known)", n, flag)
			}
			e.Optional = true
		}
		out = append(out, e)
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("kmod: reading load list: %w", err)
	}
	return out, nil
}
