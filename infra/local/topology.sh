#!/usr/bin/env bash
# The compose topology without containers, for one journey: two anb-api behind a round-robin proxy (proxy.py,
# which sets X-Forwarded-For as the load balancer does), two anb-worker, PostgreSQL and the S3/SQS stand-in, all
# configured as infra/compose.yaml configures them, on a fresh database, bucket and queues of the local test
# services. The migration step (infra/artifact/migrate.sh) runs first; the services connect as the application
# user it creates. Then a player signs up, logs in and uploads a 1080p clip through the proxy, and the clip must
# come back processed (1280x720) within 10 minutes.
#   infra/local/topology.sh [BINARY_DIR]     (default target/debug: cargo build -p anb-api -p anb-worker)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${1:-$root/target/debug}")
python=${ANB_VENV:-$root/.venv}/bin/python
admin=${ANB_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export AWS_ENDPOINT_URL=${ANB_TEST_AWS_ENDPOINT:-http://127.0.0.1:4566}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_DEFAULT_REGION=$AWS_REGION  # boto3 reads this one
tag=topology$$
db=anb_$tag app=anb_app_$tag
scratch=$(mktemp -d)
pids=()

say() { printf '==> %s\n' "$*" >&2; }
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
aws_py() { "$python" -c "import boto3, sys; $1" "${@:2}"; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$admin" -qX -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP ROLE IF EXISTS $app" >/dev/null 2>&1 || true
  aws_py 'sqs = boto3.client("sqs")
for name in sys.argv[1:]:
    try: sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except Exception: pass' "anb-$tag" "anb-$tag-dlq" || true
  rm -rf "$scratch"
}
trap cleanup EXIT
fail() {
  echo "topology: $*" >&2
  for log in "$scratch"/*.log; do echo "--- $log" >&2; tail -n 15 "$log" >&2; done
  exit 1
}

say "fresh database, bucket and queues (as the stack creates them)"
psql "$admin" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null
owner_url="${admin%/*}/$db"
server=${admin#*@}
server=${server%%/*}
aws_py 'import json
name = sys.argv[1]
boto3.client("s3").create_bucket(Bucket=name)
sqs = boto3.client("sqs")
dlq = sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "120", "ReceiveMessageWaitTimeSeconds": "20",
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 5})})' "anb-$tag"

# The variables of infra/compose.yaml, with local endpoints.
export ANB_QUEUE_URL=sqs://anb-$tag ANB_STORAGE_URL=s3://anb-$tag ANB_S3_PATH_STYLE=true
export ANB_JWT_SECRET=topology-only-jwt-secret-0123456789abcdef RUST_LOG=${RUST_LOG:-info}
export ANB_TRUSTED_PROXIES=127.0.0.1/32 ANB_WORKER_SHUTDOWN_GRACE=90 ANB_X264_PRESET=ultrafast

say "migration step"
ANB_API_BIN=$bin/anb-api ANB_MIGRATE_DATABASE_URL=$owner_url ANB_APP_DB_USER=$app ANB_APP_DB_PASSWORD=app-password \
  "$root/infra/artifact/migrate.sh" >"$scratch/migrate.log" 2>&1 || fail "the migration step failed"
export ANB_DATABASE_URL="postgres://$app:app-password@$server/$db"

say "two anb-api, the proxy, two anb-worker"
api_ports=()
for n in 1 2; do
  port=$(free_port)
  api_ports+=("$port")
  ANB_HTTP_ADDR=127.0.0.1:$port "$bin/anb-api" >"$scratch/api-$n.log" 2>&1 &
  pids+=($!)
done
for n in 1 2; do
  ANB_WORKER_METRICS_ADDR=127.0.0.1:$(free_port) "$bin/anb-worker" >"$scratch/worker-$n.log" 2>&1 &
  pids+=($!)
done
proxy_port=$(free_port)
"$python" "$root/infra/local/proxy.py" "$proxy_port" "${api_ports[@]}" >"$scratch/proxy.log" 2>&1 &
pids+=($!)
base=http://127.0.0.1:$proxy_port
for port in "${api_ports[@]}"; do
  for _ in $(seq 1 120); do curl -fs -o /dev/null "http://127.0.0.1:$port/ready" && break; sleep 0.5; done
  curl -fs -o /dev/null "http://127.0.0.1:$port/ready" || fail "anb-api on :$port never became ready"
done

say "journey through the proxy: sign-up, log-in, upload, processed"
email=player-$tag@example.org
curl -fsS -o /dev/null -H 'content-type: application/json' "$base/api/auth/signup" -d "{\"first_name\":\"Valentina\",
  \"last_name\":\"Ríos\",\"email\":\"$email\",\"password1\":\"a long password\",\"password2\":\"a long password\",
  \"city\":\"Cali\",\"country\":\"Colombia\"}" || fail "sign-up failed"
token=$(curl -fsS -H 'content-type: application/json' "$base/api/auth/login" \
  -d "{\"email\":\"$email\",\"password\":\"a long password\"}" | jq -r .access_token) || fail "log-in failed"
ffmpeg -hide_banner -loglevel error -nostdin -y -f lavfi -i testsrc2=size=1920x1080:rate=30:duration=21 \
  -pix_fmt yuv420p -c:v libx264 -preset ultrafast -crf 40 "$scratch/clip.mp4"
curl -fsS -o /dev/null -H "authorization: Bearer $token" -F title=Topology -F "video_file=@$scratch/clip.mp4;type=video/mp4" \
  "$base/api/videos/upload" || fail "upload failed"
video_id=$(curl -fsS -H "authorization: Bearer $token" "$base/api/videos" | jq -r '.[0].video_id')
for _ in $(seq 1 600); do
  video=$(curl -fsS -H "authorization: Bearer $token" "$base/api/videos/$video_id")
  status=$(jq -r .status <<<"$video")
  [ "$status" = processed ] || [ "$status" = failed ] && break
  sleep 1
done
[ "$status" = processed ] || fail "the upload ended $status: $video"
curl -fsS -o "$scratch/processed.mp4" "$(jq -r .processed_url <<<"$video")" || fail "the processed video is not served"
size=$(ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=p=0 "$scratch/processed.mp4")
[ "$size" = 1280,720 ] || fail "the processed video is $size, not 1280,720"
served_by=$(grep -l 'api/' "$scratch"/api-*.log | wc -l)
say "processed as $size through the proxy ($served_by of 2 API logs mention requests); the workers' logs:"
grep -h -i -m2 'video\|job' "$scratch"/worker-*.log >&2 || true
