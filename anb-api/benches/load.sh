#!/usr/bin/env bash
# Load benchmark of the REST API on 127.0.0.1, with wrk:
#
#   1. builds the release anb-api and starts it with every rate limit off on a
#      fresh PostgreSQL database (a scratch database on the server of
#      ANB_TEST_POSTGRES_URL) and local storage in a scratch directory;
#   2. seeds PLAYERS players (users with one or two processed, published
#      videos in eight cities) and VOTES votes, with the ranking aggregate set
#      as the vote path keeps it (load/seed.sql), checks the aggregate against
#      the votes, and logs VOTERS of the players in through the API;
#   3. runs wrk for DURATION seconds each on GET /api/public/rankings (first
#      page; a city filter over eight cities and five pages; every page of
#      the overall ranking at 50 a page) and on POST
#      /api/public/videos/{id}/vote (each request a (voter, video) pair not
#      used before in the run); prints requests/s, p50, p95 and p99 latency,
#      the responses by status class and the API's peak memory (VmHWM) after
#      the logins and after each run; then checks the aggregate again and
#      that every 2xx vote was stored;
#   4. restarts the API and sends UPLOADS concurrent uploads of one valid MP4
#      just under the 100 MiB limit (1920x1080, generated with ffmpeg), each
#      from a different player; checks every one was accepted and prints the
#      API process's peak resident memory (VmHWM) before and after, and the
#      elapsed time; then the same on the embedded default (SQLite and local
#      storage) unless EMBEDDED=0.
#
# wrk, the API and PostgreSQL share the machine, so the figures are those of
# one machine doing all three. Request logs are off (RUST_LOG=warn) unless
# RUST_LOG says otherwise. Everything started is stopped and the scratch
# database and directory are removed on exit, even on failure or Ctrl-C.
#
# Usage: anb-api/benches/load.sh
# Environment (defaults in brackets): DURATION [20] seconds per wrk run,
# CONNECTIONS [16], THREADS [2] (wrk's -c and -t), PLAYERS [10000],
# VOTES [100000], VOTERS [200] players logged in to vote, UPLOADS [10] (0: no upload runs),
# EMBEDDED [1], RANKINGS_CACHE_MS ["0 500"] (the rankings runs are repeated
# for each value, the API restarted with ANB_RANKINGS_CACHE_MS set to it: 0
# reads every request from the database, as before the cache), RANKINGS_ONLY
# [0] (1: stop after the rankings runs, e.g. for a large PLAYERS),
# ANB_TEST_POSTGRES_URL
# [postgres://postgres:postgres@127.0.0.1:5432/postgres], ANB_API_BIN (a
# release build to use instead of building one), WORK_DIR (where the upload
# video is generated; one already there is reused; default: the scratch
# directory), CARGO_TARGET_DIR (as usual).
# Needs: wrk, psql, curl, jq, ffmpeg, ffprobe
# (apt-get install wrk postgresql-client curl jq ffmpeg).
set -euo pipefail

DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-2}"
PLAYERS="${PLAYERS:-10000}"
VOTES="${VOTES:-100000}"
VOTERS="${VOTERS:-200}"
UPLOADS="${UPLOADS:-10}"
EMBEDDED="${EMBEDDED:-1}"
RANKINGS_CACHE_MS="${RANKINGS_CACHE_MS:-0 500}"
RANKINGS_ONLY="${RANKINGS_ONLY:-0}"
PG_URL="${ANB_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
LOG_FILTER="${RUST_LOG:-warn}"

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/anb-api/benches/load"
PASSWORD="carga-de-prueba-2026"
UPLOAD_LIMIT=$((100 * 1024 * 1024))

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

for tool in wrk psql curl jq ffmpeg ffprobe; do
    command -v "$tool" >/dev/null ||
        die "missing $tool (apt-get install wrk postgresql-client curl jq ffmpeg)"
done
((VOTERS >= UPLOADS)) || die "VOTERS ($VOTERS) must be at least UPLOADS ($UPLOADS)"
((VOTERS <= PLAYERS)) || die "VOTERS ($VOTERS) must be at most PLAYERS ($PLAYERS)"

