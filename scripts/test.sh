#!/usr/bin/env bash
# The test command (README): installs what the suites need, then runs every test.
#   scripts/test.sh            the default suite (a few minutes on 2 cores)
# Long campaigns and benchmarks have their own commands: see docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# A private PostgreSQL server that lives for this run: the suites that run hub instances on
# PostgreSQL create their databases on it (without QRCASH_TEST_PG they start their own).
pgdir="$(mktemp -d /tmp/qrcash-pg.XXXXXX)"
trap 'scripts/postgres.sh stop "$pgdir" || true; rm -rf "$pgdir"' EXIT
export QRCASH_TEST_PG="$(scripts/postgres.sh start "$pgdir")"
# The whole workspace: unit tests next to the code, end-to-end suites in tests/. Built as
# the ATM ships: the agent with the camera (Video4Linux through bindgen/libclang; without a
# /dev/video* device the device test says so and skips).
cargo test --workspace --locked --features qrcash-agent/v4l
# The hub's suites again on PostgreSQL (unit, handler, simulation, command line, and the
# race of two hub instances for one code, the round trips per message).
# The very test binaries built above (a `-p qrcash-hub` build would resolve features anew and
# compile again), run from the hub's folder as cargo runs them.
mapfile -t hub_tests < <(
  cargo test --workspace --locked --features qrcash-agent/v4l --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and m["profile"]["test"] and "qrcash-hub@" in m["package_id"]):
        print(m["executable"])'
)
[ ${#hub_tests[@]} -ge 2 ] || { echo "test.sh: the hub's test binaries were not found" >&2; exit 1; }
for t in "${hub_tests[@]}"; do
  echo "PostgreSQL: $(basename "$t")"
  (cd hub && CARGO_MANIFEST_DIR="$PWD" QRCASH_TEST_BACKEND=postgres "$t" -q)
done
# The Debian packages of those very binaries: lintian, the units' exposure, and install,
# upgrade, remove and purge in a scratch Debian root (needs root for chroot).
if [ "$(id -u)" -eq 0 ]; then
  scripts/test-packages.sh
else
  sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_BUILD_JOBS scripts/test-packages.sh
fi
