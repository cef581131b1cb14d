package boot

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/objsig"
	"github.com/cfsroot/cfsroot/rootfs/repo"
)

// TestRunProvisionHostile: provision_verity runs on the disk read-write
// before any signature is checked, so everything it opens is the
// attacker's. A FIFO in place of an object's signature file must not hang
// the boot, and no directory on the way (objects/xx, images, the
// repository) may be a symbolic link that takes the read-write work off
// the repository (the init's absolute paths resolve links from the
// initramfs' root). Each case: Run returns (within a bound), fs-verity is
// enabled on no file outside the repository, the disk is read-only again,
// and the error names the file.
func TestRunProvisionHostile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		signed bool                               // fsverity_certs: objects enabled with their signatures
		plant  func(h *hostEnv, objects []string) // objects: absolute paths, sorted
		errSub string                             // in status.provision.errors
	}{
		{name: "signature file a FIFO", signed: true, errSub: "FIFO",
			plant: func(h *hostEnv, objects []string) {
				for _, o := range objects {
					if err := unix.Mkfifo(objsig.Path(o), 0o644); err != nil {
						h.t.Fatal(err)
					}
				}
			}},
		{name: "object directory a symlink out of the disk", errSub: "symbolic link",
			plant: func(h *hostEnv, objects []string) {
				// objects/xx moved into the initramfs, a link left in its place.
				d := filepath.Dir(objects[0])
				out := filepath.Join(h.root, "outside", filepath.Base(d))
				os.MkdirAll(filepath.Dir(out), 0o755)
				if err := os.Rename(d, out); err != nil {
					h.t.Fatal(err)
				}
				if err := os.Symlink(out, d); err != nil {
					h.t.Fatal(err)
				}
			}},
		{name: "images directory a symlink out of the disk", errSub: "symbolic link",
			plant: func(h *hostEnv, objects []string) {
				d := filepath.Dir(h.imagePath("default"))
				out := filepath.Join(h.root, "outside-images")
				if err := os.Rename(d, out); err != nil {
					h.t.Fatal(err)
				}
				os.Symlink(out, d)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			cfg := baseConfig + `, "tpm": "optional", "provision_verity": true`
			if tc.signed {
				_, objCert := testKey(t, "cfsroot object signer")
				h.writeCert("etc/cfsroot/fsverity-certs/a.pem", objCert)
				h.env.TrustFsveritySigners = func([]*x509.Certificate) error { return nil }
				cfg += `, "fsverity_certs": "/etc/cfsroot/fsverity-certs"`
			}
			objects := h.addThreeObjectImage("default")
			h.noVeri["default.cfs"] = true
			for _, o := range objects {
				h.noVeri[filepath.Base(o)] = true
			}
			tc.plant(h, objects)
			repoReal, _ := filepath.EvalSymlinks(h.repoDir())
			var outside []string
			h.env.EnableVerity = func(f *os.File, sig []byte) error {
				real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
				if err != nil || !strings.HasPrefix(real, repoReal+"/") {
					outside = append(outside, real)
				}
				delete(h.noVeri, filepath.Base(f.Name()))
				return nil
			}
			done := make(chan error, 1)
			var st *Status
			go func() {
				var err error
				st, err = h.run(h.config(cfg+`}`), "")
				done <- err
			}()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				// Unblock the FIFO readers so the test can end.
				for _, o := range objects {
					if f, err := os.OpenFile(objsig.Path(o), os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
						f.Close()
					}
				}
				t.Fatalf("Run still running after 20 s: provision hangs the boot\n%s", h.console.String())
			}
			if len(outside) > 0 {
				t.Errorf("fs-verity enabled outside the repository: %v", outside)
			}
			if st != nil && (st.Provision == nil || !strings.Contains(strings.Join(st.Provision.Errors, "\n"), tc.errSub)) {
				t.Errorf("provision status %+v, want an error with %q", st.Provision, tc.errSub)
			}
			if st == nil && !strings.Contains(h.console.String(), tc.errSub) {
				t.Errorf("console does not say %q:\n%s", tc.errSub, h.console.String())
			}
			wantReadOnly(t, h)
		})
	}
}

// wantReadOnly checks that the last remount of the disk, if any, made it
// read-only.
func wantReadOnly(t *testing.T, h *hostEnv) {
	t.Helper()
	last := ""
	for _, c := range h.mounter.calls {
		if strings.Contains(c, fmt.Sprintf("%#x", unix.MS_REMOUNT|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC)) ||
			strings.Contains(c, fmt.Sprintf("%#x", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC)) {
			last = c
		}
	}
	if last != "" && !strings.Contains(last, fmt.Sprintf("%#x", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC)) {
		t.Errorf("the disk is left read-write: mount calls %v", h.mounter.calls)
	}
}

// TestRunStateDirSymlink: the slot state directory is a symbolic link out
// of the disk (into the initramfs). The init must not follow it to record
// a trial's attempt: it would write slots.json wherever the link points,
// off the repository, while the disk is read-write. It boots the
// known-good slot instead, as when the attempt cannot be recorded.
func TestRunStateDirSymlink(t *testing.T) {
	h := newHostEnv(t)
	h.addImage("a", h.key, h.cert)
	h.addImage("b", h.key, h.cert)
	h.setState(repo.State{Good: "a", Trial: "b", TriesLeft: 3})
	sd := filepath.Join(h.repoDir(), repo.StateDir)
	out := filepath.Join(h.root, "run/elsewhere")
	os.MkdirAll(filepath.Dir(out), 0o755)
	if err := os.Rename(sd, out); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out, sd); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(out, "slots.json"))
	st, err := h.run(h.config(abConfig+`}`), "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	after, _ := os.ReadFile(filepath.Join(out, "slots.json"))
	if !bytes.Equal(before, after) {
		t.Errorf("the init wrote through the state directory's link: %s became %s", before, after)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("files left where the link points: %v", ents)
	}
	if st.Image != "a" {
		t.Errorf("booted %s, want the known-good a (the trial's attempt cannot be recorded)", st.Image)
	}
	if st.Slots == nil || !strings.Contains(st.Slots.Error, "symbolic link") {
		t.Errorf("slots status %+v, want an error naming the symbolic link", st.Slots)
	}
	wantReadOnly(t, h)
}
