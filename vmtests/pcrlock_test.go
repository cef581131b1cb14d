package vmtests

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/measure/eventlog"
)

// TestPcrlockLogAgrees checks TestDemo's reading of `systemd-pcrlock log
// --json=short` on output shaped as systemd's verb_show_log prints it: it
// accepts a log that agrees and refuses each kind of disagreement.
func TestPcrlockLogAgrees(t *testing.T) {
	texts := []string{"cfsroot-image:demo:sha256:" + strings.Repeat("ab", 32), "cfsroot-signer:sha256:" + strings.Repeat("cd", 32), "cfsroot-separator"}
	var recs []eventlog.Record
	pcr := make([]byte, 32)
	var rows []string
	for _, s := range texts {
		d := sha256.Sum256([]byte(s))
		recs = append(recs, eventlog.Record{PCR: 15, Digests: []eventlog.Digest{{HashAlg: "sha256", Digest: hex.EncodeToString(d[:])}},
			ContentType: "systemd", Content: &eventlog.Content{String: s}})
		h := sha256.Sum256(append(pcr, d[:]...))
		pcr = h[:]
		rows = append(rows, fmt.Sprintf(`{"pcr":15,"pcrname":"system-identity","event":null,"match":null,"sha256":"%x","phase":null,"source":"tpm2-measure.log","component":null,"description":%q}`, d, s))
	}
	final := hex.EncodeToString(pcr)
	extra := ""
	out := func(rows []string, match bool, calc string) string {
		return `{"log":[{"pcr":0,"pcrname":"platform-code","event":"s-crtm-version","match":true,"sha256":"00","phase":"F","description":"x"},` +
			strings.Join(rows, ",") + `],"pcrs":[{"pcr":15,"pcrname":"system-identity","count":3,"hashMatchesEventLog":` + fmt.Sprint(match) +
			`,"allEventsMatched":false,"noMissingComponents":true,"calculatedSHA256":"` + calc + `","observedSHA256":"` + final + `"` + extra + `}]}`
	}
	good := out(rows, true, final)
	l, err := parsePcrlockLog(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.agrees(recs, final); err != nil {
		t.Errorf("agreeing log refused: %v", err)
	}
	bad := map[string]string{
		"record missing":     out(rows[:2], true, final),
		"text differs":       out(append(append([]string{}, rows[:2]...), strings.Replace(rows[2], "separator", "separatoR", 1)), true, final),
		"payload mismatch":   out(append(append([]string{}, rows[:2]...), strings.Replace(rows[2], `"match":null`, `"match":false`, 1)), true, final),
		"replay differs":     out(rows, false, final),
		"calculated differs": out(rows, true, strings.Repeat("0", 64)),
	}
	for name, o := range bad {
		l, err := parsePcrlockLog(o)
		if err == nil {
			err = l.agrees(recs, final)
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	extra = `,"calculatedSHA1":"aa","observedSHA1":"bb"`
	if l, err := parsePcrlockLog(out(rows, true, final)); err != nil || l.agrees(recs, final) == nil {
		t.Errorf("a SHA-1 replay that differs from the TPM was accepted (%v)", err)
	}
	if err := l.agrees(recs, strings.Repeat("1", 64)); err == nil {
		t.Error("a prediction that differs was accepted")
	}
	if _, err := parsePcrlockLog("Failed to open TPM"); err == nil {
		t.Error("non-JSON output accepted")
	}
}