# --- scratch space and clean-up ----------------------------------------------------

SCRATCH="$(mktemp -d -t anb-load.XXXXXX)"
WORK="${WORK_DIR:-$SCRATCH}"
mkdir -p "$WORK" "$SCRATCH/tmp"
DB="anb_load_$$_$RANDOM"
DB_CREATED=""
API_PID=""
UPLOAD_PIDS=()

stop_api() {
    [[ -n "$API_PID" ]] || return 0
    kill -TERM "$API_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$API_PID" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
    API_PID=""
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${UPLOAD_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    stop_api
    if [[ -n "$DB_CREATED" ]]; then
        psql "$PG_URL" -qX -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null ||
            echo "warning: could not drop the scratch database $DB" >&2
    fi
    rm -rf "$SCRATCH"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the API -------------------------------------------------------------------------

if [[ -n "${ANB_API_BIN:-}" ]]; then
    API_BIN="$ANB_API_BIN"
else
    say "building anb-api (release)"
    (cd "$ROOT" && cargo build --release --locked --quiet -p anb-api)
    TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
    [[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"
    API_BIN="$TARGET/release/anb-api"
fi
[[ -x "$API_BIN" ]] || die "no anb-api binary at $API_BIN"

pick_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        # Free when nothing answers a connection.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

PORT="$(pick_port)"
BASE="http://127.0.0.1:$PORT"
SECRET="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

# The API's whole environment: nothing is inherited but PATH, so stray ANB_*
# variables or a .env file cannot change what is measured. $1: database URL,
# $2: storage directory.
API_ENV=()
api_env() {
    API_ENV=(
        PATH="$PATH" TMPDIR="$SCRATCH/tmp" RUST_LOG="$LOG_FILTER"
        ANB_DATABASE_URL="$1" ANB_QUEUE_URL="$1" ANB_STORAGE_URL="$2"
        ANB_JWT_SECRET="$SECRET" ANB_HTTP_ADDR="127.0.0.1:$PORT"
        ANB_RATE_LIMIT_LOGIN_PER_IP=off ANB_LOGIN_BACKOFF=off
        ANB_RATE_LIMIT_SIGNUP_PER_IP=off ANB_RATE_LIMIT_VOTE_PER_USER=off
        ANB_RATE_LIMIT_VOTE_PER_IP=off
        ANB_PASSWORD_HASH_QUEUE_PER_CLIENT=0
    )
}

api_migrate() {
    (cd "$SCRATCH" && env -i "${API_ENV[@]}" timeout 120 "$API_BIN" migrate) \
        >"$SCRATCH/migrate.log" 2>&1 || {
        cat "$SCRATCH/migrate.log" >&2
        die "anb-api migrate failed"
    }
}

# $1: log file.
start_api() {
    (cd "$SCRATCH" && exec env -i "${API_ENV[@]}" "$API_BIN") >"$1" 2>&1 &
    API_PID=$!
    for _ in $(seq 1 120); do
        if curl -fs -o /dev/null --max-time 2 "$BASE/ready"; then
            return 0
        fi
        if ! kill -0 "$API_PID" 2>/dev/null; then
            tail -n 20 "$1" >&2
            die "anb-api exited at start"
        fi
        sleep 0.25
    done
    die "anb-api not ready on $BASE after 30 s"
}

# Peak and current resident memory of the API, in MiB: "VmHWM VmRSS".
api_memory() {
    awk '/^VmHWM:/ { hwm = $2 } /^VmRSS:/ { rss = $2 }
         END { printf "%.1f %.1f\n", hwm / 1024, rss / 1024 }' "/proc/$API_PID/status"
}

# POST JSON $2 to path $1; prints the response body, fails unless status is $3.
post_json() {
    local body status
    body="$SCRATCH/response.json"
    status=$(curl -sS --max-time 60 -o "$body" -w '%{http_code}' \
        -H 'content-type: application/json' -d "$2" "$BASE$1")
    [[ "$status" == "$3" ]] || die "POST $1 answered $status, not $3: $(cat "$body")"
    cat "$body"
}

# $1: email. Signs up a player in Bogotá with $PASSWORD.
signup() {
    post_json /api/auth/signup "$(jq -cn --arg email "$1" --arg pw "$PASSWORD" \
        '{first_name: "Carga", last_name: "Prueba", email: $email, password1: $pw,
          password2: $pw, city: "Bogotá", country: "Colombia"}')" 201 >/dev/null
}

# Logs in every email of file $1 (four at a time), writing their tokens to
# file $2 in the same order.
login_all() {
    local dir="$SCRATCH/logins"
    rm -rf "$dir"
    mkdir -p "$dir"
    # shellcheck disable=SC2016 # $0..$2 are the inner shell's arguments
    nl -ba -w1 -s' ' "$1" | xargs -P 4 -n 2 sh -c '
        curl -sS --max-time 120 -o "$0/$1.json" -H "content-type: application/json" \
            -d "{\"email\":\"$2\",\"password\":\"'"$PASSWORD"'\"}" "'"$BASE"'/api/auth/login"
    ' "$dir" || true # a failed login shows below
    : >"$2"
    local n
    n=$(wc -l <"$1")
    for i in $(seq 1 "$n"); do
        jq -er .access_token "$dir/$i.json" >>"$2" 2>/dev/null ||
            die "login $i of $n failed: $(cat "$dir/$i.json" 2>/dev/null)"
    done
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# --- database and seed ------------------------------------------------------------------

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

say "creating the scratch database $DB"
psql "$PG_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\"" >/dev/null ||
    die "cannot create a database on $PG_URL"
DB_CREATED=1
PG_BASE="${PG_URL%%\?*}"
DB_URL="${PG_BASE%/*}/$DB${PG_URL#"$PG_BASE"}"
sql() { psql "$DB_URL" -qAtX -v ON_ERROR_STOP=1 "$@"; }

api_env "$DB_URL" "$SCRATCH/media"
api_migrate
start_api "$SCRATCH/api.log"

say "seeding $PLAYERS players and $VOTES votes"
TEMPLATE_EMAIL="plantilla@carga.test"
signup "$TEMPLATE_EMAIL"
SEED_START="$(now)"
timeout 600 psql "$DB_URL" -qX -v ON_ERROR_STOP=1 -v players="$PLAYERS" -v votes="$VOTES" \
    -v template_email="$TEMPLATE_EMAIL" -f "$HERE/seed.sql" >/dev/null
SEED_SECONDS="$(elapsed "$SEED_START" "$(now)")"

read -r USERS VIDEOS VOTES_STORED RANKED < <(sql -F' ' -c "SELECT
    (SELECT count(*) FROM users), (SELECT count(*) FROM videos WHERE published_at IS NOT NULL),
    (SELECT count(*) FROM votes), (SELECT count(*) FROM player_rankings)")
[[ "$USERS" == "$PLAYERS" && "$RANKED" == "$PLAYERS" ]] ||
    die "seeded $USERS users and $RANKED ranked players, expected $PLAYERS"
[[ "$VOTES_STORED" == "$VOTES" ]] || die "seeded $VOTES_STORED votes, expected $VOTES"
check_aggregate() {
    local mismatches
    mismatches=$(sql -f "$HERE/check.sql")
    [[ "$mismatches" == "0|0|0" ]] ||
        die "ranking aggregate disagrees with the votes $1 (videos|players|missing rows): $mismatches"
}
check_aggregate "after seeding"
# The API sees the seed: the top of the ranking and a city filter typed with
# an accent.
TOP_SQL=$(sql -c "SELECT max(votes) FROM player_rankings")
TOP_API=$(curl -fsS "$BASE/api/public/rankings?limit=1" | jq -e '.[0].votes') ||
    die "GET /api/public/rankings failed"
[[ "$TOP_SQL" == "$TOP_API" ]] || die "top of the ranking: $TOP_API votes from the API, $TOP_SQL in the database"
[[ $(curl -fsS "$BASE/api/public/rankings?city=Bogot%C3%A1&limit=100" | jq length || true) == 100 ]] ||
    die "the city filter finds too few players"
say "seeded in $SEED_SECONDS s: $USERS players, $VIDEOS published videos, $VOTES_STORED votes; aggregate consistent"

say "logging in $VOTERS players"
STEP=$((PLAYERS / VOTERS))
seq 1 "$STEP" "$PLAYERS" | head -n "$VOTERS" | sed 's/.*/jugador&@carga.test/' >"$SCRATCH/voters.txt"
LOGIN_START="$(now)"
login_all "$SCRATCH/voters.txt" "$SCRATCH/tokens.txt"
LOGIN_SECONDS="$(elapsed "$LOGIN_START" "$(now)")"
read -r LOGIN_PEAK _ < <(api_memory)
sql -c "SELECT id FROM videos WHERE published_at IS NOT NULL AND deleted_at IS NULL ORDER BY id" \
    >"$SCRATCH/videos.txt"

# --- wrk -----------------------------------------------------------------------------------

RESULTS=()
UPLOAD_RESULTS=()
# $1: label, $2: script, then VAR=value pairs for the script.
run_wrk() {
    local name="$1" script="$2"
    shift 2
    say "wrk: $name (${DURATION} s, $THREADS threads, $CONNECTIONS connections)"
    env ANB_LOAD_NAME="$name" ANB_LOAD_LUA_DIR="$HERE" ANB_LOAD_THREADS="$THREADS" "$@" \
        timeout $((DURATION + 60)) wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" \
        --timeout 10s --latency -s "$HERE/$script" "$BASE" >"$SCRATCH/wrk.txt" 2>&1 || {
        cat "$SCRATCH/wrk.txt" >&2
        die "wrk failed"
    }
    sed 's/^/    /' "$SCRATCH/wrk.txt" | grep -v '^    RESULT' >&2
    local result peak
    result=$(grep '^RESULT ' "$SCRATCH/wrk.txt") || die "wrk printed no result"
    read -r peak _ < <(api_memory)
    RESULTS+=("$result peak_mib=$peak")
}

RANKINGS_BASE_ENV=("${API_ENV[@]}")
for cache_ms in $RANKINGS_CACHE_MS; do
    stop_api
    API_ENV=("${RANKINGS_BASE_ENV[@]}" ANB_RANKINGS_CACHE_MS="$cache_ms")
    start_api "$SCRATCH/api-rankings-$cache_ms.log"
    run_wrk "rankings: page 1, cache ${cache_ms} ms" rankings.lua ANB_LOAD_RANKINGS=overall
    run_wrk "rankings: city p1-5, cache ${cache_ms} ms" rankings.lua ANB_LOAD_RANKINGS=city
    run_wrk "rankings: all pages, cache ${cache_ms} ms" rankings.lua ANB_LOAD_RANKINGS=pages \
        ANB_LOAD_PAGES=$(((PLAYERS + 49) / 50))
done
API_ENV=("${RANKINGS_BASE_ENV[@]}")
if [[ "$RANKINGS_ONLY" == 1 ]]; then
    UPLOADS=0
    EMBEDDED=0
else
    run_wrk "vote" vote.lua ANB_LOAD_TOKENS="$SCRATCH/tokens.txt" ANB_LOAD_VIDEOS="$SCRATCH/videos.txt"

    # Every accepted vote was stored. wrk stops with up to one request per
    # connection still in flight: the server may store those votes too, but wrk
    # never counts their answers.
    sleep 2
    VOTED=$(sed -n 's/.* s2xx=\([0-9]*\) .*/\1/p' <<<"${RESULTS[-1]}")
    VOTES_AFTER=$(sql -c "SELECT count(*) FROM votes")
    UNCOUNTED=$((VOTES_AFTER - VOTES - VOTED))
    ((UNCOUNTED >= 0 && UNCOUNTED <= CONNECTIONS)) ||
        die "$VOTED votes accepted, but the votes table grew from $VOTES to $VOTES_AFTER"
    check_aggregate "after the vote run"
    say "votes: $VOTED accepted and stored (and $UNCOUNTED in flight when wrk stopped); aggregate consistent"
fi

# --- uploads -------------------------------------------------------------------------------

if [[ "$RANKINGS_ONLY" != 1 && "$UPLOADS" -gt 0 ]]; then

VIDEO="$WORK/upload-1080p-near-100MiB.mp4"
if [[ ! -s "$VIDEO" ]] || (($(stat -c %s "$VIDEO") >= UPLOAD_LIMIT)); then
    say "generating the upload video (1920x1080, 30 fps, up to 58 s, just under 100 MiB)"
    # Temporal noise keeps the encoder at its bitrate cap; -fs ends the file
    # about 2 MiB before the limit (the index added at the end fits in that).
    timeout 600 ffmpeg -hide_banner -loglevel error -nostdin -y \
        -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=58,noise=alls=12:allf=t+u" \
        -pix_fmt yuv420p -c:v libx264 -preset ultrafast -b:v 24M -maxrate 24M -bufsize 24M \
        -fs $((UPLOAD_LIMIT - 2 * 1024 * 1024)) -movflags +faststart "$VIDEO.partial.mp4"
    mv "$VIDEO.partial.mp4" "$VIDEO"
fi
VIDEO_BYTES=$(stat -c %s "$VIDEO")
VIDEO_SECONDS=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$VIDEO")
((VIDEO_BYTES < UPLOAD_LIMIT)) || die "the upload video is $VIDEO_BYTES bytes, over the limit"
((VIDEO_BYTES > UPLOAD_LIMIT * 9 / 10)) || die "the upload video is only $VIDEO_BYTES bytes"
VIDEO_MIB=$(awk -v b="$VIDEO_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')

# Sends $UPLOADS uploads at once, one per token of file $2, to the running
# API; $1: label, $3: its storage directory.
measure_uploads() {
    local label="$1" tokens="$2" media="$3"
    local before_peak before_rss after_peak after_rss start seconds accepted=0
    read -r before_peak before_rss < <(api_memory)
    say "uploads ($label): $UPLOADS at once, $VIDEO_MIB MiB each"
    start="$(now)"
    UPLOAD_PIDS=()
    for i in $(seq 1 "$UPLOADS"); do
        curl -sS --max-time 900 -o "$SCRATCH/upload-$i.json" -w '%{http_code}' \
            -H "Authorization: Bearer $(sed -n "${i}p" "$tokens")" -H 'Expect:' \
            -F "video_file=@$VIDEO;type=video/mp4" -F "title=Carga concurrente $i" \
            "$BASE/api/videos/upload" >"$SCRATCH/upload-$i.status" &
        UPLOAD_PIDS+=($!)
    done
    for pid in "${UPLOAD_PIDS[@]}"; do
        wait "$pid" || true
    done
    UPLOAD_PIDS=()
    seconds="$(elapsed "$start" "$(now)")"
    read -r after_peak after_rss < <(api_memory)
    for i in $(seq 1 "$UPLOADS"); do
        if [[ "$(cat "$SCRATCH/upload-$i.status")" == 201 ]]; then
            accepted=$((accepted + 1))
        else
            echo "upload $i: $(cat "$SCRATCH/upload-$i.status") $(cat "$SCRATCH/upload-$i.json" 2>/dev/null)" >&2
        fi
    done
    ((accepted == UPLOADS)) || die "$accepted of $UPLOADS uploads accepted ($label)"
    # Each uploader now has one video waiting for processing, stored whole.
    local rows=0 stored
    while read -r token; do
        rows=$((rows + $(curl -fsS --max-time 30 -H "Authorization: Bearer $token" "$BASE/api/videos" |
            jq '[.[] | select(.status == "uploaded")] | length')))
    done <"$tokens"
    stored=$(find "$media" -name original.mp4 -size "${VIDEO_BYTES}c" | wc -l)
    ((rows == UPLOADS && stored == UPLOADS)) ||
        die "$rows new video rows and $stored stored originals, expected $UPLOADS ($label)"
    UPLOAD_RESULTS+=("$label|$before_peak|$before_rss|$after_peak|$after_rss|$seconds")
}

# A fresh process, so its peak is the uploads' alone.
stop_api
start_api "$SCRATCH/api-uploads.log"
head -n "$UPLOADS" "$SCRATCH/tokens.txt" >"$SCRATCH/uploaders.txt"
measure_uploads "PostgreSQL, local storage" "$SCRATCH/uploaders.txt" "$SCRATCH/media"
stop_api
rm -rf "${SCRATCH:?}/media"

if [[ "$EMBEDDED" == 1 ]]; then
    mkdir -p "$SCRATCH/embedded"
    SQLITE="$SCRATCH/embedded/anb.db"
    api_env "sqlite://$SQLITE" "$SCRATCH/embedded/media"
    api_migrate
    start_api "$SCRATCH/api-embedded.log"
    for i in $(seq 1 "$UPLOADS"); do
        signup "subida$i@carga.test"
        echo "subida$i@carga.test"
    done >"$SCRATCH/embedded-users.txt"
    login_all "$SCRATCH/embedded-users.txt" "$SCRATCH/embedded-tokens.txt"
    stop_api
    start_api "$SCRATCH/api-embedded-uploads.log"
    measure_uploads "embedded default (SQLite, local storage)" "$SCRATCH/embedded-tokens.txt" \
        "$SCRATCH/embedded/media"
    stop_api
fi

fi

# --- report ----------------------------------------------------------------------------------

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
echo
echo "ANB API load benchmark on 127.0.0.1 ($(nproc) cores; load average $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end)"
echo "seed: $PLAYERS players, $VIDEOS published videos, $VOTES votes in $SEED_SECONDS s"
echo "logins: $VOTERS, four at a time, in $LOGIN_SECONDS s; API peak memory (VmHWM) after them: $LOGIN_PEAK MiB"
echo "wrk: $THREADS threads, $CONNECTIONS connections, $DURATION s a run; RUST_LOG=$LOG_FILTER"
echo
printf '%-36s %9s %8s %8s %8s %8s %8s %6s %6s %9s\n' run req/s p50_ms p95_ms p99_ms 2xx 4xx 5xx errors peak_MiB
for result in "${RESULTS[@]}"; do
    name=$(sed -n 's/^RESULT name=\(.*\) requests=.*/\1/p' <<<"$result")
    printf '%-36s %9s %8s %8s %8s %8s %8s %6s %6s %9s\n' "$name" \
        "$(field rps "$result")" "$(field p50_ms "$result")" "$(field p95_ms "$result")" \
        "$(field p99_ms "$result")" "$(field s2xx "$result")" "$(field s4xx "$result")" \
        "$(field s5xx "$result")" "$(field socket_errors "$result")" "$(field peak_mib "$result")"
done
echo "(vote 4xx: the seed had already cast that vote, or the video is the voter's own;"
echo " peak_MiB: the API's VmHWM since it started, read after the run)"
if ((${#UPLOAD_RESULTS[@]})); then
    echo
    echo "$UPLOADS concurrent uploads of $VIDEO_MIB MiB ($VIDEO_BYTES bytes, ${VIDEO_SECONDS%%.*} s, 1920x1080), all accepted:"
    printf '%-42s %12s %12s %12s %10s\n' setup "peak before" "peak after" "RSS after" "elapsed"
    for result in "${UPLOAD_RESULTS[@]}"; do
        IFS='|' read -r label before_peak _ after_peak after_rss seconds <<<"$result"
        printf '%-42s %8s MiB %8s MiB %8s MiB %8s s\n' "$label" "$before_peak" "$after_peak" "$after_rss" "$seconds"
    done
fi
