#!/usr/bin/env bash
# Password-guessing benchmark (account-takeover issue, hole 3): guesses per second one
# attacker can force through the hub, and the honest phone's latency meanwhile, before and
# after login throttling and the secret workers. Needs Mosquitto (scripts/install-deps.sh).
# Rewrites the "## Password guessing" section of docs/BENCHMARKS.md.
#
# Usage: scripts/bench-login.sh [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -j2 -p qrcash-bench --bin qrcash-bench-login
command="scripts/bench-login.sh${*:+ $*}"
RUST_LOG="${RUST_LOG:-error}" exec target/release/qrcash-bench-login \
    --markdown "$PWD/docs/BENCHMARKS.md" --command "$command" "$@"
