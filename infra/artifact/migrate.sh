#!/usr/bin/env bash
# The one-shot migration step of a deployment, the same on AWS (the migration instance) and in the compose file:
# applies the migrations as the database owner, then creates or updates the application's own database user with
# only the rights the services need. Run once per deployment, before any new API or worker starts.
#   ANB_MIGRATE_DATABASE_URL  postgres:// URL of the owner (the RDS master user)
#   ANB_APP_DB_USER, ANB_APP_DB_PASSWORD  the application's user, as the services' ANB_DATABASE_URL names it
#   plus what anb-api needs to start (ANB_QUEUE_URL, ANB_STORAGE_URL, ANB_JWT_SECRET, AWS_*)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${ANB_MIGRATE_DATABASE_URL:?owner database URL}" "${ANB_APP_DB_USER:?}" "${ANB_APP_DB_PASSWORD:?}"
api=${ANB_API_BIN:-anb-api}

echo "applying the migrations" >&2
ANB_DATABASE_URL=$ANB_MIGRATE_DATABASE_URL "$api" migrate
echo "setting up the database user $ANB_APP_DB_USER" >&2
psql "$ANB_MIGRATE_DATABASE_URL" --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
  -v app_user="$ANB_APP_DB_USER" -v app_password="$ANB_APP_DB_PASSWORD" -f "$here/app-user.sql"
echo "migration step done" >&2
