#!/usr/bin/env bash
# bench-digest.sh [DIR]: digests every regular file under DIR (default
# /usr/lib) with `cfsroot digest` and with fsverity-utils' `fsverity digest`
# in the same run, and prints the times and ratios: cfsroot on one core
# (GOMAXPROCS=1) against fsverity (single-threaded), and cfsroot on all cores.
# Each tool runs once to warm the page cache first.
set -euo pipefail
dir=${1:-/usr/lib}
top=$(cd "$(dirname "$0")/.." && pwd)
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd "$top" && go build -o "$bin/cfsroot" ./cmd/cfsroot)
list=$bin/files
find "$dir" -xdev -type f -readable -print0 >"$list"
files=$(tr -cd '\0' <"$list" | wc -c)
bytes=$(xargs -0 -n 1000 stat -c %s <"$list" | awk '{s += $1} END {print s}')

timeit() { # prints seconds
	local start end
	start=$(date +%s.%N)
	xargs -0 -n 1000 "$@" <"$list" >/dev/null
	end=$(date +%s.%N)
	awk -v a="$start" -v b="$end" 'BEGIN {print b - a}'
}

timeit fsverity digest >/dev/null
timeit "$bin/cfsroot" digest >/dev/null
ref=$(timeit fsverity digest)
one=$(timeit env GOMAXPROCS=1 "$bin/cfsroot" digest)
all=$(timeit "$bin/cfsroot" digest)
# Same results?
cmp <(xargs -0 -n 1000 fsverity digest <"$list") <(xargs -0 -n 1000 "$bin/cfsroot" digest <"$list") ||
	{ echo "bench-digest: cfsroot and fsverity disagree" >&2; exit 1; }
printf 'files: %d, bytes: %d (%s)\n' "$files" "$bytes" "$dir"
printf 'fsverity digest:             %6.2f s\n' "$ref"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
printf 'cfsroot digest (1 core):     %6.2f s  ratio %s\n' "$one" "$(ratio "$one" "$ref")"
printf 'cfsroot digest (%d cores):    %6.2f s  ratio %s\n' "$(nproc)" "$all" "$(ratio "$all" "$ref")"
