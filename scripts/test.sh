#!/usr/bin/env bash
# The test command (README): installs what the suites need, then runs every test.
#   scripts/test.sh            the default suite (a few minutes on 2 cores)
# Long campaigns and benchmarks have their own commands: see docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# The whole workspace: unit tests next to the code, end-to-end suites in tests/.
cargo test --workspace --locked
# The camera path of the ATM build (Video4Linux through bindgen/libclang): compiled and its
# tests run; without a /dev/video* device the device test says so and skips.
cargo test --locked -p qrcash-hardware --features v4l
