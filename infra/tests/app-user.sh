#!/usr/bin/env bash
# The deployment's database user, end to end on the local PostgreSQL: the migration step (infra/artifact/migrate.sh)
# runs as an owner without superuser rights, like RDS's master user; then anb-api runs as the application user it
# created, becomes ready (which includes the outbox set-up it runs at every start), and a sign-up writes through
# it; the user cannot drop the application's tables; a second deployment's migration step and start succeed too.
#   infra/tests/app-user.sh [ANB_API_BINARY]     (default target/debug/anb-api)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
api=$(realpath "${1:-$root/target/debug/anb-api}")
admin=${ANB_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
server=${admin#*@}
server=${server%%/*}
tag=$$
db=anb_app_user_check_$tag owner=anb_owner_$tag app=anb_app_$tag
scratch=$(mktemp -d)
api_pid=

cleanup() {
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
  psql "$admin" -qX -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP ROLE IF EXISTS $app" \
    -c "DROP ROLE IF EXISTS $owner" >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT
fail() { echo "app-user check: $*" >&2; [ -f "$scratch/api.log" ] && tail -n 20 "$scratch/api.log" >&2; exit 1; }

psql "$admin" -qX -v ON_ERROR_STOP=1 -c "CREATE ROLE $owner LOGIN PASSWORD 'owner-password' CREATEROLE CREATEDB" \
  -c "CREATE DATABASE $db OWNER $owner" >/dev/null
owner_url="postgres://$owner:owner-password@$server/$db"
app_url="postgres://$app:app-password@$server/$db"
export ANB_QUEUE_URL=redis://127.0.0.1:6379/15 ANB_STORAGE_URL=$scratch/media
export ANB_JWT_SECRET=app-user-check-secret-0123456789abcdef

migrate() {
  ANB_API_BIN=$api ANB_MIGRATE_DATABASE_URL=$owner_url ANB_APP_DB_USER=$app ANB_APP_DB_PASSWORD=app-password \
    "$root/infra/artifact/migrate.sh" >>"$scratch/migrate.log" 2>&1 || { cat "$scratch/migrate.log" >&2; fail "migrate.sh failed"; }
}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_api() {
  ANB_DATABASE_URL=$app_url ANB_HTTP_ADDR=127.0.0.1:$port "$api" >>"$scratch/api.log" 2>&1 &
  api_pid=$!
  for _ in $(seq 1 120); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/ready" && return 0
    kill -0 "$api_pid" 2>/dev/null || fail "anb-api exited as the application user"
    sleep 0.5
  done
  fail "anb-api never became ready as the application user"
}
stop_api() { kill "$api_pid"; wait "$api_pid" || true; api_pid=; }

migrate
start_api
status=$(curl -sS -o "$scratch/signup.json" -w '%{http_code}' -H 'content-type: application/json' \
  -d '{"first_name":"Ana","last_name":"Gómez","email":"ana@example.org","password1":"correct horse 1","password2":"correct horse 1","city":"Bogotá","country":"Colombia"}' \
  "http://127.0.0.1:$port/api/auth/signup")
[ "$status" = 201 ] || fail "sign-up as the application user answered $status: $(cat "$scratch/signup.json")"
if psql "$app_url" -qX -c 'DROP TABLE votes' >/dev/null 2>&1; then fail "the application user could drop a table"; fi
if psql "$app_url" -qX -c 'ALTER TABLE users ADD COLUMN x int' >/dev/null 2>&1; then fail "the application user could alter a table"; fi
stop_api

# The next deployment: the owner migrates again (re-running the outbox set-up on objects the user owns), the
# password from the secret is applied again, and the API starts again as the user.
migrate
start_api
stop_api
echo "app-user check: migrated as a non-superuser owner; anb-api ready and writing as $app, which cannot alter the schema"
