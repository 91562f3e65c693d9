#!/usr/bin/env bash
# The PostgreSQL claim statement before and after priorities, side by side on one server:
# two fresh databases with the same 100,000 due jobs, one with the ready index of schema 6
# (`name, run_at, id`) and the claim of that release, one with schema 7's
# (`name, priority, run_at, id`) and its per-priority claim. Each round runs, in each
# database in turn, ROUNDS_CLAIMS claims of 32 jobs followed by their deletion (as a worker
# completes them) in one session, and prints the time and the median statement; then one
# `EXPLAIN (ANALYZE, BUFFERS)` of each claim.
#
#   anb-queue/benches/claim-cost.sh [--quick] [ROUNDS]
#
# ROUNDS defaults to 3 (1 with --quick, which also uses 10,000 jobs and 100 claims).
# The server is ANB_TEST_POSTGRES_URL's; the two databases are dropped at the end.
set -euo pipefail

quick=0
if [[ "${1:-}" == "--quick" ]]; then
    quick=1
    shift
fi
rounds="${1:-$((quick ? 1 : 3))}"
jobs=$((quick ? 10000 : 100000))
claims=$((quick ? 100 : 500))
url="${ANB_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
work="$(mktemp -d)"
cleanup() {
    rm -rf "$work"
    for version in before after; do
        psql -q -X "$url" -c "DROP DATABASE IF EXISTS anb_claim_cost_$version" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

db_url() { # the server's URL with another database
    python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$url" "$1"
}

schema="CREATE TABLE anb_queue_jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL, payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'ready', attempts INT NOT NULL DEFAULT 0, max_attempts INT NOT NULL,
    run_at TIMESTAMPTZ NOT NULL DEFAULT now(), enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_by TEXT, locked_until TIMESTAMPTZ, progress SMALLINT, last_error TEXT,
    dead_at TIMESTAMPTZ, lease_token TEXT, unique_key TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT false, priority SMALLINT NOT NULL DEFAULT 0);
INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at)
    SELECT 'noop', '{}', 5, now() - interval '1 minute' FROM generate_series(1, $jobs);"
declare -A index=(
    [before]="CREATE INDEX ON anb_queue_jobs (name, run_at, id) WHERE state = 'ready'"
    [after]="CREATE INDEX ON anb_queue_jobs (name, priority, run_at, id) WHERE state = 'ready'"
)
lease="UPDATE anb_queue_jobs AS j SET state = 'running', attempts = j.attempts + 1,
    locked_by = 'w', lease_token = 't', locked_until = clock_timestamp() + interval '30 s'
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked)) RETURNING j.id"
declare -A claim=(
    [before]="WITH picked AS (SELECT c.id FROM UNNEST(ARRAY['noop']) AS n(name)
        CROSS JOIN LATERAL (SELECT j.id, j.run_at FROM anb_queue_jobs AS j
            WHERE j.state = 'ready' AND j.name = n.name AND j.run_at <= now()
            ORDER BY j.run_at, j.id LIMIT 32 FOR UPDATE SKIP LOCKED) AS c
        ORDER BY c.run_at, c.id LIMIT 32) $lease"
    [after]="WITH picked AS (SELECT c.id FROM UNNEST(ARRAY['noop']) AS n(name)
        CROSS JOIN LATERAL (SELECT d.id, d.priority, d.run_at
            FROM generate_series(0, 9) AS p(priority)
            CROSS JOIN LATERAL (SELECT j.id, j.priority, j.run_at FROM anb_queue_jobs AS j
                WHERE j.state = 'ready' AND j.name = n.name AND j.priority = p.priority
                    AND j.run_at <= now()
                ORDER BY j.run_at, j.id LIMIT 32 FOR UPDATE SKIP LOCKED) AS d
            LIMIT 32) AS c
        ORDER BY c.priority, c.run_at, c.id LIMIT 32) $lease"
)

for version in before after; do
    psql -q -X "$url" -c "DROP DATABASE IF EXISTS anb_claim_cost_$version" >/dev/null 2>&1
    psql -q -X "$url" -c "CREATE DATABASE anb_claim_cost_$version" >/dev/null
    psql -q -X "$(db_url "anb_claim_cost_$version")" \
        -c "$schema ${index[$version]}; ANALYZE anb_queue_jobs;" >/dev/null
    {
        printf '%s\n' '\timing on'
        for _ in $(seq 1 "$claims"); do
            echo "WITH claimed AS (${claim[$version]}) DELETE FROM anb_queue_jobs WHERE id IN (SELECT id FROM claimed);"
        done
    } > "$work/$version.sql"
done

echo "claim of 32 due jobs and their deletion, $claims per round, $jobs jobs at the start"
printf '%-6s %-8s %10s %18s\n' round version seconds "median statement"
for round in $(seq 1 "$rounds"); do
    for version in before after; do
        start=$(date +%s%N)
        psql -q -X "$(db_url "anb_claim_cost_$version")" -f "$work/$version.sql" > "$work/$version.out"
        end=$(date +%s%N)
        median=$(grep -o 'Time: [0-9.]*' "$work/$version.out" | awk '{print $2}' | sort -n \
            | awk '{a[NR]=$1} END {print a[int(NR/2)+1]}')
        printf '%-6s %-8s %10.3f %15s ms\n' "$round" "$version" \
            "$(awk -v s="$start" -v e="$end" 'BEGIN {print (e - s) / 1e9}')" "$median"
    done
done
for version in before after; do
    buffers=$(psql -q -X "$(db_url "anb_claim_cost_$version")" -c "BEGIN;
        EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) ${claim[$version]}; ROLLBACK;" \
        | grep -m1 -o 'shared hit=[0-9]*')
    echo "$version: one claim of 32 read $buffers buffers"
done
