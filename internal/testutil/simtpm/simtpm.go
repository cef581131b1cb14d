// Package simtpm opens go-tpm-tools' TPM simulator (the Microsoft reference
// implementation) for unit tests. It is a package of its own because the
// simulator needs cgo, which testutil's other users (the VM harness) and
// the init do not want.
package simtpm

import (
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
)

// Open starts the simulator, which is one global resource (one test at a
// time), and returns a connection to it; the test's cleanup closes it.
func Open(t testing.TB) transport.TPM {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatalf("simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	return transport.FromReadWriter(sim)
}
