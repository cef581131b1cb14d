package boot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/diskfile"
)

// TestRunHostileFiles: files on the disk in place of a signature, image or
// policy that made os.ReadFile and open(2) hang PID 1 (a FIFO) or run it
// out of memory (a symlink to /dev/zero, an 8 GiB sparse file) are refused
// with a named error, at once, and the next slot boots (issue 12,
// finding 4).
func TestRunHostileFiles(t *testing.T) {
	fifo := func(t *testing.T, p string) {
		os.Remove(p)
		if err := unix.Mkfifo(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, h *hostEnv) // spoils slot "a"
		file  string                         // the refused file, relative to images/
		want  error
	}{
		{"sig symlink to /dev/zero", func(t *testing.T, h *hostEnv) {
			p := h.imagePath("a") + ".sig"
			os.Remove(p)
			os.Symlink("/dev/zero", p)
		}, "a.cfs.sig", diskfile.ErrSymlink},
		{"sig FIFO", func(t *testing.T, h *hostEnv) { fifo(t, h.imagePath("a")+".sig") }, "a.cfs.sig", diskfile.ErrNotRegular},
		{"sig 8 GiB sparse", func(t *testing.T, h *hostEnv) {
			if err := os.Truncate(h.imagePath("a")+".sig", 8<<30); err != nil {
				t.Fatal(err)
			}
		}, "a.cfs.sig", diskfile.ErrTooLarge},
		{"image FIFO", func(t *testing.T, h *hostEnv) { fifo(t, h.imagePath("a")) }, "a.cfs", diskfile.ErrNotRegular},
		{"image symlink", func(t *testing.T, h *hostEnv) {
			os.Remove(h.imagePath("a"))
			os.Symlink("b.cfs", h.imagePath("a"))
		}, "a.cfs", diskfile.ErrSymlink},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			h.addImage("a", h.key, h.cert)
			h.addImage("b", h.key, h.cert)
			tc.plant(t, h)
			st, err := runWithin(t, h, `{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"], "fallback": true, "tpm": "optional"}`)
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, h.console.String())
			}
			if st.Image != "b" || len(st.Refused) != 1 || st.Refused[0].Slot != "a" {
				t.Fatalf("booted %s, refused %+v; want b after refusing a", st.Image, st.Refused)
			}
			reason := st.Refused[0].Reason
			if !strings.Contains(reason, filepath.Join("composefs/images", tc.file)) {
				t.Errorf("refusal %q does not name %s", reason, tc.file)
			}
			for _, want := range []string{tc.want.Error()} {
				if !strings.Contains(reason, want) {
					t.Errorf("refusal %q does not say %q", reason, want)
				}
			}
		})
	}
	// The policy next to the image is the disk's too.
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, p string)
		want  error
	}{
		{"policy FIFO", func(t *testing.T, p string) { fifo(t, p) }, diskfile.ErrNotRegular},
		{"policy symlink to /dev/zero", func(t *testing.T, p string) { os.Symlink("/dev/zero", p) }, diskfile.ErrSymlink},
		{"policy 8 GiB sparse", func(t *testing.T, p string) {
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			f.Truncate(8 << 30)
			f.Close()
		}, diskfile.ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			h.addImage("default", h.key, h.cert)
			tc.plant(t, strings.TrimSuffix(h.imagePath("default"), ".cfs")+".ipe.p7s")
			_, err := runWithin(t, h, baseConfig+`, "ipe_policy": "image", "tpm": "optional"}`)
			var se *StepError
			if !errors.As(err, &se) || se.Step != "ipe-read" || !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "default.ipe.p7s") {
				t.Fatalf("Run = %v, want a refusal at ipe-read naming default.ipe.p7s: %v", err, tc.want)
			}
		})
	}
}

// runWithin runs the boot, failing the test (instead of hanging it) if
// Run does not return within 20 seconds.
func runWithin(t *testing.T, h *hostEnv, config string) (*Status, error) {
	t.Helper()
	type result struct {
		st  *Status
		err error
	}
	cfg := h.config(config)
	done := make(chan result, 1)
	go func() {
		st, err := h.run(cfg, "")
		done <- result{st, err}
	}()
	select {
	case r := <-done:
		return r.st, r.err
	case <-time.After(20 * time.Second):
		t.Fatalf("Run blocked for 20 s\n%s", h.console.String())
	}
	return nil, nil
}
