//! A job as an SQS message: its attributes, and the messages this backend sends.

use super::*;

pub(super) fn string_attribute(value: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|error| build_error("build a message attribute", error))
}

pub(super) fn number_attribute(value: i64) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .map_err(|error| build_error("build a message attribute", error))
}

/// The visibility timeout for a lease: whole seconds, rounded up, plus two so a heartbeat
/// that lands late on a busy endpoint still finds the message hidden (a crashed worker's
/// job is redelivered that much later).
pub(super) fn visibility_for(lease: Duration) -> i32 {
    ceil_seconds(lease.min(MAX_VISIBILITY - Duration::from_secs(2))) + 2
}

/// Whole seconds, rounded up (SQS's unit for delays and visibility).
pub(super) fn ceil_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// A job as carried by an SQS message.
#[derive(Debug, Clone)]
pub(super) struct Envelope {
    pub(super) name: String,
    pub(super) payload: String,
    pub(super) max_attempts: u32,
    pub(super) enqueued_at_ms: i64,
    pub(super) attempts_before: u32,
    pub(super) not_before_ms: Option<i64>,
}

impl Envelope {
    pub(super) fn from_message(message: &Message) -> Self {
        let attributes = message.message_attributes();
        let text = |key: &str| {
            attributes
                .and_then(|attributes| attributes.get(key))
                .and_then(|value| value.string_value())
        };
        let number = |key: &str| text(key).and_then(|value| value.parse::<i64>().ok());
        let sent_at = message
            .attributes()
            .and_then(|attributes| attributes.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|value| value.parse().ok());
        Self {
            // A message without our attributes was not sent by this library: it gets an
            // empty name, which no handler has.
            name: text(ATTR_NAME).unwrap_or_default().to_owned(),
            payload: message.body().unwrap_or_default().to_owned(),
            max_attempts: number(ATTR_MAX_ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            enqueued_at_ms: number(ATTR_ENQUEUED_AT).or(sent_at).unwrap_or_else(now_ms),
            attempts_before: number(ATTR_ATTEMPTS_BEFORE)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            not_before_ms: number(ATTR_NOT_BEFORE),
        }
    }

    /// The message that carries this job, sent with `delay`; delays beyond `native_limit`
    /// (SQS's 15 minutes) wait that long and carry their due time to hop on.
    pub(super) fn outgoing(
        &self,
        delay: Duration,
        native_limit: Duration,
    ) -> Result<Outgoing, QueueError> {
        let mut attributes = vec![
            (ATTR_NAME, string_attribute(&self.name)?),
            (
                ATTR_MAX_ATTEMPTS,
                number_attribute(i64::from(self.max_attempts))?,
            ),
            (ATTR_ENQUEUED_AT, number_attribute(self.enqueued_at_ms)?),
        ];
        if self.attempts_before > 0 {
            attributes.push((
                ATTR_ATTEMPTS_BEFORE,
                number_attribute(i64::from(self.attempts_before))?,
            ));
        }
        let native_delay = if delay > native_limit {
            let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            attributes.push((ATTR_NOT_BEFORE, number_attribute(due)?));
            native_limit
        } else {
            delay
        };
        Ok(Outgoing {
            name: self.name.clone(),
            body: self.payload.clone(),
            attributes,
            delay_seconds: ceil_seconds(native_delay),
        })
    }
}

/// A message about to be sent.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub(super) name: String,
    pub(super) body: String,
    pub(super) attributes: Vec<(&'static str, MessageAttributeValue)>,
    pub(super) delay_seconds: i32,
}

impl Outgoing {
    /// The size SQS counts against `MaximumMessageSize`: body plus every attribute's name,
    /// type and value.
    pub(super) fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(name, value)| {
                    name.len() + value.data_type().len() + value.string_value().map_or(0, str::len)
                })
                .sum::<usize>()
    }
}
