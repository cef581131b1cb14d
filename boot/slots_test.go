package boot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/repo"
)

const abConfig = `{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"], "tpm": "optional"`

func (h *hostEnv) repoDir() string { return filepath.Join(h.root, DiskDir, "composefs") }

func (h *hostEnv) setState(st repo.State) {
	h.t.Helper()
	if err := repo.WriteState(h.repoDir(), st); err != nil {
		h.t.Fatal(err)
	}
}

func (h *hostEnv) state() repo.State {
	h.t.Helper()
	st, err := repo.ReadState(h.repoDir())
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// remountFails makes remounts (MS_REMOUNT) fail, other mounts succeed.
type remountFails struct{ *recordingMounter }

func (m remountFails) Mount(source, target, fstype string, flags uintptr, data string) error {
	if flags&unix.MS_REMOUNT != 0 {
		m.record("mount", "remount refused")
		return unix.EROFS
	}
	return m.recordingMounter.Mount(source, target, fstype, flags, data)
}

// TestRunTrialBoots: the init boots a trial slot while it has tries,
// counting each attempt on the disk (remounted read-write only for that)
// before verifying it; with no tries left, or when the attempt cannot be
// recorded, or when the trial is refused, it boots the known-good slot and
// status.json says why.
func TestRunTrialBoots(t *testing.T) {
	otherKey, otherCert := testKey(t, "not trusted")
	for _, tc := range []struct {
		name      string
		state     repo.State
		badTrial  bool // b's signature is by an untrusted key
		noRemount bool
		cmdline   string
		booted    string
		bootedAs  string
		after     repo.State
		order     []string
		note      string // in status.slots.note or .error
	}{
		{name: "trial with tries", state: repo.State{Good: "a", Trial: "b", TriesLeft: 2, TriesDone: 1},
			booted: "b", bootedAs: "trial", after: repo.State{Good: "a", Trial: "b", TriesLeft: 1, TriesDone: 2}, order: []string{"b", "a"}},
		{name: "last try", state: repo.State{Good: "a", Trial: "b", TriesLeft: 1},
			booted: "b", bootedAs: "trial", after: repo.State{Good: "a", Trial: "b", TriesDone: 1}, order: []string{"b", "a"}},
		{name: "tries used up", state: repo.State{Good: "a", Trial: "b", TriesDone: 3},
			booted: "a", bootedAs: "good", after: repo.State{Good: "a", Trial: "b", TriesDone: 3}, order: []string{"a"}, note: "no tries left"},
		{name: "trial refused", state: repo.State{Good: "a", Trial: "b", TriesLeft: 3}, badTrial: true,
			booted: "a", bootedAs: "good", after: repo.State{Good: "a", Trial: "b", TriesLeft: 2, TriesDone: 1}, order: []string{"b", "a"}},
		{name: "attempt not recordable", state: repo.State{Good: "a", Trial: "b", TriesLeft: 3}, noRemount: true,
			booted: "a", bootedAs: "good", after: repo.State{Good: "a", Trial: "b", TriesLeft: 3}, order: []string{"a"}, note: "could not be recorded"},
		{name: "good without trial", state: repo.State{Good: "b"},
			booted: "b", bootedAs: "good", after: repo.State{Good: "b"}, order: []string{"b"}},
		{name: "command line chooses", state: repo.State{Good: "a", Trial: "b", TriesLeft: 3}, cmdline: "cfsroot.image=a",
			booted: "a", after: repo.State{Good: "a", Trial: "b", TriesLeft: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			if tc.noRemount {
				h.env.Mounter = remountFails{h.mounter}
			}
			h.addImage("a", h.key, h.cert)
			if tc.badTrial {
				h.addImage("b", otherKey, otherCert)
			} else {
				h.addImage("b", h.key, h.cert)
			}
			h.setState(tc.state)
			st, err := h.run(h.config(abConfig+`}`), tc.cmdline)
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, h.console.String())
			}
			if st.Image != tc.booted {
				t.Errorf("booted %s, want %s\n%s", st.Image, tc.booted, h.console.String())
			}
			if got := h.state(); got != tc.after {
				t.Errorf("state after boot %+v, want %+v", got, tc.after)
			}
			written := h.readStatus()
			if tc.cmdline != "" {
				if written.Slots != nil {
					t.Errorf("command line choice, yet slots status %+v", written.Slots)
				}
				return
			}
			ss := written.Slots
			if ss == nil {
				t.Fatalf("status.json has no slots")
			}
			if ss.BootedAs != tc.bootedAs || !slices.Equal(ss.Order, tc.order) || ss.TriesLeft != tc.after.TriesLeft || ss.TriesDone != tc.after.TriesDone {
				t.Errorf("status slots %+v, want booted as %s, order %v, state %+v", ss, tc.bootedAs, tc.order, tc.after)
			}
			if !strings.Contains(ss.Note+ss.Error, tc.note) || (tc.note == "" && ss.Note+ss.Error != "") {
				t.Errorf("status slots note %q error %q, want %q", ss.Note, ss.Error, tc.note)
			}
			if tc.note != "" && !strings.Contains(h.console.String(), tc.note) {
				t.Errorf("console does not say %q:\n%s", tc.note, h.console.String())
			}
			// The disk is read-write only around the state write, and
			// read-only again before anything is verified or mounted.
			var remounts []string
			for _, c := range h.mounter.calls {
				if strings.Contains(c, "remount") || strings.HasPrefix(c, "mount  disk") {
					remounts = append(remounts, c)
				}
			}
			wantRemounts := 0
			if tc.state.TriesLeft > 0 {
				wantRemounts = 2
				if tc.noRemount {
					wantRemounts = 1
				}
			}
			if len(remounts) != wantRemounts {
				t.Errorf("remounts %v, want %d", remounts, wantRemounts)
			}
			if !h.called("unmount", "disk") || !h.called("unmount", "image") {
				t.Errorf("disk and image not detached: %v", h.mounter.calls)
			}
		})
	}
}

