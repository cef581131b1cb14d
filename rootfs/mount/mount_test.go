package mount

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
)

func requireRoot(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t, "the mount tests")
}

func mountpoint(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestEROFS mounts a reference composefs image (made by mkcomposefs) from a
// file on the test's filesystem and from one on tmpfs, which EROFS cannot
// read directly, so a loop device must step in.
func TestEROFS(t *testing.T) {
	requireRoot(t)
	img, err := os.ReadFile(testutil.ComposefsVectorNamed(t, "special").ReferenceImage(t))
	if err != nil {
		t.Fatal(err)
	}
	tmpfs := mountpoint(t)
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{t.TempDir(), tmpfs} {
		p := filepath.Join(dir, "special.cfs")
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
		target := mountpoint(t)
		loop, err := EROFS(p, target)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: loop device %q", dir, loop)
		if dir == tmpfs && loop == "" {
			t.Errorf("an image on tmpfs mounted without a loop device?")
		}
		if _, err := os.Lstat(filepath.Join(target, "00")); err != nil {
			t.Errorf("mounted image lacks /00: %v", err)
		}
		if err := unix.Unmount(target, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := EROFS(filepath.Join(t.TempDir(), "missing"), mountpoint(t)); err == nil {
		t.Error("mounting a missing image succeeded")
	}
}

// TestOverlay builds an image and object store with the composefs writer,
// mounts it as the init does, and reads the files back through overlayfs.
// The host kernel has no fs-verity, so verity=require must refuse the
// objects (the VM tests show it accepting verified ones), while verity=off
// shows the plumbing works.
func TestOverlay(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	files := map[string][]byte{
		"big.txt":   bytes.Repeat([]byte("external object content\n"), 50),
		"small.txt": []byte("inline\n"),
	}
	for name, b := range files {
		os.WriteFile(filepath.Join(src, name), b, 0o644)
	}
	objects := t.TempDir()
	store, err := composefs.OpenStore(objects)
	if err != nil {
		t.Fatal(err)
	}
	root, err := composefs.FromDir(src, &composefs.BuildOptions{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(t.TempDir(), "img.cfs")
	f, _ := os.Create(imgPath)
	if _, err := composefs.Write(f, root, nil); err != nil {
		t.Fatal(err)
	}
	f.Close()
	meta := mountpoint(t)
	if _, err := EROFS(imgPath, meta); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		verity  string
		wantEIO bool
	}{{"off", false}, {"require", true}} {
		target := mountpoint(t)
		ov := Overlay{Metadata: meta, Objects: objects, Verity: tc.verity}
		if err := ov.Mount(target); err != nil {
			t.Fatal(err)
		}
		for name, want := range files {
			got, err := os.ReadFile(filepath.Join(target, name))
			external := len(want) > 64
			switch {
			case tc.wantEIO && external:
				if !errors.Is(err, unix.EIO) {
					t.Errorf("verity=%s: %s (object without fs-verity) read: %v, want EIO", tc.verity, name, err)
				}
			case err != nil || !bytes.Equal(got, want):
				t.Errorf("verity=%s: %s: %v, content equal %v", tc.verity, name, err, bytes.Equal(got, want))
			}
		}
		unix.Unmount(target, 0)
	}
}

func TestOverlayOptions(t *testing.T) {
	got, err := Overlay{Metadata: "/m", Objects: "/o"}.Options()
	if err != nil || got != "lowerdir=/m::/o,metacopy=on,redirect_dir=on,verity=require" {
		t.Errorf("Options = %q, %v", got, err)
	}
	got, _ = Overlay{Metadata: "/m", Objects: "/o", Upper: "/u", Work: "/w"}.Options()
	if !strings.HasSuffix(got, ",upperdir=/u,workdir=/w") {
		t.Errorf("Options with upper = %q", got)
	}
	if _, err := (Overlay{Metadata: "/a,b", Objects: "/o"}).Options(); err == nil {
		t.Error("a comma in a path was accepted")
	}
}
