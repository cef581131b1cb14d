package repo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	"github.com/cfsroot/cfsroot/internal/diskfile"
	"github.com/cfsroot/cfsroot/internal/strictjson"
)

// State is the slot state, state/slots.json. It is the A/B model of RAUC
// and Android (a known-good slot, a slot on trial) with systemd-boot's boot
// counting (tries left and done):
//
//	          install (tries N)         init boots it: left-1, done+1
//	(none) ─────────────────────▶ trial ──────────────────────────────┐
//	                                │  ▲                               │
//	                                │  └───────── left > 0 ────────────┘
//	             cfsroot bless      │
//	 good ◀─────────────────────────┘  left = 0: the init boots Good
//	                                   instead and says why
//
// The init boots Trial while TriesLeft > 0, and records the attempt (the
// whole file rewritten under a temporary name, fsynced, renamed over
// slots.json, directory fsynced) before it switches root, so an image that
// hangs or crashes cannot be booted more than N times. When no tries are
// left it boots Good. `cfsroot bless`, run once the trial system is up,
// makes Trial the new Good. A missing file is the zero State: the config's
// slots are booted in order, as without trial boots.
//
// The file is read by the init from the disk, which an attacker may
// control: whatever it says, only slots listed in the config are booted,
// and each must still carry a valid signature.
type State struct {
	// Good is the known-good slot: what boots when no trial is pending.
	Good string `json:"good,omitempty"`
	// Trial is the slot on trial, "" if none.
	Trial string `json:"trial,omitempty"`
	// TriesLeft and TriesDone count the trial's boots.
	TriesLeft int `json:"tries_left,omitempty"`
	TriesDone int `json:"tries_done,omitempty"`
}

// maxStateSize bounds what is read from the disk.
const maxStateSize = 4096

// ReadState reads dir/state/slots.json. A missing file is the zero State.
func ReadState(dir string) (State, error) {
	p := filepath.Join(dir, StateFile)
	// The disk's: no symlink, no FIFO (which would hang the boot), bounded.
	data, err := diskfile.ReadFile(p, maxStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("slot state: %w", err)
	}
	// Each key once, in its own case, one value: what a reviewer of the
	// file reads is what the init reads.
	if err := strictjson.CheckKeys(data, strictjson.Fields(reflect.TypeFor[State]())); err != nil {
		return State{}, fmt.Errorf("slot state %s: %w", p, err)
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return State{}, fmt.Errorf("slot state %s: %w", p, err)
	}
	if err := s.check(); err != nil {
		return State{}, fmt.Errorf("slot state %s: %w", p, err)
	}
	return s, nil
}

func (s State) check() error {
	for _, n := range []string{s.Good, s.Trial} {
		if n != "" {
			if err := CheckSlotName(n); err != nil {
				return err
			}
		}
	}
	if s.TriesLeft < 0 || s.TriesDone < 0 || s.TriesLeft > 1000 || s.TriesDone > 1<<30 {
		return fmt.Errorf("tries left %d, done %d out of range", s.TriesLeft, s.TriesDone)
	}
	if s.Trial == "" && (s.TriesLeft != 0 || s.TriesDone != 0) {
		return fmt.Errorf("tries counted without a trial slot")
	}
	if s.Trial != "" && s.Trial == s.Good {
		return fmt.Errorf("slot %q is both good and on trial", s.Good)
	}
	return nil
}

