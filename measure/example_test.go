package measure_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// How the init measures an image it has verified, and how the result is
// checked against the prediction a verifier makes (cfsroot pcr predict). The
// init opens the machine's TPM with measure.Open(ctx, "") (/dev/tpmrm0, else
// /dev/tpm0; measure.IsNoTPM tells a missing TPM from a failing one); here
// the TPM simulator stands in for it.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// What the init knows by now: the image's fs-verity digest (from
	// FS_IOC_MEASURE_VERITY), the certificate whose signature it accepted
	// (from signature.Verify, nil here: the digest is pinned) and the
	// signed IPE policy about to be loaded (or nil).
	digest, err := verity.DigestReader(strings.NewReader("an image"), verity.Params{})
	if err != nil {
		log.Fatal(err)
	}
	var signer *x509.Certificate
	policy := []byte("the policy's .p7s bytes")

	sim, err := simulator.Get()
	if err != nil {
		log.Fatal(err)
	}
	defer sim.Close()
	m, err := measure.New(ctx, transport.FromReadWriter(sim))
	if err != nil {
		log.Fatal(err) // the init: fatal if the config says the TPM is required
	}
	defer m.Close()
	m.PCR = 15 // from the embedded config
	dir, err := os.MkdirTemp("", "measure-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m.LogPath = filepath.Join(dir, "tpm2-measure.log") // the init keeps /run/log/systemd/tpm2-measure.log

	events, err := measure.Events(measure.ImageInfo{Name: "root", Digest: digest, Signer: signer, Pinned: signer == nil, Policy: policy})
	if err != nil {
		log.Fatal(err)
	}
	var logErr *measure.LogError
	if err := m.ExtendAll(ctx, events); errors.As(err, &logErr) {
		log.Printf("measured, but the event log is incomplete: %v", err)
	} else if err != nil {
		log.Fatal(err)
	}
	for _, e := range events {
		fmt.Println(strings.SplitN(e.Data, ":", 2)[0])
	}
	values, err := m.Read(ctx, m.PCR) // for /run/cfsroot/status.json
	if err != nil {
		log.Fatal(err)
	}
	want, err := measure.Predict(events, []measure.Alg{measure.SHA256})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("PCR 15 (sha256) as predicted:", bytes.Equal(values[measure.SHA256], want[measure.SHA256]))
	// Output:
	// cfsroot-image
	// cfsroot-signer
	// cfsroot-ipe-policy
	// cfsroot-separator
	// PCR 15 (sha256) as predicted: true
}
