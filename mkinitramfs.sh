#!/usr/bin/env bash
# mkinitramfs.sh -o OUT -init INIT [-kernel-modules DIR -modules LIST]
#                [-cert FILE]... [-fsverity-cert FILE]... [-config FILE] [-policy FILE]
#                [-file SRC:DST[:MODE]]... [-compress zstd|gzip|none]
#                [-shell auto|yes|no]
#
# Builds a reproducible cfsroot initramfs. The work is done by the Go helper
# cmd/mkinitramfs (package initramfs), which this script builds into bin/
# with the Go toolchain and runs; -help prints the flags and the layout of
# the initramfs (certificates, config, IPE policy, module load list).
set -euo pipefail
top=$(cd "$(dirname "$0")" && pwd)

go=$(command -v go || true)
[ -n "$go" ] || go=/usr/local/go/bin/go
[ -x "$go" ] || { echo "mkinitramfs.sh: the Go toolchain is needed (make deps says where to get it)" >&2; exit 1; }

# go build is a no-op when nothing changed, so this costs well under a second.
mkdir -p "$top/bin"
(cd "$top" && CGO_ENABLED=0 "$go" build -trimpath -o bin/mkinitramfs ./cmd/mkinitramfs)
# GO tells the helper which toolchain builds the emergency shell (-shell).
GO="$go" exec "$top/bin/mkinitramfs" "$@"
