// Package kernelcfg knows which Linux kernel options the cfsroot boot chain
// needs, why, and since which kernel release, and checks a kernel
// configuration against them.
//
// The table in table.go is the single source: Fragment renders it as a
// kconfig fragment for scripts/kconfig/merge_config.sh (cfsroot.config) and
// Markdown as the option reference (README.md). Both files are committed and
// a test fails when they differ from what the table generates; regenerate
// them with
//
//	go test ./kernelcfg -run TestGenerated -update
package kernelcfg

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// maxConfigSize bounds what Parse reads: real configs are a few hundred KiB,
// so anything much larger is not a kernel config.
const maxConfigSize = 16 << 20

// Config is a parsed kernel configuration (.config, /proc/config.gz or
// /boot/config-*).
type Config struct {
	// Values maps option names without the CONFIG_ prefix to their values as
	// written: "y", "m", a number, or a string with its quotes removed.
	// Options written as "# CONFIG_X is not set" have the value "n".
	// Options absent from the file are absent from the map: the kernel
	// either predates them or their dependencies are off.
	Values map[string]string
	// Version is the kernel release from the header comment
	// ("# Linux/x86 6.12.117 Kernel Configuration"); zero if there is none.
	Version Version
}

// Version is a kernel release, compared by major and minor number.
type Version struct {
	Major, Minor, Patch int
}

// IsZero reports whether v is unknown.
func (v Version) IsZero() bool { return v == Version{} }

// Less reports whether v is older than w, ignoring patch levels (features
// arrive in x.y releases).
func (v Version) Less(w Version) bool {
	if v.Major != w.Major {
		return v.Major < w.Major
	}
	return v.Minor < w.Minor
}

func (v Version) String() string {
	if v.IsZero() {
		return "unknown"
	}
	if v.Patch != 0 {
		return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	}
	return fmt.Sprintf("%d.%d", v.Major, v.Minor)
}

var versionRE = regexp.MustCompile(`^([0-9]+)\.([0-9]+)(?:\.([0-9]+))?`)

// ParseVersion parses a kernel release such as "6.12", "6.12.117" or
// "6.12.117+deb13-amd64" (anything after the numbers is ignored).
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("kernelcfg: %q is not a kernel version (want MAJOR.MINOR, e.g. 6.12)", s)
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		v.Patch, _ = strconv.Atoi(m[3])
	}
	if v.IsZero() {
		return Version{}, fmt.Errorf("kernelcfg: %q is not a kernel version", s)
	}
	return v, nil
}

var (
	headerRE = regexp.MustCompile(`^# Linux/\S+ (\S+) Kernel Configuration$`)
	setRE    = regexp.MustCompile(`^CONFIG_([A-Za-z0-9_]+)=(.*)$`)
	unsetRE  = regexp.MustCompile(`^# CONFIG_([A-Za-z0-9_]+) is not set$`)
)

// ReadFile reads and parses the kernel configuration at path, gzipped or not.
func ReadFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kernelcfg: %w", err)
	}
	defer f.Close()
	c, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse reads a kernel configuration in the format scripts/kconfig writes,
// decompressing it first if it is gzipped (as /proc/config.gz is). It
// rejects input that is not a kernel config instead of guessing: a line
// that is neither blank, a comment, nor CONFIG_X=VALUE is an error.
func Parse(r io.Reader) (*Config, error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(6)
	var src io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("kernelcfg: gzip: %w", err)
		}
		defer zr.Close()
		src = zr
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return nil, errors.New("kernelcfg: input is xz-compressed; decompress it first (xz -dc)")
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, errors.New("kernelcfg: input is zstd-compressed; decompress it first (zstd -dc)")
	}
	data, err := io.ReadAll(io.LimitReader(src, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("kernelcfg: reading config: %w", err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("kernelcfg: input is larger than %d MiB: not a kernel config", maxConfigSize>>20)
	}
	return parseText(data)
}

func parseText(data []byte) (*Config, error) {
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, errors.New("kernelcfg: input contains NUL bytes: not a kernel config (a .config, /proc/config.gz or /boot/config-*)")
	}
	c := &Config{Values: map[string]string{}}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
		case strings.HasPrefix(trimmed, "#"):
			if m := unsetRE.FindStringSubmatch(trimmed); m != nil {
				c.Values[m[1]] = "n"
			} else if m := headerRE.FindStringSubmatch(trimmed); m != nil && c.Version.IsZero() {
				if v, err := ParseVersion(m[1]); err == nil {
					c.Version = v
				}
			}
		default:
			m := setRE.FindStringSubmatch(trimmed)
			if m == nil {
				return nil, fmt.Errorf("kernelcfg: line %d is not CONFIG_NAME=VALUE or a comment: %q: not a kernel config", i+1, clip(line))
			}
			v := m[2]
			if strings.HasPrefix(v, `"`) {
				s, err := strconv.Unquote(v)
				if err != nil {
					return nil, fmt.Errorf("kernelcfg: line %d: badly quoted string value: %q", i+1, clip(line))
				}
				v = s
			}
			c.Values[m[1]] = v
		}
	}
	if len(c.Values) == 0 {
		return nil, errors.New("kernelcfg: no CONFIG_ lines found: not a kernel config")
	}
	return c, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
