//! SQS set-up shared by the `bench` and `idle` examples (included with `#[path]`).

use anyhow::Context as _;

/// A client for the SQS-compatible test server: static credentials, region us-east-1.
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "anb-queue-examples",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// Creates a queue named `prefix-<uuid>` with a dead-letter queue (redrive policy);
/// returns both URLs.
pub async fn create_sqs_queue(
    client: &aws_sdk_sqs::Client,
    prefix: &str,
) -> anyhow::Result<(String, String)> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let dead_letters = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "create the dead-letter queue: {}",
                aws_sdk_sqs::error::DisplayErrorContext(error)
            )
        })?;
    let dead_letters_url = dead_letters.queue_url().context("a queue URL")?.to_owned();
    let arn = client
        .get_queue_attributes()
        .queue_url(&dead_letters_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes()
        .and_then(|attributes| attributes.get(&QueueAttributeName::QueueArn).cloned())
        .context("a queue ARN")?;
    let queue = client
        .create_queue()
        .queue_name(&name)
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"10"}}"#),
        )
        .send()
        .await?;
    Ok((
        queue.queue_url().context("a queue URL")?.to_owned(),
        dead_letters_url,
    ))
}
