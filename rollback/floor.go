package rollback

import (
	"fmt"

	"github.com/cfsroot/cfsroot/rootfs/secversion"
)

// NV states of a Floor.
const (
	NVOff     = "off"     // the config does not use the NV counter
	NVRead    = "read"    // the counter was read: Floor.NV is its value
	NVMissing = "missing" // rollback_nv optional, and there was no TPM or no counter
)

// Floor is the lowest security version the init boots, and where it came
// from.
type Floor struct {
	// Config is the config's min_version.
	Config uint64
	// NV is the NV counter's value (when NVState is "read").
	NV uint64
	// NVState is NVOff, NVRead or NVMissing.
	NVState string
	// NVError says why the counter was missing.
	NVError string
}

// Value is the floor: the higher of the config's and the counter's.
func (f Floor) Value() uint64 {
	if f.NVState == NVRead {
		return max(f.Config, f.NV)
	}
	return f.Config
}

// Check refuses an image whose version is below floor, or whose product is
// not product (exactly: a config without a product boots only images
// without one). The error names both versions or both products.
func Check(img secversion.Info, floor uint64, product string) error {
	if img.Product != product {
		return fmt.Errorf("image is for product %q, this system boots product %q", img.Product, product)
	}
	if img.Version < floor {
		return fmt.Errorf("image security version %d is below the floor %d (rollback refused)", img.Version, floor)
	}
	return nil
}