// TestRunTrialNoSlotLeft: a trial without a known-good slot whose attempt
// cannot be recorded leaves nothing to boot: a clear error, not a boot of
// an uncounted trial.
func TestRunTrialNoSlotLeft(t *testing.T) {
	h := newHostEnv(t)
	h.env.Mounter = remountFails{h.mounter}
	h.addImage("b", h.key, h.cert)
	h.setState(repo.State{Trial: "b", TriesLeft: 1})
	_, err := h.run(h.config(abConfig+`}`), "")
	var se *StepError
	if !errors.As(err, &se) || se.Step != "slots" || !strings.Contains(err.Error(), "no slot to boot") {
		t.Fatalf("Run: %v", err)
	}
}

// TestRunProvisionVerity: with provision_verity, files without fs-verity
// (the image and its objects) get it before the image is verified, in one
// read-write window; without it the same disk is refused.
func TestRunProvisionVerity(t *testing.T) {
	h := newHostEnv(t)
	// An image with two external objects in the disk's object store.
	tree := t.TempDir()
	for i, c := range []string{"first object", "second object"} {
		os.MkdirAll(filepath.Join(tree, "sbin"), 0o755)
		os.WriteFile(filepath.Join(tree, fmt.Sprintf("file%d", i)), bytes.Repeat([]byte(c), 20), 0o644)
	}
	os.WriteFile(filepath.Join(tree, "sbin/init"), bytes.Repeat([]byte("#!/bin/true\n"), 10), 0o755)
	store, digest := h.addStoreImage("default", tree)
	var objects []string
	filepath.Walk(store.Dir(), func(p string, info os.FileInfo, err error) error {
		if info.Mode().IsRegular() {
			objects = append(objects, filepath.Base(p))
		}
		return nil
	})
	if len(objects) != 3 {
		t.Fatalf("store holds %v", objects)
	}
	reset := func() {
		h.noVeri["default.cfs"] = true
		for _, o := range objects {
			h.noVeri[o] = true
		}
	}
	var enabled []string
	h.env.EnableVerity = func(f *os.File, sig []byte) error {
		enabled = append(enabled, filepath.Base(f.Name()))
		delete(h.noVeri, filepath.Base(f.Name()))
		return nil
	}

	reset()
	if _, err := h.run(h.config(baseConfig+`, "tpm": "optional"}`), ""); err == nil || !strings.Contains(err.Error(), "not enabled") {
		t.Fatalf("without provision_verity: %v", err)
	}
	reset()
	h.mounter.calls = nil
	st, err := h.run(h.config(baseConfig+`, "tpm": "optional", "provision_verity": true}`), "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	if st.Digest != digest.String() || st.Provision == nil || st.Provision.Images != 1 || st.Provision.Objects != 3 || len(st.Provision.Errors) != 0 {
		t.Errorf("status digest %s provision %+v", st.Digest, st.Provision)
	}
	if len(enabled) != 4 {
		t.Errorf("enabled %v", enabled)
	}
	// rw, then ro before the image is mounted.
	var order []string
	for _, c := range h.mounter.calls {
		order = append(order, strings.Fields(c)[0])
	}
	if i := slices.Index(order, "erofs"); i < 3 || !strings.Contains(h.mounter.calls[1], fmt.Sprintf("%#x", unix.MS_REMOUNT|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC)) ||
		!strings.Contains(h.mounter.calls[2], fmt.Sprintf("%#x", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC)) {
		t.Errorf("mount calls %v: want disk, remount rw, remount ro, then the image", h.mounter.calls)
	}
	// A second boot finds everything enabled.
	h.mounter.calls = nil
	st, err = h.run(h.config(baseConfig+`, "tpm": "optional", "provision_verity": true}`), "")
	if err != nil || st.Provision.Images+st.Provision.Objects != 0 || st.Provision.Already != 4 {
		t.Errorf("second boot: %v, provision %+v", err, st.Provision)
	}
}
