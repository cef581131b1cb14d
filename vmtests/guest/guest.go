// Package guest is the guest side of the VM test harness (package
// vmtests/vm): programs running inside a test VM report results as marker
// lines on the console, and the host test parses them.
//
// A marker line is the prefix "CFSROOT-RESULT " followed by one JSON object
// (Result) on one line. The host finds the prefix anywhere in a line, so
// kernel messages printed just before it on the same line do no harm; a
// program should still write each marker with a single write, as Report
// does, so kernel messages cannot cut into it.
//
// The package has no dependencies beyond the standard library, so a guest
// program or the init may import it without growing.
package guest

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Prefix starts every marker line.
const Prefix = "CFSROOT-RESULT "

// Result is one result reported by the guest.
type Result struct {
	// Name identifies the check, e.g. "tpm-extend".
	Name string `json:"name"`
	// OK says whether the check passed in the guest's own judgment; the
	// host may check Data further.
	OK bool `json:"ok"`
	// Error is the error text when OK is false.
	Error string `json:"error,omitempty"`
	// Data carries values for the host to check, e.g. a digest.
	Data map[string]string `json:"data,omitempty"`
}

// Report writes r to w (the console) as one marker line, in one write.
func Report(w io.Writer, r Result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("guest: %w", err)
	}
	_, err = w.Write(append(append([]byte("\n"+Prefix), b...), '\n'))
	return err
}

// Check reports the result of a check named name: OK if err is nil, the
// error text otherwise, with data attached either way.
func Check(w io.Writer, name string, data map[string]string, err error) {
	r := Result{Name: name, OK: err == nil, Data: data}
	if err != nil {
		r.Error = err.Error()
	}
	// There is nowhere else to report a console write error to.
	_ = Report(w, r)
}

// Parse returns the marker in line, if line carries one.
func Parse(line string) (Result, bool) {
	i := strings.Index(line, Prefix)
	if i < 0 {
		return Result{}, false
	}
	var r Result
	// A decoder stops at the end of the object, ignoring what follows.
	if err := json.NewDecoder(strings.NewReader(line[i+len(Prefix):])).Decode(&r); err != nil || r.Name == "" {
		return Result{}, false
	}
	return r, true
}
