#!/usr/bin/env bash
# Builds the release artifact, uploads it under a key of its own, and creates or updates the CloudFormation stack.
#   infra/deploy.sh [--dry-run] [--academy] [--images] STACK_NAME ARTIFACT_BUCKET [CERTIFICATE_ARN] [ALARM_EMAIL]
#     --dry-run  print every command it would run (builds, uploads, stack changes) and run none of them
#     --academy  AWS Academy accounts: no IAM role is created, every instance uses LabInstanceProfile
#     --images   first build the instance images (the STACK_NAME-images stack, infra/image/image.yaml)
# Image ids come from ANB_API_IMAGE / ANB_WORKER_IMAGE, or else from the outputs of the STACK_NAME-images stack.
# The build id (ANB_BUILD_ID, default the UTC time) makes every build's key unique: a rebuild of the same commit
# never overwrites an artifact, and always rolls out. Build on Debian 12 (or with infra/Containerfile,
# ANB_BUILD=container) so the binaries link against the FFmpeg libraries of the worker image.
# Needs the AWS CLI with credentials for the target account (not for --dry-run).
set -euo pipefail
dry_run=0 academy=0 images=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --academy) academy=1 ;;
    --images) images=1 ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; exit 64 ;;
    *) break ;;
  esac
  shift
done
stack=${1:?stack name} bucket=${2:?artifact bucket} cert=${3:-} email=${4:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Runs a command, or in a dry run prints it (quoted as a shell would need it).
run() {
  if [ "$dry_run" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
# Prints a command's output; in a dry run prints the command and echoes a placeholder for its output.
query() {
  local placeholder=$1
  shift
  if [ "$dry_run" = 1 ]; then
    run "$@" >&2
    echo "$placeholder"
  else
    "$@"
  fi
}
say() { printf '==> %s\n' "$*" >&2; }

sha=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  [ "$dry_run" = 1 ] || { echo "uncommitted changes: commit them first, the artifact is named by its commit" >&2; exit 1; }
  say "warning: uncommitted changes (a real run refuses them)"
fi
build_id=${ANB_BUILD_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
artifact_name=anb-$version-x86_64-linux.tar.gz
prefix=$sha/$build_id
key=releases/$prefix/$artifact_name
profile=()
[ "$academy" = 1 ] && profile=(InstanceProfileName=LabInstanceProfile)

say "building $artifact_name at $sha"
if [ "${ANB_BUILD:-local}" = container ]; then
  run docker build -f infra/Containerfile --target artifact -o type=local,dest=dist .
else
  run cargo build --release --locked -p anb-api -p anb-worker -p anb
  run infra/package.sh target/release dist
fi

say "uploading s3://$bucket/$key"
# --if-none-match: S3 refuses to overwrite an existing key.
run aws s3api put-object --bucket "$bucket" --key "$key" --body "dist/$artifact_name" --if-none-match '*'

if [ "$images" = 1 ]; then
  say "building the instance images (stack $stack-images)"
  run aws s3api put-object --bucket "$bucket" --key "images/$prefix/provision.sh" --body infra/image/provision.sh \
    --if-none-match '*'
  run aws cloudformation deploy --stack-name "$stack-images" --template-file infra/image/image.yaml \
    --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset \
    --parameter-overrides EnvironmentName="$stack" ArtifactBucket="$bucket" ProvisionKey="images/$prefix/provision.sh" \
    ImageVersion="1.$(date -u +%Y%m%d).$((10#$(date -u +%H%M%S)))" "${profile[@]}"
fi
image_output() {
  query "<$1 of stack $stack-images>" aws cloudformation describe-stacks --stack-name "$stack-images" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
api_image=${ANB_API_IMAGE:-$(image_output ApiImageId)}
worker_image=${ANB_WORKER_IMAGE:-$(image_output WorkerImageId)}

say "deploying stack $stack: migration step, then rolling updates of the API and the workers"
run aws cloudformation deploy --stack-name "$stack" --template-file infra/cloudformation/anb.yaml \
  --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset \
  --parameter-overrides EnvironmentName="$stack" ArtifactBucket="$bucket" ArtifactKey="$key" \
  ApiImageId="$api_image" WorkerImageId="$worker_image" CertificateArn="$cert" AlarmEmail="$email" "${profile[@]}"
run aws cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].Outputs' --output table
