// Package strictjson refuses what encoding/json silently accepts in a
// document that says what to do: a key that matches a field only
// case-insensitively ("TPM" for "tpm"), a key given twice (the last one
// wins), trailing values, and deep nesting. The init's config and the slot
// state on the disk are read through it.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// CheckKeys refuses what encoding/json would silently accept in data: a key that matches a field only case-insensitively ("TPM" for
// "tpm"), and a key given twice in one object (where the last one wins).
// Either could turn a reviewed setting into another one, or make two
// readers of one file see different things. fields are the
// exact top-level keys; nested objects (pinned_digests) are checked for
// duplicates.
func CheckKeys(data []byte, fields map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := checkValue(dec, fields, "", 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more than one JSON value")
	}
	return nil
}

// checkValue reads one JSON value from dec. fields, if not nil, are the
// keys allowed in it when it is an object.
func checkValue(dec *json.Decoder, fields map[string]bool, where string, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("JSON nested deeper than %d levels", maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '[':
		for dec.More() {
			if err := checkValue(dec, nil, where+"[]", depth+1); err != nil {
				return err
			}
		}
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key := tok.(string) // an object key is always a string
			name := strings.TrimPrefix(where+"."+key, ".")
			if seen[key] {
				return fmt.Errorf("key %q given twice (each key may be given once)", name)
			}
			seen[key] = true
			if fields != nil && !fields[key] {
				for f := range fields {
					if strings.EqualFold(f, key) {
						return fmt.Errorf("key %q must be written %q (keys are case-sensitive)", name, f)
					}
				}
				// Unknown keys are reported by the decoder itself.
			}
			if err := checkValue(dec, nil, name, depth+1); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// maxJSONDepth bounds nesting; a config needs 2 levels, the slot state 1.
const maxJSONDepth = 16

// Fields lists the JSON keys of a struct type's fields.
func Fields(t reflect.Type) map[string]bool {
	m := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			m[name] = true
		}
	}
	return m
}
