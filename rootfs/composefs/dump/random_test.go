package dump_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
)

// mkcomposefs is Debian sid's mkcomposefs 1.0.8 (tools/fetch-mkcomposefs.sh).
func mkcomposefs(t *testing.T) string {
	return testutil.ComposefsTool(t, "mkcomposefs")
}

// gen writes random but valid dump text.
type gen struct {
	r     *rand.Rand
	b     strings.Builder
	files []string // paths of non-directories, hard link targets
	xpool [][2]string
	mtime string
	left  int // entries still to generate
}

// esc escapes every byte that is not a letter or digit as \xHH (any
// escaping is valid input; this one exercises the decoder).
func esc(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') || c == '/' || c == '.' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	return b.String()
}

func (g *gen) bytes(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.r.IntN(256))
	}
	return string(b)
}

func (g *gen) name(used map[string]bool) string {
	for {
		var n string
		switch g.r.IntN(8) {
		case 0:
			n = fmt.Sprintf("%02x", g.r.IntN(256)) // collides with the root whiteouts
		case 1:
			n = strings.Repeat("n", 200+g.r.IntN(56))
		case 2:
			n = strings.ReplaceAll(strings.ReplaceAll(g.bytes(1+g.r.IntN(12)), "/", "_"), "\x00", "_")
		case 3:
			n = []string{"-", "!x", "+", ".a", "..b", "a b", "=", "\\"}[g.r.IntN(8)]
		default:
			n = fmt.Sprintf("f%d", g.r.IntN(100000))
		}
		if n != "." && n != ".." && !used[n] {
			used[n] = true
			return n
		}
	}
}

func (g *gen) xattrs() string {
	var b strings.Builder
	seen := map[string]bool{}
	for range g.r.IntN(4) {
		x := g.xpool[g.r.IntN(len(g.xpool))]
		if seen[x[0]] {
			continue
		}
		seen[x[0]] = true
		fmt.Fprintf(&b, " %s=%s", esc(x[0]), esc(x[1]))
	}
	return b.String()
}

func (g *gen) meta() string {
	mt := g.mtime
	if g.r.IntN(5) == 0 {
		mt = fmt.Sprintf("%d.%d", g.r.Int64N(1<<33)-(1<<31), g.r.IntN(1000000000))
	}
	uid, gid := g.r.IntN(3), g.r.IntN(3)
	if g.r.IntN(8) == 0 {
		uid, gid = g.r.IntN(1<<31), 70000
	}
	return fmt.Sprintf("%d %d %d", uid, gid, 0) + " " + mt
}

func (g *gen) line(path string, size uint64, mode uint32, nlink int, rest string) {
	meta := g.meta()
	fields := strings.SplitN(meta, " ", 4)
	fmt.Fprintf(&g.b, "%s %d %o %d %s %s %s %s %s%s\n", esc(path), size, mode, nlink, fields[0], fields[1], fields[2], fields[3], rest, g.xattrs())
}

func (g *gen) dir(path string, depth int) {
	used := map[string]bool{}
	n := g.r.IntN(12)
	if g.r.IntN(6) == 0 {
		n = 150 + g.r.IntN(200) // several dirent blocks
	}
	var subdirs []string
	prefix := strings.TrimSuffix(path, "/")
	for range n {
		if g.left <= 0 {
			break
		}
		g.left--
		p := prefix + "/" + g.name(used)
		switch k := g.r.IntN(20); {
		case k < 3 && depth < 4:
			g.line(p, 4096, 0o40000|uint32(g.r.IntN(0o7777)), 2, "- - -")
			subdirs = append(subdirs, p)
			continue
		case k < 6: // inline
			c := g.bytes(1 + g.r.IntN(composefs.MaxInlineContent))
			if g.r.IntN(2) == 0 {
				c = c[:min(len(c), 1+g.r.IntN(64))]
			}
			g.line(p, uint64(len(c)), 0o100000|uint32(g.r.IntN(0o7777)), 1, "- "+esc(c)+" -")
		case k < 11: // external
			size := uint64(1 + g.r.Int64N(1<<uint(1+g.r.IntN(50))))
			payload, digest := "-", "-"
			if g.r.IntN(4) != 0 {
				d := g.bytes(32)
				digest = fmt.Sprintf("%x", d)
				payload = composefs.ObjectPath([]byte(d))
			} else if g.r.IntN(2) == 0 {
				payload = esc("/odd path")
			}
			g.line(p, size, 0o100000|uint32(g.r.IntN(0o7777)), 1+g.r.IntN(3), payload+" - "+digest)
		case k < 12:
			g.line(p, 0, 0o100644, 1, "- - -")
		case k < 14:
			t := g.bytes(1 + g.r.IntN(composefs.MaxSymlinkLen))
			t = strings.ReplaceAll(t, "\x00", "x")
			if g.r.IntN(2) == 0 {
				t = t[:min(len(t), 20)]
			}
			g.line(p, uint64(len(t)), 0o120777, 1, esc(t)+" - -")
		case k < 15:
			fmt.Fprintf(&g.b, "%s 0 %o 1 0 0 %d %s - - -\n", esc(p), []uint32{0o20600, 0o60600}[g.r.IntN(2)], 1+g.r.IntN(1<<20), g.mtime)
		case k < 16:
			fmt.Fprintf(&g.b, "%s 0 20%03o 1 0 0 0 %s - - -%s\n", esc(p), g.r.IntN(0o777), g.mtime, g.xattrs()) // whiteout
		case k < 17:
			g.line(p, 0, []uint32{0o10644, 0o140755}[g.r.IntN(2)], 1, "- - -")
		default:
			if len(g.files) > 0 {
				// A hard link, to a file listed before or after it.
				fmt.Fprintf(&g.b, "%s 0 @100644 0 0 0 0 0.0 %s - -\n", esc(p), esc(g.files[g.r.IntN(len(g.files))]))
				continue
			}
			g.line(p, 0, 0o100600, 1, "- - -")
		}
		g.files = append(g.files, p)
	}
	for _, d := range subdirs {
		g.dir(d, depth+1)
	}
}

