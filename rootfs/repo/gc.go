package repo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/objsig"
)

// GCResult says what a garbage collection removed (or would remove).
type GCResult struct {
	// Removed are the unreferenced objects ("xx/yyyy…"), sorted.
	Removed []string
	// Bytes is their total size.
	Bytes int64
	// Temps counts temporary files interrupted writers had left.
	Temps int
	// Images are the images whose objects were kept.
	Images []string
}

// GC deletes the objects no installed image (images/*.cfs) references,
// under the repository lock. keep names slots whose images must be present
// (the booted and the known-good one): if one is missing or unreadable GC
// refuses, since the objects its running system uses could not be told
// apart. Any image that cannot be read stops GC too, for the same reason.
// With dryRun nothing is removed.
func (r *Repo) GC(keep []string, dryRun bool) (*GCResult, error) {
	unlock, err := r.Lock()
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	defer unlock()
	st, err := ReadState(r.dir)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if st.Good != "" {
		keep = append(keep, st.Good)
	}
	res := &GCResult{}
	entries, err := os.ReadDir(r.Path(ImagesDir))
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	referenced := map[string]bool{}
	have := map[string]bool{}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".cfs")
		if !ok || isTemp(e.Name()) {
			continue
		}
		img, err := reader.Open(r.ImagePath(name))
		if err != nil {
			return nil, fmt.Errorf("gc: cannot tell which objects image %s uses, so nothing is removed: %w", name, err)
		}
		objs, err := collectObjects(img)
		img.Close()
		if err != nil {
			return nil, fmt.Errorf("gc: cannot tell which objects image %s uses, so nothing is removed: %w", name, err)
		}
		for _, o := range objs {
			referenced[o.path] = true
		}
		have[name] = true
		res.Images = append(res.Images, name)
	}
	for _, k := range keep {
		if k != "" && !have[k] {
			return nil, fmt.Errorf("gc: slot %s (booted or known good) has no image in %s; refusing to remove anything", k, r.Path(ImagesDir))
		}
	}

	objDir := r.Path(ObjectsDir)
	err = filepath.WalkDir(objDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(objDir, p)
		if isTemp(d.Name()) {
			res.Temps++
			if !dryRun {
				os.Remove(p)
			}
			return nil
		}
		if referenced[filepath.ToSlash(rel)] {
			return nil
		}
		// An object's builtin signature (objsig) goes with its object.
		if obj, ok := strings.CutSuffix(filepath.ToSlash(rel), objsig.Suffix); ok && referenced[obj] {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		res.Removed = append(res.Removed, filepath.ToSlash(rel))
		res.Bytes += info.Size()
		if !dryRun {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	if !dryRun {
		res.Temps += r.removeTemps()
		if err := syncDir(objDir); err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	sort.Strings(res.Removed)
	return res, nil
}
