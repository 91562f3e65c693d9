//! Unit tests of the apalis adapter.

use super::{ack::HandlerFailed, *};

#[test]
fn apalis_errors_map_to_queue_outcomes() {
    let abort = AbortError::new(HandlerFailed("bad input".into()));
    let failure = Failure::of(&abort);
    assert!(!failure.retryable);
    assert_eq!(failure.message, "bad input");

    let later = RetryAfterError::new("busy", Duration::from_secs(7));
    let failure = Failure::of(&later);
    assert!(failure.retryable);
    assert_eq!(failure.delay, Some(Duration::from_secs(7)));
    assert_eq!(failure.message, "busy");

    let deferred = DeferredError::new("not yet");
    let failure = Failure::of(&deferred);
    assert_eq!(
        (failure.retryable, failure.delay),
        (true, Some(Duration::ZERO))
    );

    let plain = std::io::Error::other("connection reset");
    let failure = Failure::of(&plain);
    assert!(failure.retryable && failure.delay.is_none());
    assert_eq!(failure.message, "connection reset");
}

#[test]
fn job_errors_keep_their_kind_through_apalis() {
    let permanent: BoxDynError = JobError::permanent("no such video").into();
    let failure = Failure::of(permanent.as_ref());
    assert!(!failure.retryable);
    assert_eq!(failure.message, "no such video");

    let retryable: BoxDynError = JobError::retryable("storage down").into();
    let failure = Failure::of(retryable.as_ref());
    assert!(failure.retryable);
    assert_eq!(failure.message, "storage down");
}
