#!/usr/bin/env bash
# bench-sign-objects.sh [DIR] [THREADS]: builds a composefs image of DIR
# (default /usr) and its object store with `cfsroot mkimage --digest-store`
# in a temporary directory, then times `cfsroot sign-objects` writing every
# object's builtin fs-verity signature with an RSA-3072 and an ECDSA P-256
# key (made with openssl). It prints objects per second and, as the
# reference, what `openssl speed` signs per second with the same key type on
# the same number of processes: the ratio (goal: close to 1) says how much
# of the time goes to anything but the signature itself. Each key type runs
# RUNS times (default 3); the best counts. KEYS="rsa p256" (the default)
# chooses the key types: RSA-3072 signs about a hundred times slower than
# P-256, so on /usr (~120k objects) it takes tens of minutes.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-/usr}
threads=${2:-$(nproc)}
runs=${RUNS:-3}
export PATH=$PATH:/usr/local/go/bin
for tool in openssl /usr/bin/time bc; do
	command -v "$tool" >/dev/null || { echo "bench-sign-objects: $tool missing (apt-get install openssl time bc)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$top" && go build -o "$tmp/cfsroot" ./cmd/cfsroot)
"$tmp/cfsroot" mkimage --digest-store "$tmp/objects" "$dir" "$tmp/img.cfs" >/dev/null
objects=$("$tmp/cfsroot" objects "$tmp/img.cfs" | wc -l)
echo "bench-sign-objects: $dir: $objects objects, $threads threads"

openssl req -x509 -newkey rsa:3072 -nodes -days 1 -subj /CN=rsa -keyout "$tmp/rsa.key" -out "$tmp/rsa.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=p256 -keyout "$tmp/p256.key" -out "$tmp/p256.pem" 2>/dev/null

for k in ${KEYS:-rsa p256}; do
	best=""
	for i in $(seq "$runs"); do
		find "$tmp/objects" -name '*.sig' -delete
		/usr/bin/time -f '%e' -o "$tmp/time" "$tmp/cfsroot" sign-objects --threads "$threads" \
			--key "$tmp/$k.key" --cert "$tmp/$k.pem" --store "$tmp/objects" "$tmp/img.cfs" >/dev/null 2>&1
		t=$(cat "$tmp/time")
		if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
	done
	case $k in
	rsa) alg=rsa3072 name="RSA-3072" ;;
	p256) alg=ecdsap256 name="ECDSA P-256" ;;
	esac
	# openssl speed: "rsa 3072 bits ... sign/s" or "256 bits ecdsa (nistp256) ... sign/s".
	ref=$(openssl speed -seconds 2 -multi "$threads" "$alg" 2>/dev/null | awk -v a="$alg" '
		a == "rsa3072" && /^rsa +3072 bits/ { print $(NF-1) }
		a == "ecdsap256" && /256 bits ecdsa \(nistp256\)/ { print $(NF-1) }' | tail -1)
	rate=$(echo "$objects / $best" | bc -l)
	printf '%-12s %7.2f s  %8.0f objects/s  openssl speed %8.0f sign/s  ratio %.2f\n' \
		"$name" "$best" "$rate" "$ref" "$(echo "$rate / $ref" | bc -l)"
done
