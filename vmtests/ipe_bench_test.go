package vmtests

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// ipeBenchRules are the policy sizes timed against the no-policy baseline;
// the benchmark also times the largest policy the kernel takes (found by
// signing, see largestPolicy). TestIPEPolicyParser checks the kernel's
// refusal of larger ones.
var ipeBenchRules = []int{10, 100, 300}

// signRulesPolicy signs, with key and cert, a policy named name holding n
// fsverity_digest rules: first (if set), decoys, and last (if set) as the
// last rule.
func signRulesPolicy(tb testing.TB, key crypto.Signer, cert *x509.Certificate, name string, version, n int, first, last *verity.Digest) []byte {
	tb.Helper()
	p := ipe.Policy{Name: name, Version: fmt.Sprintf("0.0.%d", version)}
	if first != nil {
		p.Digests = append(p.Digests, *first)
	}
	for j := len(p.Digests); j < n-1; j++ {
		s := sha256.Sum256([]byte(fmt.Sprintf("decoy %d", j)))
		p.Digests = append(p.Digests, verity.Digest{Algorithm: verity.SHA256, Sum: s[:]})
	}
	if last != nil {
		p.Digests = append(p.Digests, *last)
	} else {
		s := sha256.Sum256([]byte("decoy last"))
		p.Digests = append(p.Digests, verity.Digest{Algorithm: verity.SHA256, Sum: s[:]})
	}
	text, err := p.MarshalText()
	if err != nil {
		tb.Fatal(err)
	}
	signed, err := signature.Sign(text, key, cert, signature.Options{Hash: crypto.SHA256, IncludeCertificate: true})
	if err != nil {
		tb.Fatal(err)
	}
	return signed
}

// largestPolicy returns the most rules whose signed policy (sign(n)) is at
// most ipe.MaxPolicySize bytes, the most the kernel's PKCS#7 parser takes.
func largestPolicy(sign func(n int) []byte) int {
	n := 2
	for len(sign(n+1)) <= ipe.MaxPolicySize {
		n++
	}
	return n
}

