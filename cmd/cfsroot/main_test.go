package main

import (
	"bytes"
	"errors"
	"flag"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestHelpSynopsisListsFlags: every flag a command's --help lists under
// Flags is also in its usage line, so the synopsis never hides an option.
func TestHelpSynopsisListsFlags(t *testing.T) {
	var cmds [][]string
	for name := range commands {
		switch name {
		case "pcr":
			cmds = append(cmds, []string{"pcr", "predict"}, []string{"pcr", "replay"})
		case "policy":
			cmds = append(cmds, []string{"policy", "generate"}, []string{"policy", "sign"})
		case "tpm":
			cmds = append(cmds, []string{"tpm", "provision"})
		default:
			cmds = append(cmds, []string{name})
		}
	}
	sort.Slice(cmds, func(i, j int) bool { return strings.Join(cmds[i], " ") < strings.Join(cmds[j], " ") })
	flagLine := regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)
	for _, c := range cmds {
		t.Run(strings.Join(c, "_"), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if err := run(append(c, "--help"), &stdout, &stderr); !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("--help: %v", err)
			}
			usage, _, _ := strings.Cut(stderr.String(), "\n")
			if !strings.HasPrefix(usage, "usage: cfsroot "+strings.Join(c, " ")) {
				t.Fatalf("first line %q is not the usage line", usage)
			}
			flags := flagLine.FindAllStringSubmatch(stderr.String(), -1)
			if len(flags) == 0 && strings.Contains(usage, "-") {
				t.Fatalf("no flags listed:\n%s", stderr.String())
			}
			for _, f := range flags {
				if !regexp.MustCompile(`(^|[ \[(|])--?` + regexp.QuoteMeta(f[1]) + `([ \]=)|]|$)`).MatchString(usage) {
					t.Errorf("flag -%s is not in the usage line %q", f[1], usage)
				}
			}
		})
	}
}
