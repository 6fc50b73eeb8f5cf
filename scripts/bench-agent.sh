#!/usr/bin/env bash
# Agent benchmark: resident memory of the real `qrcash-agent run` process (idle on code-free
# frames, and with a code in view), outbox drain rate after an offline period (messages queued
# while the broker is down, then a broker and an acking hub come back) and the cost of fsynced
# journal writes per dispense step. Installs mosquitto if missing, builds in release mode and
# rewrites the "## Agent" section of docs/BENCHMARKS.md.
#
# Usage: scripts/bench-agent.sh [--messages N] [--fps N] [--seconds S] [--journal-writes N]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release -j2 -p qrcash-agent --bin qrcash-agent
cargo build --release -j2 -p qrcash-bench --bin qrcash-bench-agent
command="scripts/bench-agent.sh${*:+ $*}"
RUST_LOG="${RUST_LOG:-error}" exec target/release/qrcash-bench-agent \
    --markdown "$PWD/docs/BENCHMARKS.md" --command "$command" "$@"
