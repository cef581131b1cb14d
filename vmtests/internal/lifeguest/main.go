// Command lifeguest is /sbin/init of the images TestLife boots: it runs an
// update, bless or gc on the device's own repository from the booted
// system, as an updater would, and reports what it saw and did as marker
// lines. What to do comes from the kernel command line (lifeguest.do=,
// ignored by cfsroot's init):
//
//	lifeguest.do=ACTION+ACTION...   update:IMAGE:SLOTS:TRIES, bless, gc
//	lifeguest.crash=POINT           cut the power (no sync) at the first
//	                                point where the update changed the disk
//	                                that is POINT or later (rank)
//
// The update source (images, objects, certificate) is the second disk,
// /dev/vdb. The repository's disk, /dev/vda, is mounted at RepoMount the
// documented way: read-only (sharing the superblock the init left
// read-only), then remounted read-write.
//
// If /etc/lifeguest/poweroff exists in the image, it reports and powers
// off at once: an image that never gets blessed.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/repo"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
	"github.com/cfsroot/cfsroot/vmtests/guest"
)

const (
	RepoMount = "/run/cfsroot/repo-disk"
	repoDir   = RepoMount + "/composefs"
	srcMount  = "/run/lifeguest-src"
)

var out io.Writer = os.Stdout

func main() {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		out = f
	}
	status, err := os.ReadFile("/run/cfsroot/status.json")
	guest.Check(out, "status", map[string]string{"json": string(status)}, err)
	if _, err := os.Stat("/etc/lifeguest/poweroff"); err == nil {
		guest.Check(out, "poweroff-at-once", nil, nil)
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], "/run/cfsroot/") {
			err = fmt.Errorf("%s is still mounted: %s", f[4], l)
		}
	}
	guest.Check(out, "detached", nil, err)
	guest.ReadFiles(out, "/etc/lifeguest/read")

	cmdline, _ := os.ReadFile("/proc/cmdline")
	var actions []string
	crashAt := ""
	for _, arg := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(arg, "lifeguest.do="); ok {
			actions = strings.Split(v, "+")
		}
		if v, ok := strings.CutPrefix(arg, "lifeguest.crash="); ok {
			crashAt = v
		}
	}
	if err := mountRepo(); err != nil {
		guest.Check(out, "mount-repo", nil, err)
		powerOff()
	}
	fsck()
	for _, a := range actions {
		act(a, crashAt)
	}
	if len(actions) > 0 {
		fsck()
	}
	guest.Check(out, "done", nil, unix.Unmount(RepoMount, 0))
	powerOff()
}

func powerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// mountRepo mounts the repository's disk read-write from the booted
// system: a read-only mount first (the superblock the init mounted is
// read-only, and a read-write mount of it would be refused as busy), then a
// remount to read-write.
func mountRepo() error {
	if err := os.MkdirAll(RepoMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/dev/vda", RepoMount, "ext4", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /dev/vda read-only: %w", err)
	}
	if err := unix.Mount("", RepoMount, "", unix.MS_REMOUNT|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount /dev/vda read-write: %w", err)
	}
	return nil
}

// fsck checks the repository as a power cut must leave it: every image
// under its final name verifies against its signature and has all its
// objects with the right digests (cfsroot check --verify), every object
// under its final name has the content its name says, and nothing else has
// a final name.
func fsck() {
	data := map[string]string{}
	var errs []error
	ts, err := signature.LoadTrustStore("/etc/lifeguest/cert.pem")
	if err != nil {
		guest.Check(out, "fsck", nil, err)
		return
	}
	r, err := repo.Open(repoDir)
	if err != nil {
		guest.Check(out, "fsck", nil, err)
		return
	}
	entries, _ := os.ReadDir(r.Path(repo.ImagesDir))
	var images []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".cfs")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		images = append(images, name)
		f, err := os.Open(r.ImagePath(name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d, err := verity.Measure(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("image %s: %w", name, err))
			continue
		}
		n, noVerity, err := r.Verify(name)
		if err != nil {
			errs = append(errs, err)
		}
		data["image:"+name] = d.String()
		data["objects:"+name] = fmt.Sprint(n)
		if noVerity > 0 {
			errs = append(errs, fmt.Errorf("image %s: %d objects without fs-verity", name, noVerity))
		}
		if sig, err := os.ReadFile(r.ImagePath(name) + ".sig"); err == nil {
			if _, err := signature.Verify(sig, d, ts); err == nil {
				data["signed:"+name] = "yes"
			}
		}
	}
	data["images"] = strings.Join(images, ",")
	objects, temps := 0, 0
	filepath.WalkDir(r.Path(repo.ObjectsDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") {
			temps++
			return nil
		}
		objects++
		rel, _ := filepath.Rel(r.Path(repo.ObjectsDir), p)
		f, err := os.Open(p)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		defer f.Close()
		dg, err := verity.Measure(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("object %s: %w", rel, err))
			return nil
		}
		if composefs.ObjectPath(dg.Sum) != rel {
			errs = append(errs, fmt.Errorf("object %s has digest %s: a partial or wrong file under a final name", rel, dg))
		}
		return nil
	})
	data["objects"] = fmt.Sprint(objects)
	data["temps"] = fmt.Sprint(temps)
	st, err := repo.ReadState(repoDir)
	if err != nil {
		errs = append(errs, err)
	}
	js, _ := json.Marshal(st)
	data["state"] = string(js)
	guest.Check(out, "fsck", data, errors.Join(errs...))
}

