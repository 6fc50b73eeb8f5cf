#!/usr/bin/env bash
# The live path against other readers on the same frames: dumps the generated 1280x720 corpus
# (images and payloads), runs `qrcash-decode --live` (the agent's exact live settings) and
# every pass on every image, then zxing-cpp and OpenCV's WeChat detector from PyPI
# (scripts/qr_others.py, in target/pyvenv-qr). Prints the lines BENCHMARKS.md quotes.
#
# Usage: scripts/bench-qr-live.sh [per-class, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
per_class="${1:-20}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

cargo bench -j2 -p qrcash-hardware --bench qr -- --ours-only --sizes 1280x720 \
    --per-class "$per_class" --dump "$dir" --quiet > /dev/null
cargo build --release -j2 -p qrcash-hardware --bin qrcash-decode
venv=target/pyvenv-qr
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check zxing-cpp opencv-contrib-python-headless
fi
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "qrcash live: $(target/release/qrcash-decode --live --quiet "$dir" | tail -1)"
for class in perspective rotation small blur; do
    echo "  $class: $(target/release/qrcash-decode --live --quiet "$dir"/1280x720-"$class"-*.png | tail -1)"
done
"$venv/bin/python" scripts/qr_others.py "$dir"
