#!/usr/bin/env bash
# Installs the system packages the test suites need, where they are missing:
#   mosquitto    - the real MQTT broker every broker test starts privately (never the system one)
#   nats-server  - the clustered broker of tests/tests/broker_cluster.rs (three private nodes)
#   postgresql   - the hub's suites on PostgreSQL, on a private server (scripts/postgres.sh)
#   libclang-dev - bindgen for the `v4l` feature of qrcash-hardware (camera capture on ATMs)
#   openssl      - the independent CSR maker of the device-CA test (hub/tests/pki.rs)
#   lintian, debootstrap, dpkg-dev - the package test (scripts/test-packages.sh): the
#                  packages' checks, the scratch Debian root, dpkg-shlibdeps for cargo-deb
# and a Python environment in target/pyvenv with tests/python/requirements.txt (pyhpke, the
# independent implementation the sealed-secret interop tests run against).
# Idempotent and quiet when everything is there. Needs root or sudo for apt-get.
set -euo pipefail

# Each package is checked by its own installed state, never by a file that another package may
# also ship (a fresh machine has libclang-cpp.so.14 from LLVM but no libclang-dev, and bindgen
# then stops with "Unable to find libclang").
installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for package in mosquitto nats-server postgresql libclang-dev openssl lintian debootstrap dpkg-dev; do
  installed "$package" || missing+=("$package")
done
if [ ${#missing[@]} -ne 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python side of the interop tests, pinned; recreated when the requirements change.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/pyvenv"
requirements="$root/tests/python/requirements.txt"
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  echo "installing: python packages of tests/python/requirements.txt into target/pyvenv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
