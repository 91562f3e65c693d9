# shellcheck shell=bash
# Shared by the instance scripts: instance metadata, CloudFormation signals, the instance's group. Sourced.
# Needs /etc/anb/stack.env (written by the launch template's user data) to be sourced first.

# GET from the instance metadata service (IMDSv2: a session token first).
imds() {
  local token
  token=$(curl -fsS --max-time 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token) || return 1
  curl -fsS --max-time 2 -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/$1"
}

instance_id() { imds meta-data/instance-id; }

# Tells CloudFormation whether this instance came up: SUCCESS or FAILURE. Creation and rolling updates of the
# instance's group wait for it (CreationPolicy, WaitOnResourceSignals).
signal() {
  aws cloudformation signal-resource --region "$AWS_REGION" --stack-name "$ANB_STACK_NAME" \
    --logical-resource-id "$ANB_SIGNAL_RESOURCE" --unique-id "$(instance_id)" --status "$1"
}

# The auto-scaling group this instance belongs to.
group_name() {
  aws autoscaling describe-auto-scaling-instances --region "$AWS_REGION" --instance-ids "$(instance_id)" \
    --query 'AutoScalingInstances[0].AutoScalingGroupName' --output text
}

log() { printf '%s %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }
