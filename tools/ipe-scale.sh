#!/usr/bin/env bash
# ipe-scale.sh [TREE|IMAGE.cfs...]: how many IPE rules a root needs. For a
# directory (default /usr) it builds a composefs image with `cfsroot mkimage`
# (no object store), then prints, for `cfsroot policy generate` with
# --files exec judged by content (--source TREE), --files exec judged by mode
# and name only, and --files all: the files chosen, the rules (distinct
# digests) and the policy size, against the kernel's limit (65535 bytes of
# signed policy, about 570 rules). An existing image is judged by mode and
# name only (and needs fs-verity digests in it).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$top" && go build -o "$tmp/cfsroot" ./cmd/cfsroot)
[ $# -gt 0 ] || set -- /usr

summary() { # label, policy generate args...
	local label=$1
	shift
	"$tmp/cfsroot" policy generate -o "$tmp/policy" "$@" 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
	local inline
	inline=$(sed -n 's/^cfsroot: warning: \([0-9]*\) executables are stored inline.*/\1/p' "$tmp/err")
	sed -n "s/^cfsroot: policy [^ ]* [^ ]*: \([0-9]*\) rules for \([0-9]*\) files.*, \([0-9]*\) bytes$/\2 \1 \3/p" "$tmp/err" |
		awk -v l="$label" -v i="${inline:-0}" '{printf "  %-24s files %7d  rules %7d  policy %9d bytes  inline executables %d\n", l, $1, $2, $3, i}'
}

for src in "$@"; do
	if [ -d "$src" ]; then
		img=$tmp/image.cfs
		start=$(date +%s)
		"$tmp/cfsroot" mkimage "$src" "$img"
		echo "$src: image $(stat -c %s "$img") bytes, built in $(($(date +%s) - start)) s"
		summary "exec (by content)" --source "$src" "$img"
	else
		img=$src
		echo "$img:"
	fi
	summary "exec (mode and name)" "$img"
	summary "all" --files all "$img"
done
echo "kernel limit: 65535 bytes of signed policy, about 570 rules (112 bytes each)"
