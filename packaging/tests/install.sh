#!/usr/bin/env bash
# The packages, proven by installing them (run by .ci/run; needs root and Docker):
#  1. build both packages in both formats with `cargo xtask package`, plus a rebuild with the
#     next revision to upgrade to;
#  2. lintian (errors and warnings fail), rpmlint (errors fail);
#  3. in a container of a debootstrapped Debian (docker import, no registry needed): apt
#     install, systemd-analyze verify, --version, files where README.md says,
#     remove keeping state, purge removing it;
#  4. rpm --root into a copy of that Debian tree: scriptlets run, file list equals the deb's,
#     upgrade keeps an edited config, removal keeps it (.rpmsave) and the state;
#  5. packaging/tests/boot.sh: systemd in a container, agent joined to the coordinator.
# Any failure exits non-zero with a line starting "FAIL:".
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/target/packages
UPGRADE=$OUT/upgrade
CONTAINER=drover-pkg-install-$$
WORK=$(mktemp -d /tmp/drover-pkg.XXXXXX)
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

log() { printf '\n--> %s\n' "$*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
cleanup() {
  docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ensure_tools() {
  local missing=()
  command -v lintian >/dev/null || missing+=(lintian)
  command -v rpm >/dev/null || missing+=(rpm)
  command -v rpmlint >/dev/null || missing+=(rpmlint)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # Pinned: where units go and how scripts are generated changes between versions.
  cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION" ||
    cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
  cargo generate-rpm --version 2>/dev/null | grep -q "$CARGO_GENERATE_RPM_VERSION" ||
    cargo install --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
}

# The image the container tests run: the cached debootstrap tarball, imported once.
ensure_image() {
  local tarball key
  tarball=$("$ROOT/packaging/tests/rootfs.sh")
  key=$(basename "$tarball" .tar)
  IMAGE=drover-ci/debian:${key#debian-}
  ROOTFS_TARBALL=$tarball
  if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "importing $tarball as $IMAGE"
    docker import "$tarball" "$IMAGE" >/dev/null
  fi
}

# Runs a shell script in the install container.
in_ct() { docker exec -i -e DEBIAN_FRONTEND=noninteractive "$CONTAINER" /bin/sh -euc "$1"; }

ensure_tools
# The workspace version ([workspace.package] comes first in the root Cargo.toml).
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[ -n "$VERSION" ] || fail "no version in Cargo.toml"

log "cargo xtask package (revision 1, then revision 2 of the same binaries)"
rm -rf "$OUT"
cargo xtask package --out "$OUT"
cargo xtask package --no-build --revision 2 --out "$UPGRADE"
ARCH=$(dpkg --print-architecture)
RPM_ARCH=$(uname -m)
deb() { echo "$1/$2_${VERSION}-$3_${ARCH}.deb"; }
rpmfile() { echo "$1/$2-${VERSION}-$3.${RPM_ARCH}.rpm"; }
for p in drover-agent drover-coordinator; do
  for f in "$(deb "$OUT" $p 1)" "$(deb "$UPGRADE" $p 2)" "$(rpmfile "$OUT" $p 1)"; do
    [ -s "$f" ] || fail "expected package $f was not built"
  done
done

log "lintian (fails on errors and warnings; overrides in packaging/lintian say why)"
lintian --fail-on error,warning --info \
  "$(deb "$OUT" drover-agent 1)" "$(deb "$OUT" drover-coordinator 1)" ||
  fail "lintian reported errors or warnings"
echo "lintian: no errors, no warnings"

log "rpmlint (fails on errors)"
rpmlint -c "$ROOT/packaging/rpm/rpmlint.toml" \
  "$(rpmfile "$OUT" drover-agent 1)" "$(rpmfile "$OUT" drover-coordinator 1)" ||
  fail "rpmlint reported errors"

ensure_image
log "deb: install, upgrade, remove, purge in a $IMAGE container"
docker run -d --name "$CONTAINER" -v "$OUT:/pkgs:ro" "$IMAGE" sleep infinity >/dev/null
in_ct "cd /pkgs && apt-get install -y -q ./$(basename "$(deb "$OUT" drover-agent 1)") \
  ./$(basename "$(deb "$OUT" drover-coordinator 1)")" >"$WORK/apt-install.log" 2>&1 ||
  {
    cat "$WORK/apt-install.log"
    fail "apt install of the debs failed"
  }
for bin in drover-agent drover-coordinator drover; do
  got=$(in_ct "$bin --version") || fail "$bin --version failed"
  echo "$got"
  case "$got" in *"$VERSION"*) ;; *) fail "$bin --version does not name $VERSION: $got" ;; esac
done
# Where README.md ("Installing from packages") says things are.
in_ct '
  for f in /etc/drover/agent.toml /etc/drover/coordinator.toml \
    /usr/lib/systemd/system/drover-agent.service /usr/lib/systemd/system/drover-coordinator.service \
    /usr/bin/drover-agent /usr/bin/drover-coordinator /usr/bin/drover; do
    [ -f "$f" ] || { echo "missing $f"; exit 1; }
  done
  [ -d /var/lib/drover/agent ] || { echo "missing /var/lib/drover/agent"; exit 1; }
  [ "$(stat -c %U /var/lib/drover)" = drover ] || { echo "/var/lib/drover not owned by drover"; exit 1; }
  getent passwd drover | grep -q nologin || { echo "no system user drover"; exit 1; }
  for u in drover-agent drover-coordinator; do
    [ -L /etc/systemd/system/multi-user.target.wants/$u.service ] || { echo "$u not enabled"; exit 1; }
  done
  dpkg-query -W -f="\${Conffiles}\n" drover-agent drover-coordinator | grep -c "/etc/drover/" | grep -qx 2 ||
    { echo "configs are not conffiles"; exit 1; }
' || fail "installed files are not where README.md says"
# systemd-analyze verify where the units are installed, next to the units they name; it
# exits 0 on mere warnings (an unknown key), so any output fails too.
verify=$(in_ct 'SYSTEMD_LOG_LEVEL=notice systemd-analyze verify drover-agent.service drover-coordinator.service 2>&1') ||
  fail "systemd-analyze verify rejected the units: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify complained about the units: $verify"
echo "systemd-analyze verify: both units accepted"
docker exec "$CONTAINER" cat /etc/drover/agent.toml | cmp -s - packaging/config/agent.toml ||
  fail "installed agent.toml differs from packaging/config/agent.toml"
echo "installed: binaries, configs (conffiles), units (enabled), state dir, user drover"

# Real coordinator state: run it as its unit would, until its store file exists.
in_ct '
  runuser -u drover -- drover-coordinator --listen 127.0.0.1:7400 >/tmp/coordinator.log 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do [ -s /var/lib/drover/coordinator.redb ] && break; sleep 0.1; done
  { kill $pid && wait $pid; } 2>/dev/null || true
  [ -s /var/lib/drover/coordinator.redb ] || { cat /tmp/coordinator.log; exit 1; }
  echo 7 >/var/lib/drover/agent/generation
  echo "cluster_id = \"edited\"" >>/etc/drover/agent.toml
  echo "cluster_id = \"edited\"" >>/etc/drover/coordinator.toml
' || fail "could not create state or edit the configs"

log "upgrade to revision 2"
docker cp "$UPGRADE" "$CONTAINER:/upgrade"
in_ct "cd /upgrade && apt-get install -y -q ./$(basename "$(deb "$UPGRADE" drover-agent 2)") \
  ./$(basename "$(deb "$UPGRADE" drover-coordinator 2)")" >"$WORK/apt-upgrade.log" 2>&1 ||
  {
    cat "$WORK/apt-upgrade.log"
    fail "upgrade failed"
  }
in_ct '
  for p in drover-agent drover-coordinator; do
    v=$(dpkg-query -W -f="\${Version}" $p)
    case "$v" in *-2) ;; *) echo "$p is at $v after the upgrade"; exit 1 ;; esac
  done
  grep -qx "cluster_id = \"edited\"" /etc/drover/agent.toml || { echo "agent.toml edit lost"; exit 1; }
  grep -qx "cluster_id = \"edited\"" /etc/drover/coordinator.toml || { echo "coordinator.toml edit lost"; exit 1; }
  ! ls /etc/drover/*.dpkg-* 2>/dev/null || { echo "dpkg left conffile copies"; exit 1; }
  [ -s /var/lib/drover/coordinator.redb ] || { echo "state lost on upgrade"; exit 1; }
' || fail "upgrade did not keep the edited configs and the state"
echo "upgraded to revision 2: edited configs and state kept"

log "remove, then purge"
in_ct 'apt-get remove -y -q drover-agent drover-coordinator' >"$WORK/apt-remove.log" 2>&1 ||
  {
    cat "$WORK/apt-remove.log"
    fail "apt remove failed"
  }
in_ct '
  [ ! -e /usr/bin/drover-agent ] && [ ! -e /usr/bin/drover ] || { echo "binaries left after remove"; exit 1; }
  grep -q edited /etc/drover/agent.toml || { echo "config gone after remove"; exit 1; }
  [ -s /var/lib/drover/coordinator.redb ] && [ -s /var/lib/drover/agent/generation ] ||
    { echo "state gone after remove"; exit 1; }
' || fail "remove did not keep config and state"
echo "removed: binaries gone, config and state kept"
in_ct 'apt-get purge -y -q drover-agent drover-coordinator' >"$WORK/apt-purge.log" 2>&1 ||
  {
    cat "$WORK/apt-purge.log"
    fail "apt purge failed"
  }
in_ct '
  [ ! -e /etc/drover ] || { echo "/etc/drover left after purge: $(ls -A /etc/drover)"; exit 1; }
  [ ! -e /var/lib/drover ] || { echo "/var/lib/drover left after purge: $(find /var/lib/drover)"; exit 1; }
' || fail "purge did not remove config and state"
echo "purged: config and state gone"
docker rm -f "$CONTAINER" >/dev/null

log "rpm: install into a Debian root with rpm --root; file list against the deb's"
for p in drover-agent drover-coordinator; do
  f=$(rpmfile "$OUT" $p 1)
  rpm -qp --scripts "$f" | grep -q "systemctl enable $p.service" ||
    fail "$f lacks its scriptlets (a script path in Cargo.toml did not resolve?)"
  rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$f" | grep -q '^/etc/drover/.*\.toml cn$' ||
    fail "$f: the config is not %config(noreplace)"
done
mkdir -p "$WORK/rpmroot"
tar -C "$WORK/rpmroot" -xf "$ROOTFS_TARBALL"
rpm --root "$WORK/rpmroot" --initdb
# --nodeps: the rpm database of a Debian tree knows no packages; the scriptlets do run (in a
# chroot), so the user, the state directories and the enablement are checked too.
rpm --root "$WORK/rpmroot" -i --nodeps --force-debian "$(rpmfile "$OUT" drover-agent 1)" "$(rpmfile "$OUT" drover-coordinator 1)"
rpm --root "$WORK/rpmroot" -V --nodeps drover-agent drover-coordinator || fail "rpm -V found installed files differing"
chroot "$WORK/rpmroot" getent passwd drover >/dev/null || fail "rpm %pre did not create the drover user"
[ -d "$WORK/rpmroot/var/lib/drover/agent" ] || fail "rpm %post did not create /var/lib/drover/agent"
[ -L "$WORK/rpmroot/etc/systemd/system/multi-user.target.wants/drover-agent.service" ] ||
  fail "rpm %post did not enable drover-agent.service"
for p in drover-agent drover-coordinator; do
  # The deb also carries Debian's own metadata (copyright, changelog, lintian overrides).
  dpkg-deb -c "$(deb "$OUT" $p 1)" | awk '$1 !~ /^d/ {print $6}' | sed 's|^\./|/|' |
    grep -vE "^/usr/share/(doc|lintian)/" | sort >"$WORK/$p.deb.files"
  rpm --root "$WORK/rpmroot" -ql $p | sort >"$WORK/$p.rpm.files"
  diff -u "$WORK/$p.deb.files" "$WORK/$p.rpm.files" || fail "$p: the rpm's file list differs from the deb's"
  echo "$p: rpm and deb ship the same $(wc -l <"$WORK/$p.rpm.files") files"
done
# Upgrade keeps an edited config; removal keeps it (as .rpmsave) and the state.
R=$WORK/rpmroot
echo 'cluster_id = "edited"' >>"$R/etc/drover/agent.toml"
echo 7 >"$R/var/lib/drover/agent/generation"
rpm --root "$R" -U --nodeps --force-debian "$(rpmfile "$UPGRADE" drover-agent 2)" "$(rpmfile "$UPGRADE" drover-coordinator 2)"
[ "$(rpm --root "$R" -q --qf '%{RELEASE}' drover-agent)" = 2 ] || fail "rpm -U did not upgrade drover-agent"
grep -q edited "$R/etc/drover/agent.toml" || fail "rpm -U lost the edited agent.toml"
rpm --root "$R" -e --nodeps drover-agent drover-coordinator 2>&1 | grep -v "saved as" || true
grep -q edited "$R/etc/drover/agent.toml.rpmsave" || fail "rpm -e did not keep the edited config as .rpmsave"
[ -s "$R/var/lib/drover/agent/generation" ] || fail "rpm -e removed the agent's state"
[ ! -e "$R/usr/bin/drover-agent" ] || fail "rpm -e left the binary"
echo "rpm: upgrade to release 2 kept the edited config; removal kept it as .rpmsave, and the state"

log "systemd boot test"
IMAGE=$IMAGE "$ROOT/packaging/tests/boot.sh" "$(deb "$OUT" drover-agent 1)" "$(deb "$OUT" drover-coordinator 1)" \
  "$(deb "$UPGRADE" drover-agent 2)" "$(deb "$UPGRADE" drover-coordinator 2)"

log "packages ok"
