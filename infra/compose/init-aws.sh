#!/bin/sh
# Creates in moto what the stack creates in AWS: the media bucket, the transcode queue and its dead-letter queue.
set -eu
aws s3api create-bucket --bucket anb-media >/dev/null
dlq_url=$(aws sqs create-queue --queue-name anb-transcode-dlq --attributes MessageRetentionPeriod=1209600 \
  --query QueueUrl --output text)
dlq_arn=$(aws sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn \
  --query Attributes.QueueArn --output text)
cat >/tmp/queue.json <<JSON
{
  "VisibilityTimeout": "120",
  "ReceiveMessageWaitTimeSeconds": "20",
  "MessageRetentionPeriod": "1209600",
  "RedrivePolicy": "{\"deadLetterTargetArn\":\"$dlq_arn\",\"maxReceiveCount\":5}"
}
JSON
aws sqs create-queue --queue-name anb-transcode --attributes file:///tmp/queue.json >/dev/null
echo "bucket anb-media, queues anb-transcode and anb-transcode-dlq ready"
