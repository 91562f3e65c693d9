#!/usr/bin/env bash
# Runs once at instance boot from the launch template's user data, inside the unpacked release artifact
# (/opt/anb). Installs the runtime libraries, reads the secrets from Secrets Manager into a root-only
# environment file, and starts the tier's systemd unit. Nothing is compiled here.
#   boot.sh api|worker REGION JWT_SECRET_ARN DB_SECRET_ARN DB_HOST DB_PORT BUCKET QUEUE_NAME
set -euo pipefail
tier=$1 region=$2 jwt_arn=$3 db_arn=$4 db_host=$5 db_port=$6 bucket=$7 queue=$8
here=$(cd "$(dirname "$0")" && pwd)

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq libavcodec59 libavformat59 libavfilter8 libavdevice59 libswscale6 libswresample4 libavutil57 \
  libx264-164 ca-certificates >/dev/null

secret() { aws secretsmanager get-secret-value --region "$region" --secret-id "$1" --query SecretString --output text; }
jwt=$(secret "$jwt_arn")
db_json=$(secret "$db_arn")
db_user=$(jq -r .username <<<"$db_json")
db_pass=$(jq -r '.password | @uri' <<<"$db_json")

id -u anb >/dev/null 2>&1 || useradd --system --home /var/lib/anb --create-home anb
install -d -m 0750 /etc/anb
umask 077
cat > /etc/anb/env <<ENV
ANB_DATABASE_URL=postgres://${db_user}:${db_pass}@${db_host}:${db_port}/anb?sslmode=require
ANB_QUEUE_URL=sqs://${queue}
ANB_STORAGE_URL=s3://${bucket}
ANB_JWT_SECRET=${jwt}
ANB_HTTP_ADDR=0.0.0.0:8080
ANB_TRUSTED_PROXIES=10.40.0.0/16
AWS_REGION=${region}
RUST_LOG=info
ENV
chown root:anb /etc/anb/env
chmod 0640 /etc/anb/env

install -m 0755 "$here"/bin/anb-api "$here"/bin/anb-worker /usr/local/bin/
install -m 0644 "$here"/systemd/anb-"$tier".service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now anb-"$tier".service
