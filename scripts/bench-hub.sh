#!/usr/bin/env bash
# Hub throughput benchmark: complete signed withdrawal flows per second through the real hub
# service (own process, SQLite WAL + synchronous=FULL) and a private Mosquitto, hop latencies,
# an open-loop run at half the maximum, PIN and QR-image variants, and the broker's raw
# request/response ceiling with an unsigned echo responder. Installs mosquitto if missing
# (Debian/Ubuntu, needs root or sudo), builds in release mode and rewrites the
# "## Hub throughput" section of docs/BENCHMARKS.md.
#
# Usage: scripts/bench-hub.sh [--lanes N] [--conns N] [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release -j2 -p qrcash-bench --bin qrcash-bench-hub
command="scripts/bench-hub.sh${*:+ $*}"
exec target/release/qrcash-bench-hub --markdown "$PWD/docs/BENCHMARKS.md" --command "$command" "$@"
