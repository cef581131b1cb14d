package guest

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestReportParse(t *testing.T) {
	var b bytes.Buffer
	Check(&b, "tpm", map[string]string{"pcr": "16"}, nil)
	Check(&b, "ipe", nil, errors.New("EBADMSG"))
	var got []Result
	for line := range strings.Lines(b.String()) {
		if r, ok := Parse(line); ok {
			got = append(got, r)
		}
	}
	want := []Result{{Name: "tpm", OK: true, Data: map[string]string{"pcr": "16"}}, {Name: "ipe", Error: "EBADMSG"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parsed %+v, want %+v", got, want)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Result
		ok   bool
	}{
		{`CFSROOT-RESULT {"name":"a","ok":true}`, Result{Name: "a", OK: true}, true},
		// Kernel output before the marker on the same line, junk after it.
		{`[    2.5] virtio_blk virtio1: [vda]CFSROOT-RESULT {"name":"b","ok":false,"error":"x"} [  3.1] tail`, Result{Name: "b", Error: "x"}, true},
		{`CFSROOT-RESULT {"name":"c","ok":tr[ 3.1] cut into`, Result{}, false},
		{`CFSROOT-RESULT {"ok":true}`, Result{}, false},
		{`no marker here`, Result{}, false},
	} {
		got, ok := Parse(tc.line)
		if ok != tc.ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}
