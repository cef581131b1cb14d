// Package kmod decides which kernel modules an initramfs carries and in what
// order the init loads them, and it loads them.
//
// On the host, Open reads a module tree as depmod leaves it
// (lib/modules/KVER with modules.dep, modules.softdep, modules.alias,
// modules.builtin) and Tree.Resolve turns the module names an initramfs wants
// into a load order: hard dependencies from modules.dep, soft dependencies
// from modules.softdep (libcrc32c wants "crc32c", an alias served by
// crc32c_intel and crc32c_generic) and built-in modules skipped, as modprobe
// would. In the initramfs, the order travels as a load list (see WriteList)
// that the init reads with ParseList and follows with Load; no modules.dep
// lookups or alias matching happen at boot.
package kmod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Module is one module to load.
type Module struct {
	// Name is the module's name with '-' spelled '_' ("crc32c_intel").
	Name string
	// Path is the module file relative to the module directory, as
	// modules.dep spells it ("kernel/fs/ext4/ext4.ko.xz").
	Path string
	// Optional is set for modules wanted only as soft dependencies:
	// modprobe treats those as helpers, and one may fail to load (for
	// example crc32c_intel on a CPU without SSE4.2) while the module that
	// wanted it still works through another provider.
	Optional bool
}

// Tree is a kernel module tree read from depmod's index files.
type Tree struct {
	// Dir is the module directory, lib/modules/KVER.
	Dir string
	// Version is the kernel release the modules are for (KVER).
	Version string

	paths    map[string]string   // module name -> path relative to Dir
	deps     map[string][]string // module name -> hard dependencies (names), as modules.dep lists them
	pre      map[string][]string // module name -> soft pre-dependencies (names or aliases)
	post     map[string][]string // module name -> soft post-dependencies
	aliases  []alias             // in file order: the first provider listed is loaded first
	builtin  map[string]bool     // built-in module names
	bAliases map[string]bool     // aliases served by built-in modules
}

type alias struct{ pattern, module string }

// Open reads the module tree at dir, which is either the module directory
// itself (it holds modules.dep) or a root that holds exactly one
// lib/modules/KVER, such as the directory tools/fetch-kernel.sh fills.
func Open(dir string) (*Tree, error) {
	modDir, err := findModDir(dir)
	if err != nil {
		return nil, err
	}
	t := newTree(modDir)
	if err := t.readDep(); err != nil {
		return nil, err
	}
	// The other index files are optional: a tree without them simply has
	// no soft dependencies, aliases or built-in modules.
	for _, r := range []struct {
		name string
		fn   func([]byte) error
	}{
		{"modules.softdep", t.parseSoftdep},
		{"modules.alias", t.parseAlias},
		{"modules.builtin", t.parseBuiltin},
		{"modules.builtin.modinfo", t.parseBuiltinModinfo},
	} {
		b, err := os.ReadFile(filepath.Join(modDir, r.name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kmod: %w", err)
		}
		if err := r.fn(b); err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", filepath.Join(modDir, r.name), err)
		}
	}
	return t, nil
}

func newTree(modDir string) *Tree {
	return &Tree{
		Dir:      modDir,
		Version:  filepath.Base(modDir),
		paths:    map[string]string{},
		deps:     map[string][]string{},
		pre:      map[string][]string{},
		post:     map[string][]string{},
		builtin:  map[string]bool{},
		bAliases: map[string]bool{},
	}
}

func findModDir(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err == nil {
		return filepath.Clean(dir), nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("kmod: module tree: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("kmod: module tree %s is not a directory", dir)
	}
	vers, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	var found []string
	for _, v := range vers {
		if fi, err := os.Stat(v); err == nil && fi.IsDir() {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 0:
		if _, err := os.Stat(filepath.Join(dir, "kernel")); err == nil {
			return "", fmt.Errorf("kmod: %s has no modules.dep: run depmod -b ROOT %s first", dir, filepath.Base(dir))
		}
		return "", fmt.Errorf("kmod: %s is neither a module directory (lib/modules/KVER with modules.dep) nor a root holding lib/modules/KVER", dir)
	case 1:
		if _, err := os.Stat(filepath.Join(found[0], "modules.dep")); err != nil {
			return "", fmt.Errorf("kmod: %s has no modules.dep: run depmod -b %s %s first", found[0], dir, filepath.Base(found[0]))
		}
		return found[0], nil
	default:
		return "", fmt.Errorf("kmod: %s holds several kernels (%s): name one lib/modules/KVER directory", dir, strings.Join(baseNames(found), ", "))
	}
}

func baseNames(ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = filepath.Base(p)
	}
	return out
}

// Name returns the module name of a module file path: its base name without
// ".ko" and a compression suffix, with '-' spelled '_' as the kernel does.
func Name(p string) string {
	b := path.Base(filepath.ToSlash(p))
	for _, s := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, s)
	}
	return normalize(strings.TrimSuffix(b, ".ko"))
}

func normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

func (t *Tree) readDep() error {
	p := filepath.Join(t.Dir, "modules.dep")
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("kmod: %w (run depmod -b ROOT %s to make it)", err, t.Version)
	}
	return t.parseDep(b, p)
}

// parseDep reads modules.dep lines "path: dependency paths...".
func (t *Tree) parseDep(b []byte, p string) error {
	s := bufio.NewScanner(bytes.NewReader(b))
	s.Buffer(nil, 1<<20)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok || mod == "" {
			return fmt.Errorf("kmod: %s:%d: want \"module: deps...\", got %q", p, n, line)
		}
		if err := checkModPath(mod); err != nil {
			return fmt.Errorf("kmod: %s:%d: %w", p, n, err)
		}
		name := Name(mod)
		t.paths[name] = mod
		for _, d := range strings.Fields(deps) {
			if err := checkModPath(d); err != nil {
				return fmt.Errorf("kmod: %s:%d: %w", p, n, err)
			}
			t.deps[name] = append(t.deps[name], Name(d))
			if _, ok := t.paths[Name(d)]; !ok {
				// Remember the path now; its own line may come later.
				t.paths[Name(d)] = d
			}
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("kmod: %s: %w", p, err)
	}
	if len(t.paths) == 0 {
		return fmt.Errorf("kmod: %s lists no modules", p)
	}
	return nil
}

// checkModPath makes sure a module path stays inside the module tree (and
// inside /lib/modules/KVER of an initramfs built from it).
func checkModPath(p string) error {
	ok := !path.IsAbs(p) && path.Clean(p) == p && p != ".." && !strings.HasPrefix(p, "../") &&
		Name(p) != "" && strings.Contains(path.Base(p), ".ko")
	if !ok {
		return fmt.Errorf("module path %q is not a clean relative .ko path", p)
	}
	return nil
}

// parseSoftdep reads "softdep MODULE pre: A B post: C" lines. Names before
// any "pre:" or "post:" are ignored, as kmod ignores them.
func (t *Tree) parseSoftdep(b []byte) error {
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "softdep" {
			continue
		}
		mod := normalize(f[1])
		var dst *map[string][]string
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				dst = &t.pre
			case "post:":
				dst = &t.post
			default:
				if dst != nil {
					(*dst)[mod] = append((*dst)[mod], w)
				}
			}
		}
	}
	return nil
}

func (t *Tree) parseAlias(b []byte) error {
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" {
			continue
		}
		t.aliases = append(t.aliases, alias{pattern: normalize(f[1]), module: normalize(f[2])})
	}
	return nil
}

func (t *Tree) parseBuiltin(b []byte) error {
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" {
			t.builtin[Name(line)] = true
		}
	}
	return nil
}

// parseBuiltinModinfo reads the NUL-separated "module.key=value" records
// of modules.builtin.modinfo for aliases that built-in modules serve.
func (t *Tree) parseBuiltinModinfo(b []byte) error {
	for _, rec := range bytes.Split(b, []byte{0}) {
		mod, kv, ok := strings.Cut(string(rec), ".")
		if !ok {
			continue
		}
		if a, ok := strings.CutPrefix(kv, "alias="); ok {
			t.builtin[normalize(mod)] = true
			t.bAliases[normalize(a)] = true
		}
	}
	return nil
}

// IsBuiltin reports whether name is a module (or an alias of one) that is
// built into the kernel, so there is nothing to load.
func (t *Tree) IsBuiltin(name string) bool {
	n := normalize(name)
	return t.builtin[n] || t.bAliases[n]
}

// Path returns the path of module name relative to Dir, and whether the
// tree has that module.
func (t *Tree) Path(name string) (string, bool) {
	p, ok := t.paths[normalize(name)]
	return p, ok
}

// Deps returns the hard dependencies of module name as modules.dep lists
// them (all of them, not only the direct ones).
func (t *Tree) Deps(name string) []string {
	return append([]string(nil), t.deps[normalize(name)]...)
}

