#!/usr/bin/env bash
# bench-mkimage.sh [DIR] [THREADS]: builds a composefs image of DIR (default
# /usr, no object store) with `cfsroot mkimage`, and in the same run digests
# the same files (regular files > 64 bytes, the ones mkimage digests) with
# fsverity-utils' `fsverity digest`; prints both wall times, their ratio
# (goal: <= 1.0) and mkimage's peak memory (goal: < 300 MB for 150k entries).
#
# The page cache is warmed first and each tool runs RUNS times (default 3);
# the best time of each counts, so the numbers compare CPU work rather than
# disk speed or the noise of other jobs on the machine. CPU time (user +
# system) is printed too: on a busy machine it is steadier than wall time.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-/usr}
threads=${2:-$(nproc)}
runs=${RUNS:-3}
export PATH=$PATH:/usr/local/go/bin

for tool in fsverity /usr/bin/time; do
	command -v "$tool" >/dev/null || { echo "bench-mkimage: $tool missing (apt-get install fsverity time)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$top" && go build -o "$tmp/cfsroot" ./cmd/cfsroot)

find "$dir" -type f -size +64c -print0 >"$tmp/files"
entries=$(find "$dir" | wc -l)
files=$(tr -cd '\0' <"$tmp/files" | wc -c)
bytes=$(xargs -0 -a "$tmp/files" cat 2>/dev/null | wc -c) # also warms the page cache

# /usr/bin/time prints: wall seconds, user+system CPU seconds, peak RSS (KB).
measure() { /usr/bin/time -f '%e %U %S %M' -o "$tmp/time" "$@" >/dev/null; read -r e u s m <"$tmp/time"; echo "$e $(echo "$u + $s" | bc -l) $m"; }
best() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc -l)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
# The reference mkcomposefs, if fetched (tools/fetch-mkcomposefs.sh), is
# timed too and its image compared with ours.
ref=$top/.cache/composefs-sid/bin/mkcomposefs
[ -x "$ref" ] || ref=""
mk_wall="" mk_cpu="" fv_wall="" fv_cpu="" c_wall="" c_cpu="" rss=0
for i in $(seq "$runs"); do
	read -r w c m < <(measure "$tmp/cfsroot" mkimage --threads "$threads" "$dir" "$tmp/img.cfs")
	read -r fw fc _ < <(measure xargs -0 -a "$tmp/files" fsverity digest)
	printf 'run %d: mkimage %.2f s (%.2f s CPU, %d MB), fsverity digest %.2f s (%.2f s CPU)' "$i" "$w" "$c" "$((m / 1024))" "$fw" "$fc"
	if [ -n "$ref" ]; then
		read -r cw cc _ < <(measure "$ref" --threads="$threads" "$dir" "$tmp/ref.cfs")
		printf ', mkcomposefs %.2f s (%.2f s CPU)' "$cw" "$cc"
		c_wall=$(best "$c_wall" "$cw") c_cpu=$(best "$c_cpu" "$cc")
		cmp -s "$tmp/img.cfs" "$tmp/ref.cfs" && printf ', same image' || printf ', IMAGES DIFFER'
	fi
	echo
	mk_wall=$(best "$mk_wall" "$w") mk_cpu=$(best "$mk_cpu" "$c") fv_wall=$(best "$fv_wall" "$fw") fv_cpu=$(best "$fv_cpu" "$fc")
	[ "$m" -gt "$rss" ] && rss=$m
done
printf '%s: %d entries, %d files digested, %.2f GB; mkimage --threads %d; load average %s\n' \
	"$dir" "$entries" "$files" "$(echo "$bytes / 1000000000" | bc -l)" "$threads" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'wall: mkimage %.2f s, fsverity digest %.2f s, ratio %.2f (goal <= 1.0)\n' "$mk_wall" "$fv_wall" "$(echo "$mk_wall / $fv_wall" | bc -l)"
printf 'CPU:  mkimage %.2f s, fsverity digest %.2f s, ratio %.2f\n' "$mk_cpu" "$fv_cpu" "$(echo "$mk_cpu / $fv_cpu" | bc -l)"
[ -n "$ref" ] && printf 'mkcomposefs 1.0.8: %.2f s wall, %.2f s CPU\n' "$c_wall" "$c_cpu"
printf 'mkimage peak RSS %d MB (goal < 300 MB); image %d bytes\n' "$((rss / 1024))" "$(stat -c %s "$tmp/img.cfs")"