// sectorsWritten is /sys/block/vda/stat's "sectors written" (512 bytes).
func sectorsWritten() int64 {
	b, err := os.ReadFile("/sys/block/vda/stat")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return -1
	}
	n, _ := strconv.ParseInt(f[6], 10, 64)
	return n
}

// rank orders the points repo.Install reports: the objects by path (the
// order it stores them in), then the fixed points.
func rank(point string) string {
	point = strings.ReplaceAll(point, " ", ":")
	if o, ok := strings.CutPrefix(point, "object:"); ok {
		return "0 " + o
	}
	for i, p := range []string{"objects-synced", "sig-written", "policy-written", "image-written", "committed"} {
		if point == p {
			return fmt.Sprintf("%d", i+1)
		}
	}
	return "9 " + point
}

func act(a string, crashAt string) {
	parts := strings.Split(a, ":")
	switch parts[0] {
	case "update":
		if len(parts) != 4 {
			guest.Check(out, "update", nil, fmt.Errorf("want update:IMAGE:SLOTS:TRIES, got %q", a))
			return
		}
		update(parts[1], strings.Split(parts[2], ","), parts[3], crashAt)
	case "bless":
		st := bootedSlot()
		r, err := repo.Open(repoDir)
		if err == nil {
			_, _, err = r.Bless(st)
		}
		guest.Check(out, "bless", map[string]string{"slot": st}, err)
	case "gc":
		r, err := repo.Open(repoDir)
		var res *repo.GCResult
		if err == nil {
			res, err = r.GC([]string{bootedSlot()}, false)
		}
		data := map[string]string{}
		if res != nil {
			data["removed"] = strings.Join(res.Removed, "\n")
			data["bytes"] = fmt.Sprint(res.Bytes)
		}
		guest.Check(out, "gc", data, err)
	default:
		guest.Check(out, "action", nil, fmt.Errorf("unknown action %q", a))
	}
}

func bootedSlot() string {
	var st struct {
		Image string `json:"image"`
	}
	b, _ := os.ReadFile("/run/cfsroot/status.json")
	json.Unmarshal(b, &st)
	return st.Image
}

func update(image string, slots []string, triesArg string, crashAt string) {
	tries, _ := strconv.Atoi(triesArg)
	os.MkdirAll(srcMount, 0o755)
	if err := unix.Mount("/dev/vdb", srcMount, "ext4", unix.MS_RDONLY, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		guest.Check(out, "update", nil, fmt.Errorf("mount the update source: %w", err))
		return
	}
	ts, err := signature.LoadTrustStore(filepath.Join(srcMount, "cert.pem"))
	if err != nil {
		guest.Check(out, "update", nil, err)
		return
	}
	r, err := repo.Open(repoDir)
	if err != nil {
		guest.Check(out, "update", nil, err)
		return
	}
	booted := bootedSlot()
	st, _ := repo.ReadState(repoDir)
	slot := ""
	for _, s := range slots {
		if s != booted && s != st.Good {
			slot = s
			break
		}
	}
	points := 0
	var last string
	step := func(point string) {
		points++
		last = point
		if crashAt != "" && rank(point) >= rank(crashAt) {
			guest.Check(out, "crash", map[string]string{"point": strings.ReplaceAll(point, " ", ":"), "n": fmt.Sprint(points)}, nil)
			// No sync: what the kernel has not written yet is lost.
			unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		}
	}
	unix.Sync()
	before := sectorsWritten()
	start := time.Now()
	res, err := r.Install(repo.InstallOptions{
		Slot: slot, Image: filepath.Join(srcMount, image+".cfs"), Store: filepath.Join(srcMount, "objects"),
		Trusted: ts, Tries: tries, Protect: []string{booted}, Step: step,
	})
	elapsed := time.Since(start)
	unix.Sync()
	written := (sectorsWritten() - before) * 512
	data := map[string]string{"slot": slot, "points": fmt.Sprint(points), "last": last, "ms": fmt.Sprint(elapsed.Milliseconds()), "written": fmt.Sprint(written)}
	if res != nil {
		data["copied"] = fmt.Sprint(res.Copied)
		data["copied_bytes"] = fmt.Sprint(res.CopiedBytes)
		data["image_bytes"] = fmt.Sprint(res.ImageBytes)
		data["no_verity"] = fmt.Sprint(res.NoVerity)
		data["digest"] = res.Digest.String()
	}
	guest.Check(out, "update", data, err)
}
