#!/usr/bin/env bash
# Times the operator commands (`anb-worker queue …`) over a queue holding many dead jobs,
# on SQLite and, when ANB_TEST_POSTGRES_URL names a server, on a fresh PostgreSQL database:
# wall time and peak resident memory of each command, one process each (so the figures
# include opening the queue, as an operator's command does).
#
# Usage: anb-worker/benches/queue-cli.sh [DEAD_JOBS]
#   DEAD_JOBS  dead jobs written straight into the queue's table (default 10000)
# Environment: ANB_WORKER_BIN (the binary to time; default target/release/anb-worker,
# built if missing), ANB_TEST_POSTGRES_URL (as for the tests; PostgreSQL is skipped when
# unset). Needs sqlite3, psql and GNU time.
set -euo pipefail
shopt -s inherit_errexit

JOBS="${1:-10000}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${ANB_WORKER_BIN:-$ROOT/target/release/anb-worker}"
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release --locked --bin anb-worker)
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Each command, timed: "<command>: <seconds> s, <KiB> KiB peak".
time_commands() {
    local command
    for command in "stats" "dead" "dead --limit 1000 --json" "requeue --all" "stats --json"; do
        # shellcheck disable=SC2086 # the command's words are meant to split
        /usr/bin/time -f "  queue $command: %e s, %M KiB peak" "$BIN" queue $command >"$WORK/out" 2>"$WORK/time" ||
            { cat "$WORK/out" "$WORK/time"; exit 1; }
        tail -n 1 "$WORK/time"
    done
    # Counts above 10,000 are lower bounds on SQL backends; none dead is exact.
    grep -q '"dead": 0,' "$WORK/out" || { echo "not every job was requeued:"; cat "$WORK/out"; exit 1; }
}

echo "anb-worker queue over $JOBS dead jobs ($BIN)"

echo "sqlite:"
sqlite3 "$WORK/queue.db" "VACUUM;"
export ANB_QUEUE_URL="sqlite://$WORK/queue.db"
"$BIN" queue stats >/dev/null # creates the tables
now_ms=$(($(date +%s) * 1000))
sqlite3 "$WORK/queue.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $JOBS)
    INSERT INTO anb_queue_jobs (name, payload, state, attempts, max_attempts, run_at, enqueued_at, last_error, dead_at)
    SELECT 'transcode', '{\"video_id\":' || i || '}', 'dead', 5, 5, $now_ms, $now_ms, 'storage error ' || i, $now_ms - i FROM n;"
time_commands

if [[ -n "${ANB_TEST_POSTGRES_URL:-}" ]]; then
    echo "postgres:"
    database="anb_queue_cli_bench_$$"
    psql "$ANB_TEST_POSTGRES_URL" -qc "CREATE DATABASE $database"
    trap 'psql "$ANB_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"; rm -rf "$WORK"' EXIT
    ANB_QUEUE_URL="$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p._replace(path="/" + sys.argv[2]).geturl())' \
        "$ANB_TEST_POSTGRES_URL" "$database")"
    export ANB_QUEUE_URL
    "$BIN" queue stats >/dev/null
    psql "$ANB_QUEUE_URL" -qc "INSERT INTO anb_queue_jobs (name, payload, state, attempts, max_attempts, last_error, dead_at)
        SELECT 'transcode', json_build_object('video_id', i)::jsonb, 'dead', 5, 5, 'storage error ' || i,
               now() - i * interval '1 ms'
        FROM generate_series(1, $JOBS) i"
    time_commands
fi
