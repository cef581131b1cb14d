package measure_test

import (
	"context"
	"crypto/x509"
	"errors"
	"log"
	"time"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// How the init measures an image it has verified.
func Example() {
	var (
		digest verity.Digest     // from FS_IOC_MEASURE_VERITY or verity.DigestFile
		signer *x509.Certificate // from signature.Verify
		policy []byte            // the .p7s about to be loaded, or nil
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	m, err := measure.Open(ctx, "") // /dev/tpmrm0, else /dev/tpm0
	if measure.IsNoTPM(err) {
		log.Printf("no TPM: %v", err) // fatal if the config says required
		return
	} else if err != nil {
		log.Printf("TPM failed: %v", err) // likewise
		return
	}
	defer m.Close()
	m.PCR = 15 // from the embedded config

	events, err := measure.Events(measure.ImageInfo{Name: "root", Digest: digest, Signer: signer, Policy: policy})
	if err != nil {
		log.Print(err)
		return
	}
	var logErr *measure.LogError
	if err := m.ExtendAll(ctx, events); errors.As(err, &logErr) {
		log.Printf("measured, but the event log is incomplete: %v", err)
	} else if err != nil {
		log.Printf("TPM failed: %v", err)
		return
	}
	values, _ := m.Read(ctx, m.PCR) // for /run/cfsroot/status.json
	_ = values
}
