#!/usr/bin/env bash
# Packs the release binaries with the instance scripts, systemd units and CloudWatch agent configuration into
# OUT_DIR/anb-<version>-x86_64-linux.tar.gz and prints its path.
#   infra/package.sh RELEASE_DIR OUT_DIR
set -euo pipefail
release=$1 out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(grep -m1 '^version' "$root/Cargo.toml" | cut -d'"' -f2)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/anb/bin" "$out"
cp "$release/anb-api" "$release/anb-worker" "$release/anb" "$stage/anb/bin/"
cp -r "$root/infra/artifact/." "$stage/anb/"
tar -czf "$out/anb-$version-x86_64-linux.tar.gz" -C "$stage" anb
echo "$out/anb-$version-x86_64-linux.tar.gz"
