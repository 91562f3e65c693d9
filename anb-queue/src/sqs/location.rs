//! Where an SQS queue is: the queue URL forms, and the names in a redrive policy.

use super::*;

/// Where the queue is, parsed from `ANB_QUEUE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Location {
    /// A queue name to resolve with `GetQueueUrl`, or a full queue URL.
    pub(super) queue: QueueRef,
    /// The endpoint a full non-AWS URL points at (an SQS-compatible server).
    pub(super) endpoint: Option<String>,
    /// The region in an AWS queue URL's host.
    pub(super) region: Option<String>,
    /// Long-poll wait (`?wait_seconds=`, default 20).
    pub(super) wait_seconds: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum QueueRef {
    Name(String),
    Url(String),
}

impl Location {
    pub(super) fn parse(url: &str) -> Result<Self, QueueError> {
        let invalid = |reason: &str| QueueError::InvalidUrl {
            url: crate::queue::redact(url),
            reason: reason.to_owned(),
        };
        let mut parsed = url::Url::parse(url).map_err(|error| invalid(&error.to_string()))?;
        let mut wait_seconds = MAX_WAIT_SECONDS;
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "wait_seconds" => {
                    wait_seconds = value
                        .parse::<i32>()
                        .ok()
                        .filter(|seconds| (0..=MAX_WAIT_SECONDS).contains(seconds))
                        .ok_or_else(|| invalid("wait_seconds must be 0 to 20"))?;
                }
                other => return Err(invalid(&format!("unknown parameter {other:?}"))),
            }
        }
        parsed.set_query(None);
        if parsed.scheme() == "sqs" {
            let name = parsed.host_str().unwrap_or_default();
            if name.is_empty() || parsed.path().len() > 1 {
                return Err(invalid("expected sqs://queue-name"));
            }
            return Ok(Self {
                queue: QueueRef::Name(name.to_owned()),
                endpoint: None,
                region: None,
                wait_seconds,
            });
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let segments: Vec<&str> = parsed
            .path_segments()
            .map(|segments| segments.filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        if segments.len() != 2 {
            return Err(invalid(
                "expected a queue URL ending in /<account>/<queue-name>",
            ));
        }
        let (endpoint, region) = match host.strip_suffix(".amazonaws.com") {
            // sqs.<region>.amazonaws.com, or the legacy <region>.queue.amazonaws.com
            Some(aws) => {
                let region = aws
                    .strip_prefix("sqs.")
                    .or_else(|| aws.strip_suffix(".queue"))
                    .map(str::to_owned);
                (None, region)
            }
            None => {
                let mut origin = parsed.clone();
                origin.set_path("");
                (Some(origin.as_str().trim_end_matches('/').to_owned()), None)
            }
        };
        Ok(Self {
            queue: QueueRef::Url(parsed.to_string()),
            endpoint,
            region,
            wait_seconds,
        })
    }
}

pub(super) async fn resolve_queue_url(
    client: &Client,
    name: &str,
    account: Option<&str>,
) -> Result<String, QueueError> {
    client
        .get_queue_url()
        .queue_name(name)
        .set_queue_owner_aws_account_id(account.map(str::to_owned))
        .send()
        .await
        .map_err(|error| sqs_error("GetQueueUrl", error))?
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| QueueError::Sqs {
            operation: "GetQueueUrl",
            message: format!("no URL returned for queue {name}"),
        })
}

/// The dead-letter queue's name and account from a redrive policy
/// (`{"deadLetterTargetArn":"arn:aws:sqs:<region>:<account>:<name>","maxReceiveCount":5}`).
pub(super) fn dead_letter_target(redrive_policy: &str) -> Option<(String, String)> {
    let policy: serde_json::Value = serde_json::from_str(redrive_policy).ok()?;
    let arn = policy.get("deadLetterTargetArn")?.as_str()?;
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "sqs", _, account, name] => Some(((*name).to_owned(), (*account).to_owned())),
        _ => None,
    }
}
