#!/usr/bin/env bash
# The packages' test (issue "The ATM board in the field", §3), part of scripts/test.sh:
#   1. both packages build from scripts/package.sh, from the test build's binaries, twice:
#      0.1.0-1 and 0.1.1-1 for the upgrade;
#   2. lintian reports no error;
#   3. systemd-analyze security --offline scores each unit, which must stay "OK" (at most
#      $MAX_EXPOSURE; docs/deployment.md records the scores);
#   4. in a scratch Debian root (debootstrap, cached in target/scratch): install, run
#      --version, check users, modes and owners, upgrade over itself keeping a changed
#      conffile and the keys, remove, purge.
# Needs root (chroot, file owners); lintian and debootstrap come from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=2.0
work="$PWD/target/package-test"
rm -rf "$work"
mkdir -p "$work/v1" "$work/v2"

fail() { echo "test-packages: FAIL: $*" >&2; exit 1; }
step() { echo "test-packages: $*" >&2; }

# 1. The packages.
# The binaries of the test build (scripts/test.sh builds the agent with the camera): the
# same code the suites just ran, and no second compilation.
scripts/package.sh --profile dev --prebuilt --out "$work/v1" >/dev/null
scripts/package.sh --profile dev --prebuilt --deb-version 0.1.1-1 --out "$work/v2" >/dev/null
v1_hub=$(ls "$work"/v1/qrcash-hub_*.deb); v1_agent=$(ls "$work"/v1/qrcash-agent_*.deb)
v2_hub=$(ls "$work"/v2/qrcash-hub_*.deb); v2_agent=$(ls "$work"/v2/qrcash-agent_*.deb)
dpkg-deb -f "$v1_agent" Depends | grep -q adduser || fail "qrcash-agent does not depend on adduser"

# 2. lintian: no error (warnings are printed; docs/deployment.md lists the known ones).
for tool in lintian systemd-analyze debootstrap dpkg-deb; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh installs it)"
done
for deb in "$v1_hub" "$v1_agent"; do
  out=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v "running with root privileges" || true)
  [ -n "$out" ] && echo "$out" >&2
  if echo "$out" | grep -q "^E: "; then fail "lintian errors in $(basename "$deb")"; fi
done
step "lintian: no errors"

