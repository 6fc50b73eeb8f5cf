#!/usr/bin/env bash
# Builds the Debian packages of the agent (with the camera: feature v4l) and the hub with
# cargo-deb (installed into target/tools at the pinned version when missing).
#   scripts/package.sh                          release build, packages in target/debian
#   scripts/package.sh --profile dev            the test build's profile (scripts/test-packages.sh)
#   scripts/package.sh --deb-version 0.1.1-1    another version (the upgrade test)
#   scripts/package.sh --out DIR                where the .deb files go
#   scripts/package.sh --prebuilt ...           package the binaries already in target/<profile>
#                                               (scripts/test.sh built them with the camera)
# Prints the path of each package made, one per line. See docs/deployment.md, "Packages".
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
profile=release
deb_version=""
out=target/debian
prebuilt=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --deb-version) deb_version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --prebuilt) prebuilt=1; shift ;;
    *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

tools="$PWD/target/tools"
cargo_deb="$tools/bin/cargo-deb"
if ! "$cargo_deb" --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "installing: cargo-deb $CARGO_DEB_VERSION into target/tools" >&2
  cargo install --quiet --locked --version "$CARGO_DEB_VERSION" --root "$tools" cargo-deb
fi

# Built here, so the feature set is this script's: the ATM's agent has the camera.
if [ -z "$prebuilt" ]; then
  cargo build --locked --profile "$profile" -p qrcash-hub --bin qrcash-hub
  cargo build --locked --profile "$profile" -p qrcash-agent --bin qrcash-agent --features v4l
fi
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
"$dir/qrcash-agent" --version | grep -q "(camera: v4l)" \
  || { echo "package.sh: $dir/qrcash-agent is built without the camera (feature v4l)" >&2; exit 1; }

# The manual pages, rendered by the binaries from their own command lines.
mkdir -p target/man
for bin in qrcash-hub qrcash-agent; do
  "$dir/$bin" man | gzip -9n > "target/man/$bin.1.gz"
done

args=(--no-build --quiet --profile "$profile" -o "$out")
if [ -n "$deb_version" ]; then args+=(--deb-version "$deb_version"); fi
# A test build is compressed fast; a release with xz.
if [ "$profile" = dev ]; then args+=(--fast); fi
mkdir -p "$out"
for package in qrcash-hub qrcash-agent; do
  "$cargo_deb" "${args[@]}" -p "$package"
done