// tinyELF returns a static x86-64 program of about 130 bytes that exits with
// status 0: one PT_LOAD segment, mov $60,%eax; xor %edi,%edi; syscall. It
// keeps the time of an exec down to the kernel's work, so that IPE's share
// shows. pad adds bytes after the code (a program with another digest).
func tinyELF(pad int) []byte {
	const base, ehsize, phsize = 0x400000, 64, 56
	code := []byte{0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05}
	size := ehsize + phsize + len(code) + pad
	b := make([]byte, 0, size)
	le := binary.LittleEndian
	b = append(b, 0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	b = le.AppendUint16(b, 2)    // ET_EXEC
	b = le.AppendUint16(b, 0x3e) // EM_X86_64
	b = le.AppendUint32(b, 1)
	b = le.AppendUint64(b, base+ehsize+phsize) // entry
	b = le.AppendUint64(b, ehsize)             // phoff
	b = le.AppendUint64(b, 0)                  // shoff
	b = le.AppendUint32(b, 0)
	b = le.AppendUint16(b, ehsize)
	b = le.AppendUint16(b, phsize)
	b = le.AppendUint16(b, 1) // phnum
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint32(b, 1) // PT_LOAD
	b = le.AppendUint32(b, 5) // PF_R|PF_X
	b = le.AppendUint64(b, 0) // offset
	b = le.AppendUint64(b, base)
	b = le.AppendUint64(b, base)
	b = le.AppendUint64(b, uint64(size))
	b = le.AppendUint64(b, uint64(size))
	b = le.AppendUint64(b, 0x1000)
	b = append(b, code...)
	return append(b, make([]byte, pad)...)
}

// BenchmarkIPEExecLatency boots the test kernel once (through OVMF, with the
// policy signer in UEFI db) and times executing tiny programs from
// fs-verity files on ext4 with no policy and with active, enforced policies
// of ipeBenchRules rules: one program is named by the first rule, the other
// by the last (IPE evaluates rules in order and stops at the first match,
// so the second is the worst case); they run alternately, and the median
// difference of pairs is IPE's cost of walking the rules. The guest also
// checks that a program without a rule is denied. Run it with
//
//	go test ./vmtests -run '^$' -bench IPEExecLatency -benchtime 1x
func BenchmarkIPEExecLatency(b *testing.B) {
	k := vm.RequireKernel(b)
	vm.RequireTools(b, "mkfs.ext4", "fsverity", "openssl")
	guestBin := vm.BuildStatic(b, "./vmtests/internal/ipeguest")
	certPath, keyPath := vm.SigningCert(b, "cfsroot ipe bench db")
	key, cert := loadSignerTB(b, keyPath, certPath)

	tree := b.TempDir()
	writeTB(b, filepath.Join(tree, "bin/first"), tinyELF(3))
	writeTB(b, filepath.Join(tree, "bin/allowed"), tinyELF(0))
	writeTB(b, filepath.Join(tree, "bin/denied"), tinyELF(7))
	for _, p := range []string{"bin/first", "bin/allowed", "bin/denied"} {
		if err := os.Chmod(filepath.Join(tree, p), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	// The rules' digests come from fsverity-utils, an independent oracle.
	fsverityDigest := func(p string) verity.Digest {
		out, err := exec.Command("fsverity", "digest", "--compact", filepath.Join(tree, p)).Output()
		if err != nil {
			b.Fatalf("fsverity digest: %v", err)
		}
		d, err := verity.ParseDigest("sha256:" + strings.TrimSpace(string(out)))
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	first, allowed := fsverityDigest("bin/first"), fsverityDigest("bin/allowed")
	sign := func(n, version int) []byte {
		return signRulesPolicy(b, key, cert, fmt.Sprintf("bench_%d", n), version, n, &first, &allowed)
	}
	// The largest policy that fits, by the size of its signed form.
	maxRules := largestPolicy(func(n int) []byte { return sign(n, 0) })
	sizes := append(append([]int{}, ipeBenchRules...), maxRules)
	for i, n := range sizes {
		writeTB(b, filepath.Join(tree, "policies", fmt.Sprintf("%d.p7s", n)), sign(n, i+1))
	}
	b.Logf("largest signed policy the kernel should take: %d rules", maxRules)
	disk := vm.Ext4(b, tree, "ipebench", "64M")
	initrd := vm.Initramfs(b, initramfs.Spec{Init: guestBin, ModuleDir: k.Modules, Modules: vm.BootModules})

	for i := 0; i < b.N; i++ {
		res := vm.Boot(b, vm.Options{
			Name:      "ipebench",
			Kernel:    k.Image,
			Initramfs: initrd,
			Disks:     []string{disk},
			DBCerts:   []string{certPath},
			Timeout:   15 * time.Minute,
		})
		names := []string{"setup", "exec-0"}
		for _, n := range sizes {
			names = append(names, fmt.Sprintf("exec-%d", n))
		}
		var table strings.Builder
		fmt.Fprintf(&table, "%8s %10s %6s %8s %8s %8s %10s %8s %14s %14s\n", "rules", "bytes", "runs",
			"last:min", "p10", "median", "mean µs", "load ms", "first:median", "last-first µs")
		for _, name := range names {
			r, ok := res.Result(name)
			if !ok {
				b.Errorf("guest reported no %s", name)
				continue
			}
			d := r.Data
			if name == "setup" {
				if !r.OK || d["bin/allowed"] != allowed.String() || d["bin/first"] != first.String() {
					b.Errorf("setup: %s; guest digests %s %s, fsverity digest on the host %s %s", r.Error, d["bin/first"], d["bin/allowed"], first, allowed)
				}
				continue
			}
			rules, _ := strconv.Atoi(d["rules"])
			if !r.OK {
				b.Errorf("%s: loading the %s-byte policy gave %q (%s)", name, d["bytes"], d["errno"], r.Error)
				continue
			}
			fmt.Fprintf(&table, "%8d %10s %6s %8s %8s %8s %10s %8s %14s %14s\n", rules, d["bytes"], d["runs"],
				d["min_us"], d["p10_us"], d["median_us"], d["mean_us"], d["load_ms"], d["first_median_us"], d["diff_median_us"])
			// The tenth percentile: under TCG on a shared host the median
			// and mean carry much of the other load. The paired difference
			// (last rule minus first rule, run alternately) isolates
			// IPE's walk over the rules.
			if v, err := strconv.ParseFloat(d["p10_us"], 64); err == nil {
				b.ReportMetric(v, fmt.Sprintf("p10-µs/exec-%d-rules", rules))
			}
			if v, err := strconv.ParseFloat(d["diff_median_us"], 64); err == nil && rules > 0 {
				b.ReportMetric(v, fmt.Sprintf("µs-last-minus-first-%d-rules", rules))
			}
		}
		b.Logf("exec latency of tiny static programs under TCG, IPE enforcing (last: named by the last rule; first: by the first; last-first: median of paired differences):\n%s", table.String())
	}
}

func writeTB(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTinyELF runs the benchmark's programs on the host (x86-64 Linux).
func TestTinyELF(t *testing.T) {
	for _, pad := range []int{0, 7} {
		p := filepath.Join(t.TempDir(), "prog")
		if err := os.WriteFile(p, tinyELF(pad), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(p).CombinedOutput(); err != nil {
			t.Errorf("tinyELF(%d): %v %s", pad, err, out)
		}
	}
}
