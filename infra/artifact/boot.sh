#!/usr/bin/env bash
# Runs once at instance boot, from the launch template's user data, inside the unpacked release artifact
# (/opt/anb). The image (infra/image) already holds every package the tier needs: nothing is installed from a
# package mirror and nothing is compiled. Installs this release, starts the tier's units and the CloudWatch agent,
# and signals CloudFormation SUCCESS once the tier is healthy (FAILURE on any error): creations and rolling updates
# wait for that signal. Settings come from /etc/anb/stack.env; secrets are read later, by the units themselves.
# -E: the ERR trap below also fires for failures inside functions.
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. /etc/anb/stack.env
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
trap 'log "boot failed"; signal FAILURE || true' ERR

# How long a unit has been active since it last (re)started; 0 when it is not active.
seconds_active() {
  local since now
  [ "$(systemctl show -P ActiveState "$1")" = active ] || { echo 0; return; }
  since=$(systemctl show -P ActiveEnterTimestampMonotonic "$1")
  now=$(awk '{ printf "%d", $1 * 1000000 }' /proc/uptime)
  echo $(((now - since) / 1000000))
}

case "$ANB_TIER" in
  api | migration) binaries=(anb-api) ;;
  worker) binaries=(anb-worker) ;;
  *) log "unknown tier $ANB_TIER"; false ;;
esac
for binary in "${binaries[@]}"; do
  install -m 0755 "$here/bin/$binary" /usr/local/bin/
  # A release built against other shared libraries than the image's fails here, with the library named.
  if ldd "/usr/local/bin/$binary" | grep 'not found'; then
    log "$binary needs libraries the image lacks"
    false
  fi
done
install -d -m 0755 /usr/local/lib/anb
install -m 0755 "$here"/lib/anb-* "$here/migrate.sh" /usr/local/lib/anb/
install -m 0644 "$here/lib/common.sh" "$here/app-user.sql" /usr/local/lib/anb/

# What the services read besides their secrets: the variables of the platform's configuration, nothing else.
install -m 0644 /dev/null /etc/anb/anb.env
{
  echo "ANB_QUEUE_URL=$ANB_QUEUE_URL"
  echo "ANB_STORAGE_URL=$ANB_STORAGE_URL"
  echo "ANB_HTTP_ADDR=0.0.0.0:8080"
  # Only the load balancer's subnets may tell the API a client's address.
  echo "ANB_TRUSTED_PROXIES=$ANB_TRUSTED_PROXIES"
  echo "AWS_REGION=$AWS_REGION"
  echo "RUST_LOG=info"
  if [ "$ANB_TIER" = worker ]; then
    echo "ANB_WORKER_SHUTDOWN_GRACE=$ANB_WORKER_SHUTDOWN_GRACE"
    echo "ANB_WORKER_METRICS_ADDR=127.0.0.1:9102"
  fi
} >/etc/anb/anb.env

# Logs and the Prometheus metrics to CloudWatch.
cw=/opt/aws/amazon-cloudwatch-agent/etc
agent=$(sed -e "s/@ENVIRONMENT@/$ANB_ENVIRONMENT/g" -e "s/@TIER@/$ANB_TIER/g" "$here/cloudwatch/agent.json")
case "$ANB_TIER" in
  api | worker) install -m 0644 "$here/cloudwatch/prometheus-$ANB_TIER.yaml" "$cw/anb-prometheus.yaml" ;;
  # The migration instance serves no metrics: only its log is shipped.
  migration) agent=$(jq 'del(.logs.logs_collected.prometheus)' <<<"$agent") ;;
esac
printf '%s\n' "$agent" >"$cw/anb-agent.json"
amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "file:$cw/anb-agent.json"

install -m 0644 "$here"/systemd/*.service "$here"/systemd/*.timer /etc/systemd/system/
systemctl daemon-reload

case "$ANB_TIER" in
  api)
    systemctl enable --now anb-api.service anb-secrets-refresh.timer
    # Healthy means ready: the database (as the application's user), the queue and the storage answered.
    for _ in $(seq 1 120); do
      curl -fsS --max-time 5 -o /dev/null http://127.0.0.1:8080/ready && break
      sleep 5
    done
    curl -fsS --max-time 5 -o /dev/null http://127.0.0.1:8080/ready
    systemctl enable --now anb-liveness.timer
    signal SUCCESS
    ;;
  worker)
    systemctl enable --now anb-worker.service anb-drain.service anb-secrets-refresh.timer
    # Healthy means it connected and kept running: 30 s in a row without a restart.
    for _ in $(seq 1 120); do
      [ "$(seconds_active anb-worker.service)" -ge 30 ] && break
      sleep 5
    done
    [ "$(seconds_active anb-worker.service)" -ge 30 ]
    signal SUCCESS
    ;;
  migration)
    /usr/local/lib/anb/anb-migrate 2>&1 | tee -a /var/log/anb/migration.log
    signal SUCCESS
    # Give the agent time to ship the log, then empty this group: the step runs once per deployment.
    sleep 30
    aws autoscaling update-auto-scaling-group --region "$AWS_REGION" --auto-scaling-group-name "$(group_name)" \
      --min-size 0 --desired-capacity 0
    ;;
esac
