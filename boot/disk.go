package boot

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DiskSelector names a block device the way fstab does.
type DiskSelector struct {
	Kind  string // "LABEL", "UUID", "PARTUUID" or "PATH"
	Value string
}

func (s DiskSelector) String() string {
	if s.Kind == "PATH" {
		return s.Value
	}
	return s.Kind + "=" + s.Value
}

// ParseDiskSelector parses LABEL=..., UUID=..., PARTUUID=... or /dev/....
func ParseDiskSelector(s string) (DiskSelector, error) {
	if strings.HasPrefix(s, "/dev/") && !hasDotDot(s) {
		return DiskSelector{Kind: "PATH", Value: s}, nil
	}
	kind, value, ok := strings.Cut(s, "=")
	switch {
	case !ok || value == "":
	case kind == "LABEL" || kind == "UUID" || kind == "PARTUUID":
		if kind != "LABEL" {
			value = strings.ToLower(value)
		}
		return DiskSelector{Kind: kind, Value: value}, nil
	}
	return DiskSelector{}, fmt.Errorf("disk %q: want LABEL=..., UUID=..., PARTUUID=... or /dev/...", s)
}

// BlockDevice is what FindDisk knows of one block device.
type BlockDevice struct {
	Path     string // /dev/NAME
	Label    string // filesystem label (ext4), if any
	UUID     string // filesystem UUID (ext4), if any
	PartUUID string // GPT partition UUID, if any
}

func (d BlockDevice) String() string {
	var b strings.Builder
	b.WriteString(d.Path)
	for _, kv := range [][2]string{{"LABEL", d.Label}, {"UUID", d.UUID}, {"PARTUUID", d.PartUUID}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	return b.String()
}

func (d BlockDevice) matches(s DiskSelector) bool {
	switch s.Kind {
	case "PATH":
		return d.Path == s.Value
	case "LABEL":
		return d.Label == s.Value
	case "UUID":
		return d.UUID == s.Value
	case "PARTUUID":
		return d.PartUUID == s.Value
	}
	return false
}

// FindDisk waits until a block device matching sel appears, polling
// /sys/class/block, and returns it. Two or more matching devices are an
// ErrAmbiguousDisk: the boot fails closed rather than pick one. On timeout the error lists the block
// devices that were seen, so the user can tell a wrong label from a
// missing driver.
func FindDisk(ctx context.Context, sel DiskSelector, timeout time.Duration) (BlockDevice, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		devs := ScanBlockDevices("/sys/class/block", "/dev")
		if sel.Kind == "PARTUUID" {
			ids := partUUIDs("/sys/class/block", "/dev")
			for i := range devs {
				devs[i].PartUUID = ids[devs[i].Path]
			}
		}
		if d, ok, err := selectDisk(devs, sel); ok || err != nil {
			return d, err
		}
		select {
		case <-ctx.Done():
			seen := "none (is the disk driver, e.g. virtio_blk, loaded?)"
			if len(devs) > 0 {
				var s []string
				for _, d := range devs {
					s = append(s, d.String())
				}
				seen = strings.Join(s, "; ")
			}
			return BlockDevice{}, fmt.Errorf("no block device with %s after %v; block devices seen: %s", sel, timeout, seen)
		case <-tick.C:
		}
	}
}

// ErrAmbiguousDisk is returned when more than one block device matches
// the selector: a USB stick carrying the appliance's label must not get to
// choose which filesystem the boot uses, so the boot stops instead.
var ErrAmbiguousDisk = errors.New("more than one block device matches")

// selectDisk returns the one device in devs matching sel. ok is false when
// none does; more than one is an ErrAmbiguousDisk naming them all.
func selectDisk(devs []BlockDevice, sel DiskSelector) (d BlockDevice, ok bool, err error) {
	var found []BlockDevice
	for _, d := range devs {
		if d.matches(sel) {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return BlockDevice{}, false, nil
	case 1:
		return found[0], true, nil
	}
	var names []string
	for _, d := range found {
		names = append(names, d.String())
	}
	return BlockDevice{}, false, fmt.Errorf("%s: %w: %s; remove the extra one or select the disk by a unique UUID=/PARTUUID=", sel, ErrAmbiguousDisk, strings.Join(names, "; "))
}

// ScanBlockDevices lists the block devices in sysDir (/sys/class/block)
// with the identifiers found on them in devDir.
func ScanBlockDevices(sysDir, devDir string) []BlockDevice {
	entries, err := os.ReadDir(sysDir)
	if err != nil {
		return nil
	}
	var devs []BlockDevice
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") {
			continue
		}
		d := BlockDevice{Path: filepath.Join(devDir, name)}
		if f, err := os.Open(d.Path); err == nil {
			d.Label, d.UUID = probeExt4(f)
			f.Close()
		}
		devs = append(devs, d)
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].Path < devs[j].Path })
	return devs
}

// probeExt4 reads the label and UUID of an ext2/3/4 superblock.
func probeExt4(r interface {
	ReadAt([]byte, int64) (int, error)
}) (label, uuid string) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return "", ""
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return "", ""
	}
	u := hex.EncodeToString(sb[0x68:0x78])
	uuid = u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:32]
	label = string(bytes.TrimRight(sb[0x78:0x88], "\x00"))
	return label, uuid
}
