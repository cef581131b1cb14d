package testutil

import (
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

// TestDirHash1MatchesGo: the go.sum hash the tests check the composefs
// module against is computed as the go command computes it (its own
// `go mod download -json` Sum, from the module's zip).
func TestDirHash1MatchesGo(t *testing.T) {
	ComposefsAssets(t) // ends the test when the module is not cached
	cmd := exec.Command(GoTool(), "mod", "download", "-json", composefsModule+"@"+composefsVersion)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Dir, Sum string }
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	got, err := dirHash1(info.Dir, composefsModule+"@"+composefsVersion)
	if err != nil {
		t.Fatal(err)
	}
	if got != info.Sum || got != composefsSum {
		t.Errorf("dirHash1 = %s; go says %s; pinned %s", got, info.Sum, composefsSum)
	}
}

// TestComposefsVectors: every image vector's reference image, built by the
// oracle, has upstream's sha256 (ReferenceImage checks it).
func TestComposefsVectors(t *testing.T) {
	vs := ComposefsVectors(t)
	for _, v := range vs {
		v.ReferenceImage(t)
	}
	if v := ComposefsVectorNamed(t, "special_v1"); !v.Versioned || v.MinVersion != 1 {
		t.Errorf("special_v1: %+v, want version 1", v)
	}
}
