package vmtests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/boot"
	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/repo"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/guest"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// lifeFile is the content of a test file: lifeFileSize bytes that depend on name and
// version, so that changed files make new objects of a known size.
func lifeFile(name string, version int) []byte {
	line := fmt.Sprintf("%s version %d\n", name, version)
	return bytes.Repeat([]byte(line), lifeFileSize/len(line)+1)[:lifeFileSize]
}

// lifeFileSize is the size of each test file.
const lifeFileSize = 256 << 10

const (
	lifeChanged  = 18 // files image 2 changes
	lifeFiles    = 24
	lifeSwapped  = "/usr/share/life/swapped" // its object is replaced on disk after install
	lifeUnchange = "/usr/share/life/f20"
)

// lifeTree writes the root of image version v (1, 2 or 3).
func lifeTree(t *testing.T, dir string, v int, guestBin, cert string) string {
	tree := filepath.Join(dir, fmt.Sprintf("tree%d", v))
	files := map[string][]byte{
		"/etc/lifeguest/read": []byte(lifeSwapped + "\n" + lifeUnchange + "\n"),
	}
	for i := 0; i < lifeFiles; i++ {
		fv := 1
		if i < lifeChanged && v >= 2 {
			fv = 2
		}
		if i == 0 && v == 3 {
			fv = 3
		}
		files[fmt.Sprintf("/usr/share/life/f%02d", i)] = lifeFile(fmt.Sprint(i), fv)
	}
	if v == 1 {
		files["/usr/share/life/only1"] = lifeFile("only in image 1", 1)
		files[lifeSwapped] = lifeFile("swapped", 1)
	}
	if v == 3 {
		files["/etc/lifeguest/poweroff"] = []byte("this image never gets blessed\n")
	}
	certPEM, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	files["/etc/lifeguest/cert.pem"] = certPEM
	for p, b := range files {
		write(t, filepath.Join(tree, p), b)
	}
	bin, err := os.ReadFile(guestBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tree, "sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sbin/init"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	return tree
}

// TestLife is a device's life in VM boots: install into an empty
// filesystem (on the host, whose kernel has no fs-verity: the init's
// provision_verity enables it at first boot); update from the booted
// system into the other slot with power cuts (no sync) during the update,
// each followed by a boot that must boot a signed image and find the
// repository consistent; the trial boot, bless; a third image that powers
// off at once and is never blessed, which the init stops booting after its
// tries; gc of the objects only the first image used.
//
// CFSROOT_LIFE_POWERCUTS=N cuts the power N times (default 2) at the first
// N points where a clean update changes the disk, one cut per boot; "all"
// cuts it at each of the 22 points (each new object stored, objects synced,
// signature, image, state commit).
func TestLife(t *testing.T) {
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "mkfs.ext4")
	started := time.Now()
	dir := t.TempDir()
	guestBin := vm.BuildStatic(t, "./vmtests/internal/lifeguest")
	initBin := vm.BuildStatic(t, "./init")
	cert, key := vm.SigningCert(t, "cfsroot life signer")
	signer, certX := loadSignerTB(t, key, cert)
	trust := signature.NewTrustStore(certX)

	// Three signed images sharing the build machine's object store.
	srcTree := filepath.Join(dir, "src")
	store, err := composefs.OpenStore(filepath.Join(srcTree, "objects"))
	if err != nil {
		t.Fatal(err)
	}
	digests := map[int]verity.Digest{}
	for v := 1; v <= 3; v++ {
		root, err := composefs.FromDir(lifeTree(t, dir, v, guestBin, cert), &composefs.BuildOptions{Store: store})
		if err != nil {
			t.Fatal(err)
		}
		var img bytes.Buffer
		res, err := composefs.Write(&img, root, nil)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := signature.SignDigest(res.Digest, signer, certX)
		if err != nil {
			t.Fatal(err)
		}
		digests[v] = res.Digest
		write(t, filepath.Join(srcTree, fmt.Sprintf("img%d.cfs", v)), img.Bytes())
		write(t, filepath.Join(srcTree, fmt.Sprintf("img%d.cfs.sig", v)), sig)
	}
	write(t, filepath.Join(srcTree, "cert.pem"), testutil.ReadFile(t, cert))

	// Install image 1 into slot a of an empty filesystem, on the host.
	diskTree := filepath.Join(dir, "disk")
	r, err := repo.Open(filepath.Join(diskTree, "composefs"))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ires, err := r.Install(repo.InstallOptions{Slot: "a", Image: filepath.Join(srcTree, "img1.cfs"), Store: store.Dir(), Trusted: trust})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host install of image 1: %d objects, %d bytes, %v; %d files left for provision_verity", ires.Copied, ires.CopiedBytes, time.Since(t0).Round(time.Millisecond), ires.NoVerity)
	// An offline attack: the swapped file's object gets other content of
	// the same size before the first boot provisions fs-verity on it.
	swappedObj := objectOf(t, lifeFile("swapped", 1))
	p := filepath.Join(diskTree, "composefs/objects", swappedObj)
	os.Remove(p)
	write(t, p, lifeFile("swapped", 666))

	disk := vm.Ext4(t, diskTree, "cfsroot-life", "64M")
	src := vm.Ext4(t, srcTree, "life-src", "64M")
	cfg := write(t, filepath.Join(dir, "config.json"), []byte(`{"disk": "LABEL=cfsroot-life", "slots": ["a", "b"], "tpm": "optional", "provision_verity": true}`))
	initrd := vm.Initramfs(t, initramfs.Spec{Init: initBin, ModuleDir: k.Modules, Modules: vm.BootModules, Certs: []string{cert}, Config: cfg})

	boots := 0
	bootOnce := func(what string, args ...string) (*vm.Result, boot.Status) {
		t.Helper()
		boots++
		res := vm.Boot(t, vm.Options{Name: fmt.Sprintf("life%d-%s", boots, what), Kernel: k.Image, Initramfs: initrd,
			Disks: []string{disk, src}, Append: args, Timeout: 2 * time.Minute})
		t.Logf("boot %d (%s): %v, ended %s", boots, what, res.Elapsed.Round(time.Millisecond), res.End)
		var st boot.Status
		sr, ok := res.Result("status")
		if !ok || !sr.OK || json.Unmarshal([]byte(sr.Data["json"]), &st) != nil {
			t.Fatalf("boot %d (%s): no status.json from the booted system (console %s)", boots, what, res.LogFile)
		}
		for _, s := range st.Steps {
			if s.Step == "slots" && st.Provision != nil {
				t.Logf("boot %d: step slots %d ms: provision_verity %d ms, slot state and attempt (remounts, state file) %d ms",
					boots, s.MS, st.Provision.MS, s.MS-st.Provision.MS)
			}
		}
		if st.VerifiedBy != "signature" || (st.Image != "a" && st.Image != "b") {
			t.Errorf("boot %d: booted %s verified by %s", boots, st.Image, st.VerifiedBy)
		}
		return res, st
	}
	// checkRepo: the guest's fsck passed (every image under its final
	// name has all its objects with the right digests, no object under a
	// final name has other content, the booted image is signed).
	checkRepo := func(res *vm.Result, which int, st boot.Status) guest.Result {
		t.Helper()
		var fs []guest.Result
		for _, r := range res.Results {
			if r.Name == "fsck" {
				fs = append(fs, r)
			}
		}
		if len(fs) <= which {
			t.Fatalf("boot %d: no fsck result %d (console %s)", boots, which, res.LogFile)
		}
		f := fs[which]
		// The object swapped before the first boot is found as long as
		// image 1 is installed; nothing else may be wrong.
		for _, e := range strings.Split(f.Error, "\n") {
			if e != "" && !strings.Contains(e, swappedObj) {
				t.Errorf("boot %d: repository check failed: %s", boots, e)
			}
		}
		if f.Data["signed:"+st.Image] != "yes" || f.Data["image:"+st.Image] != st.Digest {
			t.Errorf("boot %d: booted %s %s, repository has %s (signed: %s)", boots, st.Image, st.Digest, f.Data["image:"+st.Image], f.Data["signed:"+st.Image])
		}
		return f
	}

	// Boot 1: first boot provisions fs-verity; the swapped object reads as
	// EIO; the disk is detached; then the update to image 2 starts, and
	// the power is cut during it (no sync).
	cuts := 2
	switch v := os.Getenv("CFSROOT_LIFE_POWERCUTS"); v {
	case "":
	case "all":
		cuts = 1000
	default:
		if cuts, err = strconv.Atoi(v); err != nil {
			t.Fatalf("CFSROOT_LIFE_POWERCUTS=%q: want a number or all", v)
		}
	}
	update2 := "lifeguest.do=update:img2:a,b:2"
	// The points where a clean update changes the disk, in order: each new
	// object (by path), then the fixed points of repo.Install.
	var canonical []string
	for _, o := range testutil.ObjectsOnlyIn(t, filepath.Join(srcTree, "img2.cfs"), filepath.Join(srcTree, "img1.cfs")) {
		canonical = append(canonical, "object:"+o)
	}
	canonical = append(canonical, "objects-synced", "sig-written", "image-written", "committed")
	var points []string
	for i := 0; ; i++ {
		args := []string{update2}
		if i < cuts && i < len(canonical) {
			// Boot i cuts at the i-th point of a clean update, or the
			// first later one its run reaches (work that a cut lost
			// is redone first): successive boots sweep the update.
			args = append(args, "lifeguest.crash="+canonical[i])
		}
		res, st := bootOnce(fmt.Sprintf("update2-%d", i), args...)
		if i == 0 {
			res.Require(t, "detached", "read:"+lifeUnchange)
			if st.Image != "a" || st.Digest != digests[1].String() || st.Provision == nil || st.Provision.Images != 1 || st.Provision.Objects != ires.Copied || len(st.Provision.Errors) != 0 {
				t.Errorf("first boot: image %s %s, provision %+v; want a %s, 1 image and %d objects provisioned", st.Image, st.Digest, st.Provision, digests[1], ires.Copied)
			}
			if rr, _ := res.Result("read:" + lifeSwapped); rr.OK || !strings.Contains(rr.Error, "input/output error") {
				t.Errorf("read of %s, whose object was swapped before provisioning: %+v; want EIO", lifeSwapped, rr)
			}
			if st.Provision != nil {
				t.Logf("provision_verity: %d images, %d objects in %d ms", st.Provision.Images, st.Provision.Objects, st.Provision.MS)
			}
		} else if st.Image != "a" {
			t.Fatalf("boot %d after a power cut booted %s; the update had not committed", boots, st.Image)
		}
		checkRepo(res, 0, st)
		if c, ok := res.Result("crash"); ok {
			points = append(points, c.Data["point"])
			if c.Data["point"] == "committed" {
				break // the next boot is the trial
			}
			continue
		}
		u := res.Require(t, "update")["update"]
		if u.Data["slot"] != "b" {
			t.Fatalf("update went into slot %q", u.Data["slot"])
		}
		checkRepo(res, 1, st)
		copied, _ := strconv.ParseFloat(u.Data["copied_bytes"], 64)
		img, _ := strconv.ParseFloat(u.Data["image_bytes"], 64)
		written, _ := strconv.ParseFloat(u.Data["written"], 64)
		t.Logf("update to image 2 (after %d power cuts): %s new objects (%s bytes) + image %s bytes; disk writes %s bytes: ratio %.3f; %s ms",
			len(points), u.Data["copied"], u.Data["copied_bytes"], u.Data["image_bytes"], u.Data["written"], written/(copied+img), u.Data["ms"])
		break
	}
	t.Logf("power cut at %d points: %v", len(points), points)
	if cuts >= 1000 && len(points) < 20 {
		t.Errorf("only %d power-cut points; want at least 20", len(points))
	}
	if cuts >= len(canonical) && !slices.Equal(points, canonical) {
		t.Errorf("power cut at %v, want every point of a clean update %v", points, canonical)
	}

	// The trial boot of image 2: bless it, then update to image 3.
	res, st := bootOnce("trial2", "lifeguest.do=bless+update:img3:a,b:2")
	if st.Image != "b" || st.Digest != digests[2].String() || st.Slots == nil || st.Slots.BootedAs != "trial" || st.Slots.TriesLeft != 1 || st.Slots.TriesDone != 1 {
		t.Errorf("trial boot: %s %s slots %+v", st.Image, st.Digest, st.Slots)
	}
	rr := res.Require(t, "bless", "update")
	if rr["update"].Data["slot"] != "a" {
		t.Errorf("third image went into slot %q, want a", rr["update"].Data["slot"])
	}
	if f := checkRepo(res, 1, st); f.Data["state"] != `{"good":"b","trial":"a","tries_left":2}` {
		t.Errorf("state after bless and update: %s", f.Data["state"])
	}

	// Image 3 powers off at once, twice; then the init boots b by itself.
	for i := 0; i < 2; i++ {
		res, st := bootOnce(fmt.Sprintf("trial3-%d", i))
		res.Require(t, "poweroff-at-once")
		if st.Image != "a" || st.Digest != digests[3].String() || st.Slots.BootedAs != "trial" || st.Slots.TriesLeft != 1-i {
			t.Errorf("trial boot %d of image 3: %s slots %+v", i, st.Image, st.Slots)
		}
	}
	res, st = bootOnce("fallback", "lifeguest.do=gc")
	if st.Image != "b" || st.Slots.BootedAs != "good" || !strings.Contains(st.Slots.Note, "no tries left") || !res.Contains("no tries left") {
		t.Errorf("after image 3's tries: booted %s, slots %+v", st.Image, st.Slots)
	}
	g := res.Require(t, "gc")["gc"]
	removed := strings.Fields(g.Data["removed"])
	img := func(n int) string { return filepath.Join(srcTree, fmt.Sprintf("img%d.cfs", n)) }
	want := testutil.ObjectsOnlyIn(t, img(1), img(2), img(3))
	if !slices.Equal(removed, want) {
		t.Errorf("gc removed %v; composefs-info says only image 1 used %v", removed, want)
	}
	t.Logf("TestLife: %d boots, %v", boots, time.Since(started).Round(time.Second))
}

func objectOf(t *testing.T, content []byte) string {
	t.Helper()
	d, err := verity.DigestReader(bytes.NewReader(content), verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	return composefs.ObjectPath(d.Sum)
}
