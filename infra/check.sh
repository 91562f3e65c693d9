#!/usr/bin/env bash
# The deployment's own checks, run by scripts/test (which installs cfn-lint, shellcheck and matplotlib first):
# the templates with cfn-lint's informational checks on, every shell script with shellcheck, the systemd units
# with systemd-analyze, deploy.sh's dry run, the compose file where Docker Compose is present, and the
# worker-scaling simulation's quick run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${ANB_VENV:-$root/.venv}
step() { printf '\033[1m==> infra: %s\033[0m\n' "$*" >&2; }

step "cfn-lint --include-checks I"
"$venv/bin/cfn-lint" --include-checks I -- infra/cloudformation/*.yaml infra/image/*.yaml

step "shellcheck"
# Every tracked shell script: *.sh, and files whose first line starts a shell.
mapfile -t scripts < <(git ls-files -co --exclude-standard | while read -r f; do
  [ -f "$f" ] || continue
  case "$f" in
    *.sh) echo "$f" ;;
    *) head -n1 "$f" | grep -qE '^#!.*(/|env )(ba)?sh$|^# shellcheck shell=' && echo "$f" ;;
  esac
done)
shellcheck -x -P SCRIPTDIR -P . "${scripts[@]}"

if command -v systemd-analyze >/dev/null; then
  step "systemd-analyze verify"
  # Offline, in a scratch root holding the units and stand-ins for the programs they start.
  unit_root=$(mktemp -d)
  trap 'rm -rf "$unit_root"' EXIT
  mkdir -p "$unit_root/usr/local/bin" "$unit_root/usr/local/lib/anb" "$unit_root/etc/systemd/system" "$unit_root/usr/lib/systemd"
  cp -r /usr/lib/systemd/system "$unit_root/usr/lib/systemd/"
  for program in bin/anb-api bin/anb-worker lib/anb/anb-secrets lib/anb/anb-drain lib/anb/anb-liveness; do
    printf '#!/bin/sh\n' >"$unit_root/usr/local/$program"
    chmod +x "$unit_root/usr/local/$program"
  done
  cp infra/artifact/systemd/* "$unit_root/etc/systemd/system/"
  report=$(systemd-analyze verify --man=no --root="$unit_root" "$unit_root"/etc/systemd/system/* 2>&1)
  [ -z "$report" ] || { printf '%s\n' "$report" >&2; exit 1; }
fi

step "deploy.sh --dry-run"
plan=$(ANB_BUILD_ID=check infra/deploy.sh --dry-run --academy --images anb-check check-bucket 2>/dev/null)
for expected in "put-object --bucket check-bucket --key releases/$(git rev-parse HEAD)/check/" \
  "--if-none-match" "cloudformation deploy --stack-name anb-check-images" \
  "cloudformation deploy --stack-name anb-check " "InstanceProfileName=LabInstanceProfile"; do
  grep -qF -- "$expected" <<<"$plan" || { echo "deploy.sh --dry-run does not print: $expected" >&2; exit 1; }
done

step "compose file"
# The compose topology takes every variable the instances give the services.
for var in $(grep -oE 'echo "(ANB|AWS)_[A-Z_]+=' infra/artifact/boot.sh | grep -oE '(ANB|AWS)_[A-Z_]+') \
  $(grep -oE "'(ANB)_[A-Z_]+=" infra/artifact/lib/anb-secrets | grep -oE 'ANB_[A-Z_]+'); do
  grep -q "^ *$var:" infra/compose.yaml || { echo "infra/compose.yaml does not set $var" >&2; exit 1; }
done
if docker compose version >/dev/null 2>&1; then
  docker compose -f infra/compose.yaml config --quiet
elif command -v docker-compose >/dev/null; then
  docker-compose -f infra/compose.yaml config --quiet
else
  echo "no Docker Compose here: only the variables were checked" >&2
fi

step "worker-scaling simulation --quick"
sim_out=$(mktemp -d)
"$venv/bin/python" capacity/worker-scaling/simulate.py --quick --out "$sim_out" >/dev/null
for f in burst.png target-sweep.png results.md; do
  [ -s "$sim_out/$f" ] || { echo "the simulation wrote no $f" >&2; exit 1; }
done
# The chosen policy never kills an encode in the burst.
grep -E '^\| burst \| backlog [0-9.]+ \+' "$sim_out/results.md" | awk -F'|' '$(NF-1) + 0 != 0 { exit 1 }' \
  || { echo "the chosen policy killed encodes in the burst" >&2; exit 1; }
rm -rf "$sim_out"