// providers returns the modules serving alias a, in modules.alias order.
func (t *Tree) providers(a string) []string {
	a = normalize(a)
	var out []string
	seen := map[string]bool{}
	add := func(m string) {
		if _, ok := t.paths[m]; ok && !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	for _, al := range t.aliases {
		if al.pattern == a {
			add(al.module)
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, al := range t.aliases {
		if strings.ContainsAny(al.pattern, "*?[") {
			if ok, _ := path.Match(al.pattern, a); ok {
				add(al.module)
			}
		}
	}
	return out
}

// Resolve returns the modules to load, in load order, for the wanted module
// names: each module comes after its soft pre-dependencies and its hard
// dependencies and before its soft post-dependencies, and appears once.
// Wanted names must be module names, or aliases served by exactly one
// module; wanted names built into the kernel are skipped. Soft dependencies
// may be aliases served by several modules (all are loaded, all marked
// Optional) and are skipped when nothing in the tree provides them.
func (t *Tree) Resolve(names ...string) ([]Module, error) {
	r := resolver{t: t, at: map[string]int{}, busy: map[string]bool{}}
	for _, n := range names {
		n = normalize(strings.TrimSpace(n))
		if n == "" {
			continue
		}
		mods, err := t.lookupWanted(n)
		if err != nil {
			return nil, err
		}
		for _, m := range mods {
			if err := r.visit(m, false, false, nil); err != nil {
				return nil, err
			}
		}
	}
	return r.out, nil
}

func (t *Tree) lookupWanted(n string) ([]string, error) {
	if _, ok := t.paths[n]; ok {
		return []string{n}, nil
	}
	if t.builtin[n] {
		return nil, nil
	}
	switch p := t.providers(n); len(p) {
	case 0:
		if t.bAliases[n] {
			return nil, nil
		}
		return nil, fmt.Errorf("kmod: no module %q in %s (not in modules.dep, modules.alias or modules.builtin)", n, t.Dir)
	case 1:
		return p, nil
	default:
		sort.Strings(p)
		return nil, fmt.Errorf("kmod: %q is an alias served by several modules (%s): name the ones to load", n, strings.Join(p, ", "))
	}
}

type resolver struct {
	t    *Tree
	out  []Module
	at   map[string]int  // module name -> index in out
	busy map[string]bool // on the current visiting path
}

// visit places module name after what it needs. optional marks a module
// wanted only as a soft dependency; soft says visit got here over a soft
// dependency edge.
func (r *resolver) visit(name string, optional, soft bool, chain []string) error {
	if i, ok := r.at[name]; ok {
		if !optional {
			r.require(i)
		}
		return nil
	}
	if r.busy[name] {
		// Soft dependencies may form cycles (A pre: B, B post: A); the
		// module on the path is placed when its own visit finishes. A
		// cycle through hard dependencies has no valid order.
		if soft {
			return nil
		}
		return fmt.Errorf("kmod: dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
	}
	p, ok := r.t.paths[name]
	if !ok {
		return fmt.Errorf("kmod: %s needs module %s, which is not in %s", strings.Join(chain, " -> "), name, r.t.Dir)
	}
	r.busy[name] = true
	defer delete(r.busy, name)
	chain = append(chain, name)
	for _, s := range r.t.pre[name] {
		if err := r.visitSoft(s, chain); err != nil {
			return err
		}
	}
	// modules.dep lists the modules a module uses before the ones they
	// use in turn; modprobe walks the list backwards, and so do we, so
	// that the order matches modprobe --show-depends.
	deps := r.t.deps[name]
	for i := len(deps) - 1; i >= 0; i-- {
		if err := r.visit(deps[i], optional, false, chain); err != nil {
			return err
		}
	}
	r.at[name] = len(r.out)
	r.out = append(r.out, Module{Name: name, Path: p, Optional: optional})
	for _, s := range r.t.post[name] {
		if err := r.visitSoft(s, chain); err != nil {
			return err
		}
	}
	return nil
}

// visitSoft adds the providers of a soft dependency, which may be a module
// name or an alias; a soft dependency nothing provides is not an error.
func (r *resolver) visitSoft(s string, chain []string) error {
	s = normalize(s)
	mods := r.t.providers(s)
	if _, ok := r.t.paths[s]; ok {
		mods = []string{s}
	}
	for _, m := range mods {
		if err := r.visit(m, true, true, chain); err != nil {
			return err
		}
	}
	return nil
}

// require marks out[i] and its hard dependencies as required, for a module
// first reached as a soft dependency and later wanted outright.
func (r *resolver) require(i int) {
	if !r.out[i].Optional {
		return
	}
	r.out[i].Optional = false
	for _, d := range r.t.deps[r.out[i].Name] {
		if j, ok := r.at[d]; ok {
			r.require(j)
		}
	}
}
