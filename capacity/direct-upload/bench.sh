#!/usr/bin/env bash
# Times one upload of FILE (an MP4 within the upload limits) through the API (multipart) and direct (announce,
# PUT to the bucket, complete), each against a fresh anb-api process on SQLite and the S3-compatible server at
# ANB_TEST_AWS_ENDPOINT, and prints the API process's peak RSS (VmHWM) after each. Usage: bench.sh ANB_API_BINARY FILE
set -euo pipefail
BIN=${1:?anb-api binary}
FILE=${2:?mp4 file}
: "${ANB_TEST_AWS_ENDPOINT:=http://127.0.0.1:4566}" "${AWS_ACCESS_KEY_ID:=test}" "${AWS_SECRET_ACCESS_KEY:=test}"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export AWS_ENDPOINT_URL=$ANB_TEST_AWS_ENDPOINT AWS_REGION=us-east-1
BUCKET=anb-bench-$RANDOM$RANDOM
"${ANB_VENV:-$(cd "$(dirname "$0")/../.." && pwd)/.venv}/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL', region_name='us-east-1').create_bucket(Bucket='$BUCKET')"
W=$(mktemp -d)
export ANB_DATABASE_URL="sqlite://$W/anb.db" ANB_STORAGE_URL="s3://$BUCKET" ANB_S3_PATH_STYLE=true \
  ANB_JWT_SECRET=bench-secret-of-more-than-32-bytes-long ANB_HTTP_ADDR=127.0.0.1:18080 \
  ANB_UPLOAD_RATE_PER_USER=off ANB_UPLOAD_QUOTA_BYTES=off ANB_UPLOAD_QUOTA_VIDEOS=off ANB_UPLOAD_SWEEP_INTERVAL=0 RUST_LOG=warn
"$BIN" migrate >/dev/null
B=http://127.0.0.1:18080
start() { "$BIN" > "$W/api.log" 2>&1 & PID=$!; for _ in $(seq 50); do curl -sf $B/health >/dev/null && return; sleep 0.2; done; echo "no start"; exit 1; }
rss() { awk '/VmHWM|VmRSS/ {printf "%s %s kB  ", $1, $2}' /proc/$PID/status; echo; }
start
curl -sf -X POST $B/api/auth/signup -H 'content-type: application/json' -d '{"first_name":"Ana","last_name":"Gomez","email":"bench@example.com","password1":"a-long-password","password2":"a-long-password","city":"Bogota","country":"Colombia"}' >/dev/null
TOKEN=$(curl -sf -X POST $B/api/auth/login -H 'content-type: application/json' -d '{"email":"bench@example.com","password":"a-long-password"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["access_token"])')
SIZE=$(stat -c %s "$FILE")
echo "file: $SIZE bytes"
echo -n "idle API: "; rss
T=$(curl -s -o "$W/m.json" -w '%{time_total}' -H "authorization: Bearer $TOKEN" -F "video_file=@$FILE;type=video/mp4" -F title=Multipart $B/api/videos/upload)
echo "multipart through the API: ${T}s  $(head -c 120 "$W/m.json")"
echo -n "API after multipart: "; rss
kill $PID; wait $PID || true
start
echo -n "idle API (restarted): "; rss
t0=$(date +%s.%N)
curl -sf -X POST $B/api/videos/uploads -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "{\"title\":\"Directo\",\"size_bytes\":$SIZE}" > "$W/c.json"
URL=$(python3 -c 'import sys,json; print(json.load(open(sys.argv[1]))["url"])' "$W/c.json")
DONE=$(python3 -c 'import sys,json; print(json.load(open(sys.argv[1]))["complete_url"])' "$W/c.json")
t1=$(date +%s.%N)
curl -sf -o /dev/null -X PUT -H 'content-type: video/mp4' -T "$FILE" "$URL"
t2=$(date +%s.%N)
curl -s -o "$W/d.json" -X POST -H "authorization: Bearer $TOKEN" "$B$DONE"
t3=$(date +%s.%N)
python3 -c "print(f'direct: create {$t1-$t0:.3f}s, PUT to the bucket {$t2-$t1:.3f}s, complete {$t3-$t2:.3f}s, total {$t3-$t0:.3f}s')"
echo "  $(head -c 120 "$W/d.json")"
echo -n "API after direct: "; rss
kill $PID; wait $PID || true
