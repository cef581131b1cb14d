package initramfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
)

// uroot is the module whose shell and commands an emergency shell carries:
// the one this program is built with (go.mod), so no other version is
// fetched.
const uroot = "github.com/u-root/u-root"

// ShellCommands are u-root's core commands carried next to the shell, at
// /bin/NAME: enough to look around a failed boot (logs, disks, mounts,
// processes). gosh itself has echo, cd, exit and the other builtins.
var ShellCommands = []string{"cat", "cp", "dmesg", "grep", "ls", "mkdir", "mount", "ps", "umount"}

// ShellPath is where the init looks for an emergency shell
// (on_failure "shell").
const ShellPath = "/bin/sh"

// urootVersion is the version of u-root this program was built with.
func urootVersion() (string, error) {
	bi, ok := debug.ReadBuildInfo()
	if ok {
		for _, m := range bi.Deps {
			if m.Path == uroot {
				if m.Replace != nil {
					m = m.Replace
				}
				return m.Version, nil
			}
		}
	}
	return "", errors.New("cannot tell which u-root version this program was built with")
}

// BuildShell builds u-root's gosh and ShellCommands, static
// (CGO_ENABLED=0) and reproducible (-trimpath, no build ID), with the Go
// toolchain ($GO, else go on PATH, else /usr/local/go/bin/go) into dir, and
// returns them as initramfs files: gosh at ShellPath, the commands at
// /bin/NAME. The gosh build leaves out line editing (tag goshsmall), which
// a serial console does not need.
func BuildShell(dir string) ([]File, error) {
	version, err := urootVersion()
	if err != nil {
		return nil, err
	}
	goTool := os.Getenv("GO")
	if goTool == "" {
		if goTool, err = exec.LookPath("go"); err != nil {
			goTool = "/usr/local/go/bin/go"
		}
	}
	bin := filepath.Join(dir, "bin")
	args := []string{"install", "-trimpath", "-tags", "goshsmall", "-ldflags", "-s -w -buildid="}
	for _, c := range append([]string{"gosh"}, ShellCommands...) {
		args = append(args, uroot+"/cmds/core/"+c+"@"+version)
	}
	cmd := exec.Command(goTool, args...)
	cmd.Dir = dir // outside any module: go install PKG@VERSION uses u-root's own go.mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOBIN="+bin, "GOWORK=off", "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build u-root's shell (%s %s): %w\n%s", goTool, strings.Join(args, " "), err, out)
	}
	files := []File{{Src: filepath.Join(bin, "gosh"), Dst: ShellPath, Mode: 0o755}}
	for _, c := range ShellCommands {
		files = append(files, File{Src: filepath.Join(bin, c), Dst: "/bin/" + c, Mode: 0o755})
	}
	return files, nil
}