// WriteState replaces dir/state/slots.json with s so that a power cut at
// any moment leaves either the old or the new file: the new content is
// written to a temporary file in state/, fsynced, renamed over slots.json
// (rename is atomic), and the directory is fsynced so the rename itself is
// durable before WriteState returns.
func WriteState(dir string, s State) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("slot state: %w", err)
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	sd := filepath.Join(dir, StateDir)
	if err := os.MkdirAll(sd, 0o755); err != nil {
		return fmt.Errorf("slot state: %w", err)
	}
	tmp, err := os.CreateTemp(sd, ".slots.json.tmp")
	if err != nil {
		return fmt.Errorf("slot state: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("slot state: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("slot state: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("slot state: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("slot state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("slot state: %w", err)
	}
	ok = true
	if err := syncDir(sd); err != nil {
		return fmt.Errorf("slot state: %w", err)
	}
	return nil
}

// Plan is the order in which the init tries the slots.
type Plan struct {
	// Slots to try, in order.
	Slots []string
	// Attempt is set when Slots[0] is a trial: the init must record the
	// attempt (State.Attempt) durably before booting it.
	Attempt bool
	// Note says why the order is what it is when it is not the plain
	// config order (e.g. a trial out of tries); "" otherwise.
	Note string
}

// Plan returns the boot order for the config's slots. With the zero State
// it is the config's order (all slots with fallback, else the first). With
// a trial that has tries left, the trial comes first and the known-good
// slot second; a trial with no tries left is never booted. Slots the config
// does not list are ignored, whatever the state says.
func (s State) Plan(slots []string, fallback bool) Plan {
	var p Plan
	add := func(n string) {
		if n != "" && slices.Contains(slots, n) && !slices.Contains(p.Slots, n) {
			p.Slots = append(p.Slots, n)
		}
	}
	if s.Trial != "" && slices.Contains(slots, s.Trial) {
		if s.TriesLeft > 0 {
			add(s.Trial)
			p.Attempt = true
		} else {
			good := s.Good
			if good == "" {
				good = "none"
			}
			p.Note = fmt.Sprintf("trial slot %s has no tries left (%d done) and was never blessed; booting the known-good slot %s", s.Trial, s.TriesDone, good)
		}
	}
	add(s.Good)
	if fallback || len(p.Slots) == 0 {
		for _, n := range slots {
			if n == s.Trial && s.TriesLeft == 0 {
				continue // used up: never booted again
			}
			add(n)
			if !fallback && len(p.Slots) > 0 {
				break
			}
		}
	}
	return p
}

// Attempt returns the state after one more boot of the trial slot.
func (s State) Attempt() State {
	if s.Trial != "" && s.TriesLeft > 0 {
		s.TriesLeft--
		s.TriesDone++
	}
	return s
}

// Bless returns the state after the booted slot was found good: a trial
// becomes the known-good slot. Blessing the known-good slot changes
// nothing (a pending trial stays pending); with no state at all, the booted
// slot becomes the known-good one. Blessing any other slot is an error (it is neither on trial nor
// known good, e.g. booted by hand with cfsroot.image=).
func (s State) Bless(booted string) (State, error) {
	switch {
	case booted == "":
		return s, fmt.Errorf("bless: no booted slot (is /run/cfsroot/status.json there?)")
	case booted == s.Trial:
		return State{Good: booted}, nil
	case booted == s.Good:
		return s, nil
	case s.Good == "" && s.Trial == "":
		return State{Good: booted}, nil
	}
	return s, fmt.Errorf("bless: booted slot %s is neither on trial (%q) nor known good (%q)", booted, s.Trial, s.Good)
}

// Describe says in a few words what the state means for slot n.
func (s State) Describe(n string) string {
	switch {
	case n == s.Good:
		return "good"
	case n == s.Trial && s.TriesLeft > 0:
		return fmt.Sprintf("trial (%d tries left, %d done)", s.TriesLeft, s.TriesDone)
	case n == s.Trial:
		return fmt.Sprintf("bad (trial used up its %d tries without bless)", s.TriesDone)
	}
	return "-"
}

// Bless marks the booted slot good (State.Bless) under the repository lock
// and returns the state before and after.
func (r *Repo) Bless(booted string) (before, after State, err error) {
	unlock, err := r.Lock()
	if err != nil {
		return State{}, State{}, fmt.Errorf("bless: %w", err)
	}
	defer unlock()
	before, err = ReadState(r.dir)
	if err != nil {
		return State{}, State{}, fmt.Errorf("bless: %w", err)
	}
	after, err = before.Bless(booted)
	if err != nil {
		return before, before, err
	}
	if after != before {
		if err := WriteState(r.dir, after); err != nil {
			return before, before, fmt.Errorf("bless: %w", err)
		}
	}
	return before, after, nil
}
