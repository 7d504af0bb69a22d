#!/usr/bin/env bash
# Prints the path of a Debian bookworm root file system tarball with systemd, building it with
# debootstrap when the cache lacks it. No registry can be pulled from, so the install tests
# `docker import` this tarball as their image. Cached outside the clone, keyed by what it
# holds: change INCLUDE and a new one is built.
set -euo pipefail

CACHE_DIR=${DROVER_CI_CACHE:-/var/cache/drover-ci}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd for the boot test; adduser is what drover-coordinator depends on, so `apt install
# ./…deb` needs no network.
INCLUDE=systemd,systemd-sysv,adduser
KEY=$(printf '%s %s %s' "$SUITE" minbase "$INCLUDE" | sha256sum | cut -c1-12)
TARBALL=$CACHE_DIR/debian-$SUITE-$KEY.tar

if [ -s "$TARBALL" ]; then
  echo "$TARBALL"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
fi
mkdir -p "$CACHE_DIR"
work=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "building $TARBALL with debootstrap (cached for later runs)" >&2
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$MIRROR" >&2
# Smaller image, and no stale apt lists in it.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$TARBALL"
echo "$TARBALL"
