#!/usr/bin/env bash
# Packs release binaries with the boot script and systemd units into anb-<version>-x86_64-linux.tar.gz.
#   infra/package.sh RELEASE_DIR OUT_DIR
set -euo pipefail
release=$1 out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(grep -m1 '^version' "$root/Cargo.toml" | cut -d'"' -f2)
stage=$(mktemp -d)
mkdir -p "$stage/anb/bin" "$out"
cp "$release/anb-api" "$release/anb-worker" "$release/anb" "$stage/anb/bin/"
cp -r "$root/infra/artifact/boot.sh" "$root/infra/artifact/systemd" "$stage/anb/"
tar -czf "$out/anb-$version-x86_64-linux.tar.gz" -C "$stage" anb
rm -rf "$stage"
echo "$out/anb-$version-x86_64-linux.tar.gz"
