#!/usr/bin/env bash
# Builds the runtime of one tier into an image (run by EC2 Image Builder, see image.yaml, on Debian 12):
#   provision.sh api|worker
# Instances then boot with every package in place: no package mirror at boot, no apt run racing the boot.
#   api     the AWS CLI, jq, curl, the PostgreSQL client (the migration step runs on this image too), the
#           CloudWatch agent and the RDS certificate authorities; no FFmpeg
#   worker  the same without the PostgreSQL client, plus the FFmpeg 5.1 runtime libraries the worker links
#           against, without their recommended packages
set -euo pipefail
tier=${1:?api or worker}
export DEBIAN_FRONTEND=noninteractive

common=(ca-certificates curl jq awscli)
case "$tier" in
  api) packages=("${common[@]}" postgresql-client) ;;
  worker)
    packages=("${common[@]}" libavcodec59 libavformat59 libavfilter8 libavdevice59 libswscale6 libswresample4
      libavutil57 libx264-164)
    ;;
  *) echo "unknown tier $tier" >&2; exit 64 ;;
esac

# Boot must never wait for (or fail on) the dpkg lock: no periodic apt runs and no unattended upgrades on the
# instances. Security updates arrive with the next image, which the pipeline rebuilds weekly.
systemctl disable --now apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
systemctl mask apt-daily.service apt-daily-upgrade.service apt-daily.timer apt-daily-upgrade.timer
# A run already started before the timers were stopped holds the lock: wait for it rather than fail.
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq)

"${apt[@]}" update
"${apt[@]}" upgrade
"${apt[@]}" install --no-install-recommends "${packages[@]}"
"${apt[@]}" purge unattended-upgrades 2>/dev/null || true
# cloud-init must not update or install packages at first boot either.
cat >/etc/cloud/cloud.cfg.d/90-anb-no-packages.cfg <<'CFG'
package_update: false
package_upgrade: false
package_reboot_if_required: false
CFG

# The CloudWatch agent (logs and the Prometheus scrape), from AWS's own package.
curl -fsSL -o /tmp/amazon-cloudwatch-agent.deb \
  https://amazoncloudwatch-agent.s3.amazonaws.com/debian/amd64/latest/amazon-cloudwatch-agent.deb
dpkg -i /tmp/amazon-cloudwatch-agent.deb
rm /tmp/amazon-cloudwatch-agent.deb

# The services connect to RDS with sslmode=verify-full against these authorities.
install -d -m 0755 /etc/anb
curl -fsSL -o /etc/anb/rds-ca.pem https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
chmod 0644 /etc/anb/rds-ca.pem

# The services' user and log directory (the units append their output there, the agent ships it).
id -u anb >/dev/null 2>&1 || useradd --system --home-dir /var/lib/anb --no-create-home --shell /usr/sbin/nologin anb
install -d -m 0750 -o root -g adm /var/log/anb
cat >/etc/logrotate.d/anb <<'ROTATE'
/var/log/anb/*.log {
  daily
  rotate 7
  compress
  delaycompress
  missingok
  notifempty
  copytruncate
}
ROTATE

"${apt[@]}" clean
rm -rf /var/lib/apt/lists/*