# 3. The units' exposure.
for unit in agent/debian/qrcash-agent.service hub/debian/qrcash-hub.service; do
  report=$(systemd-analyze security --offline=true "$unit" 2>&1) \
    || fail "systemd-analyze security $unit: $report"
  score=$(echo "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  [ -n "$score" ] || fail "systemd-analyze gave no score for $unit"
  awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' \
    || fail "$unit exposure $score is above $MAX_EXPOSURE"
  # Every directive known and well-formed. The binary is not on this machine: that one
  # finding is expected (the scratch root below runs it), any other fails.
  findings=$(systemd-analyze verify --man=no "$unit" 2>&1 \
    | grep -v "Command /usr/bin/qrcash-[a-z]* is not executable: No such file or directory" || true)
  [ -z "$findings" ] || fail "systemd-analyze verify $unit: $findings"
  step "$(basename "$unit"): exposure $score (at most $MAX_EXPOSURE)"
done

# 4. A scratch root: Debian bookworm, minbase with adduser, made once and kept as a tarball.
cache="$PWD/target/scratch/bookworm-minbase.tar"
if [ ! -s "$cache" ]; then
  step "making the scratch root (debootstrap, once)"
  mkdir -p "$(dirname "$cache")"
  tmp="$work/bootstrap"
  debootstrap --variant=minbase --include=adduser bookworm "$tmp" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  tar -C "$tmp" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
  rm -rf "$tmp"
fi
root="$work/root"
mkdir -p "$root"
tar -C "$root" -xf "$cache"
cp "$v1_hub" "$v1_agent" "$v2_hub" "$v2_agent" "$root/tmp/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
stat_of() { in_root stat -c '%a %U:%G' "$1"; }
expect_stat() { local got; got=$(stat_of "$1"); [ "$got" = "$2" ] || fail "$1 is $got, expected $2"; }
base() { basename "$1"; }

step "install 0.1.0-1"
in_root dpkg -i "/tmp/$(base "$v1_hub")" "/tmp/$(base "$v1_agent")" >"$work/install.log" 2>&1 \
  || { cat "$work/install.log" >&2; fail "install"; }
grep -q $'\e' "$work/install.log" && fail "colour codes in the maintainer scripts' output"
grep -qi "warning" "$work/install.log" && { cat "$work/install.log" >&2; fail "warnings while installing"; }
in_root qrcash-hub --version | grep -qx "qrcash-hub 0.1.0" || fail "qrcash-hub --version"
in_root qrcash-agent --version | grep -qx "qrcash-agent 0.1.0 (camera: v4l)" || fail "qrcash-agent --version"
in_root id qrcash-hub >/dev/null || fail "no user qrcash-hub"
in_root id -nG qrcash-agent | tr ' ' '\n' | grep -qx dialout || fail "qrcash-agent not in dialout"
in_root id -nG qrcash-agent | tr ' ' '\n' | grep -qx video || fail "qrcash-agent not in video"
if in_root id -nG qrcash-hub | tr ' ' '\n' | grep -qx "dialout\|video"; then fail "qrcash-hub has device groups"; fi
expect_stat /var/lib/qrcash-hub "700 qrcash-hub:qrcash-hub"
expect_stat /var/lib/qrcash-hub/hub-key.jwk "600 qrcash-hub:qrcash-hub"
expect_stat /var/lib/qrcash-hub/hub.sqlite "600 qrcash-hub:qrcash-hub"
expect_stat /etc/qrcash/hub.toml "640 root:qrcash-hub"
expect_stat /var/lib/qrcash-agent "700 qrcash-agent:qrcash-agent"
expect_stat /etc/qrcash/agent.toml "644 root:root"
in_root sh -c 'zcat /usr/share/man/man1/qrcash-agent.1.gz' | grep -q '^\.TH qrcash-agent 1' || fail "no manual page of qrcash-agent"
in_root sh -c 'zcat /usr/share/man/man1/qrcash-hub.1.gz' | grep -q '^\.TH qrcash-hub 1' || fail "no manual page of qrcash-hub"
for unit in qrcash-hub qrcash-agent; do
  [ -f "$root/usr/lib/systemd/system/$unit.service" ] || fail "$unit.service not installed"
  [ -L "$root/etc/systemd/system/multi-user.target.wants/$unit.service" ] || fail "$unit.service not enabled"
  doc=$(sed -n 's|^Documentation=file://\([^ ]*\).*|\1|p' "$root/usr/lib/systemd/system/$unit.service")
  [ -f "$root$doc" ] || fail "$unit.service names $doc, which is not installed"
done
in_root dpkg-query -W -f='${Conffiles}\n' qrcash-agent | grep -q /etc/qrcash/agent.toml || fail "agent.toml is not a conffile"
in_root dpkg-query -W -f='${Conffiles}\n' qrcash-hub | grep -q /etc/qrcash/hub.toml || fail "hub.toml is not a conffile"
# The hub's own commands work as its user against what the package made.
in_root setpriv --reuid=qrcash-hub --regid=qrcash-hub --init-groups -- \
  qrcash-hub --config /etc/qrcash/hub.toml ledger check >/dev/null || fail "qrcash-hub ledger check as qrcash-hub"
# The technician's first step on a board by hand, as the agent's user: the key lands in the
# state directory, 0600 and the agent's, although the shipped configuration names no hub key.
in_root setpriv --reuid=qrcash-agent --regid=qrcash-agent --init-groups -- \
  qrcash-agent --config /etc/qrcash/agent.toml keygen >/dev/null || fail "qrcash-agent keygen as qrcash-agent"
expect_stat /var/lib/qrcash-agent/atm-key.jwk "600 qrcash-agent:qrcash-agent"
key_before=$(sha256sum "$root/var/lib/qrcash-hub/hub-key.jwk" | cut -d' ' -f1)

step "a technician's change, then the upgrade to 0.1.1-1"
sed -i 's/^atm_id = .*/atm_id = "atm-scratch-01"/' "$root/etc/qrcash/agent.toml"
sed -i 's/^hub_id = .*/hub_id = "hub-scratch"/' "$root/etc/qrcash/hub.toml"
in_root dpkg -i --force-confold "/tmp/$(base "$v2_hub")" "/tmp/$(base "$v2_agent")" >"$work/upgrade.log" 2>&1 \
  || { cat "$work/upgrade.log" >&2; fail "upgrade"; }
for p in qrcash-hub qrcash-agent; do
  [ "$(in_root dpkg-query -W -f='${Version}' $p)" = "0.1.1-1" ] || fail "$p was not upgraded"
done
grep -qx 'atm_id = "atm-scratch-01"' "$root/etc/qrcash/agent.toml" || fail "the upgrade lost agent.toml's change"
grep -qx 'hub_id = "hub-scratch"' "$root/etc/qrcash/hub.toml" || fail "the upgrade lost hub.toml's change"
[ "$(sha256sum "$root/var/lib/qrcash-hub/hub-key.jwk" | cut -d' ' -f1)" = "$key_before" ] || fail "the upgrade replaced the hub key"
expect_stat /etc/qrcash/hub.toml "640 root:qrcash-hub"
in_root dpkg -i "/tmp/$(base "$v2_hub")" "/tmp/$(base "$v2_agent")" >>"$work/upgrade.log" 2>&1 \
  || { cat "$work/upgrade.log" >&2; fail "reinstalling the same version"; }

step "remove, then purge"
in_root dpkg -r qrcash-agent qrcash-hub >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "remove"; }
[ ! -e "$root/usr/bin/qrcash-hub" ] && [ ! -e "$root/usr/bin/qrcash-agent" ] || fail "binaries left after remove"
[ -f "$root/etc/qrcash/agent.toml" ] || fail "remove (not purge) deleted agent.toml"
in_root dpkg -P qrcash-agent qrcash-hub >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "purge"; }
[ ! -e "$root/etc/qrcash" ] || fail "purge left $(ls "$root/etc/qrcash")"
[ ! -e "$root/usr/lib/systemd/system/qrcash-hub.service" ] || fail "purge left the hub unit"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/qrcash-agent.service" ] || fail "purge left the agent unit enabled"
in_root dpkg-statoverride --list /etc/qrcash/hub.toml >/dev/null && fail "purge left the statoverride"
[ -f "$root/var/lib/qrcash-hub/hub-key.jwk" ] || fail "purge deleted the hub's key (money records are kept)"
grep -q "^qrcash-hub: /var/lib/qrcash-hub .* is kept" "$work/purge.log" || fail "the hub's purge did not say its state is kept"
grep -q "^qrcash-agent: /var/lib/qrcash-agent .* is kept" "$work/purge.log" || fail "the agent's purge did not say its state is kept"
step "install, --version, upgrade, remove and purge: ok"