func randomDump(seed uint64) []byte {
	g := &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	g.left = 50 + g.r.IntN(1500)
	g.mtime = fmt.Sprintf("%d.%d", 1600000000+g.r.IntN(1000), g.r.IntN(3))
	for range 12 {
		key := []string{"user.", "trusted.", "security.", "trusted.overlay.", "system.posix_acl_access", "foo.", "user.overlay."}[g.r.IntN(7)]
		key += []string{"a", "b", "opaque", "whiteouts", "redirect", "selinux", "x=y"}[g.r.IntN(7)]
		g.xpool = append(g.xpool, [2]string{key, g.bytes(g.r.IntN(300))})
	}
	g.line("/", 4096, 0o40755, 3, "- - -")
	g.dir("/", 0)
	return []byte(g.b.String())
}

// TestRandomDumpsMatchMkcomposefs builds random dumps (every file type,
// escaped names and xattrs, shared xattrs, whiteouts, hard links in any
// order, multi-block directories, big sizes, odd mtimes and ids) with
// Parse+Write and with mkcomposefs --from-file and compares the images.
func TestRandomDumpsMatchMkcomposefs(t *testing.T) {
	mkcfs := mkcomposefs(t)
	n := 100
	if testing.Short() {
		n = 10
	}
	dir := t.TempDir()
	same := 0
	for seed := range uint64(n) {
		text := randomDump(seed)
		in := filepath.Join(dir, "in.dump")
		out := filepath.Join(dir, "ref.cfs")
		os.Remove(out)
		os.WriteFile(in, text, 0o644)
		cmd := exec.Command(mkcfs, "--from-file", in, out)
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "CFS_PARSE_STRICT=") {
				cmd.Env = append(cmd.Env, e)
			}
		}
		refOut, refErr := cmd.CombinedOutput()
		root, err := dump.Parse(bytes.NewReader(text), nil)
		var img bytes.Buffer
		if err == nil {
			_, err = composefs.Write(&img, root, nil)
		}
		if (err == nil) != (refErr == nil) {
			os.WriteFile(filepath.Join(os.TempDir(), fmt.Sprintf("random-%d.dump", seed)), text, 0o644)
			t.Fatalf("seed %d: ours: %v; mkcomposefs: %v %s", seed, err, refErr, refOut)
		}
		if err != nil {
			t.Logf("seed %d: both reject: %v / %s", seed, err, strings.TrimSpace(string(refOut)))
			continue
		}
		ref, _ := os.ReadFile(out)
		if !bytes.Equal(img.Bytes(), ref) {
			p := filepath.Join(os.TempDir(), fmt.Sprintf("random-%d.dump", seed))
			os.WriteFile(p, text, 0o644)
			t.Fatalf("seed %d: image differs from mkcomposefs' at byte %d (dump saved to %s)", seed, firstDiff(img.Bytes(), ref), p)
		}
		same++
	}
	if same < n/2 {
		t.Errorf("only %d of %d random dumps were accepted: the generator makes too many invalid ones", same, n)
	}
	t.Logf("%d of %d random dumps gave identical images, the others were rejected by both", same, n)
}
