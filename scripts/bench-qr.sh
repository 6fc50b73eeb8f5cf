#!/usr/bin/env bash
# QR decoding benchmark: qrcash scanner vs plain rqrr vs zbar on the generated hard corpus.
# Installs zbar if missing (Debian/Ubuntu, needs root), runs the release bench and rewrites the
# "## QR decoding" section of docs/BENCHMARKS.md with the numbers, the machine and this command.
#
# Usage: scripts/bench-qr.sh [extra bench args, e.g. --per-class 8 --sizes 1280x720]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p | grep -q 'libzbar\.so\.0'; then
    echo "installing zbar (zbar-tools libzbar-dev)..." >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y zbar-tools libzbar-dev
fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
machine="${cpu:-unknown CPU}, $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB, $(uname -sr), $(rustc --version | cut -d' ' -f1-2)"
command="scripts/bench-qr.sh${*:+ $*}"

cargo bench -j2 -p qrcash-hardware --bench qr -- \
    --markdown "$PWD/docs/BENCHMARKS.md" --machine "$machine" --command "$command" "$@"
