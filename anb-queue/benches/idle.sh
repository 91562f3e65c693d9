#!/usr/bin/env bash
# What an idle worker costs on each backend: CPU, and the load it puts on its backend.
#
#   anb-queue/benches/idle.sh [--quick] [--debug] [--seconds N] [--backends postgres,sqlite,redis,sqs]
#
# Measures 60 s per backend (10 s with --quick) with a release build of the `idle` example
# (--debug: the debug build, whose counts are the same but CPU higher), and prints one table. PostgreSQL (ANB_TEST_POSTGRES_URL) gets a fresh database; Redis is a
# server of the script's own on a free port, so its command counters are the worker's alone;
# SQS is the test server at ANB_TEST_AWS_ENDPOINT (requests are counted by the client).
set -euo pipefail

seconds=60
profile=release
backends=postgres,sqlite,redis,sqs
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) seconds=10 ;;
        --debug) profile=debug ;;
        --seconds) seconds="$2"; shift ;;
        --backends) backends="$2"; shift ;;
        *) echo "usage: $0 [--quick] [--debug] [--seconds N] [--backends LIST]" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/../.."
export ANB_TEST_POSTGRES_URL="${ANB_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export ANB_TEST_AWS_ENDPOINT="${ANB_TEST_AWS_ENDPOINT:-http://127.0.0.1:4566}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"

redis_args=()
if [[ ",$backends," == *,redis,* ]]; then
    command -v redis-server >/dev/null || { echo "redis-server is needed for the Redis run" >&2; exit 1; }
    scratch="$(mktemp -d)"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$scratch" \
        --daemonize yes --pidfile "$scratch/redis.pid" >/dev/null
    trap 'kill "$(cat "$scratch/redis.pid")" 2>/dev/null || true; rm -rf "$scratch"' EXIT
    for _ in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis_args=(--redis-url "redis://127.0.0.1:$port")
fi

if [[ $profile == release ]]; then
    cargo build --release --locked -p anb-queue --example idle
else
    cargo build --locked -p anb-queue --example idle
fi
echo "commit $(git rev-parse --short HEAD), $profile build, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"target/$profile/examples/idle" --seconds "$seconds" --backends "$backends" "${redis_args[@]}"
