#!/usr/bin/env bash
# The test command (README): installs what the suites need, then runs every test.
#   scripts/test.sh            the default suite (a few minutes on 2 cores)
# Long campaigns and benchmarks have their own commands: see docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# The whole workspace: unit tests next to the code, end-to-end suites in tests/. Built as
# the ATM ships: the agent with the camera (Video4Linux through bindgen/libclang; without a
# /dev/video* device the device test says so and skips).
cargo test --workspace --locked --features qrcash-agent/v4l
# The Debian packages of those very binaries: lintian, the units' exposure, and install,
# upgrade, remove and purge in a scratch Debian root (needs root for chroot).
if [ "$(id -u)" -eq 0 ]; then
  scripts/test-packages.sh
else
  sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_BUILD_JOBS scripts/test-packages.sh
fi
