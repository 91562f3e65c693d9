#!/usr/bin/env bash
# Builds the release artifact, uploads it, and creates or updates the CloudFormation stack.
#   infra/deploy.sh STACK_NAME ARTIFACT_BUCKET [CERTIFICATE_ARN] [ALARM_EMAIL]
# Needs the AWS CLI with credentials for the target account. Build on Debian 12 (or with infra/Containerfile,
# ANB_BUILD=container) so the binaries link against the FFmpeg libraries the instances install.
set -euo pipefail
stack=${1:?stack name} bucket=${2:?artifact bucket} cert=${3:-} email=${4:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${ANB_BUILD:-local}" = container ]; then
  docker build -f infra/Containerfile -o type=local,dest=dist .
else
  cargo build --release --locked -p anb-api -p anb-worker -p anb
  infra/package.sh target/release dist >/dev/null
fi
artifact=$(ls -t dist/anb-*-x86_64-linux.tar.gz | head -n 1)
key="releases/$(basename "$artifact" .tar.gz)-$(git rev-parse --short HEAD).tar.gz"
aws s3 cp "$artifact" "s3://$bucket/$key"

aws cloudformation deploy \
  --stack-name "$stack" \
  --template-file infra/cloudformation/anb.yaml \
  --capabilities CAPABILITY_IAM \
  --parameter-overrides EnvironmentName="$stack" ArtifactBucket="$bucket" ArtifactKey="$key" \
      CertificateArn="$cert" AlarmEmail="$email"
aws cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].Outputs' --output table
