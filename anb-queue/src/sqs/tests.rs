//! Unit tests of the SQS backend; `against_a_server` runs on the SQS-compatible test server.

use super::*;

#[test]
fn a_queue_name_url_is_resolved_later() {
    let location = Location::parse("sqs://videos?wait_seconds=5").unwrap();
    assert_eq!(location.queue, QueueRef::Name("videos".into()));
    assert_eq!(
        (location.endpoint, location.region, location.wait_seconds),
        (None, None, 5)
    );
}

#[test]
fn an_aws_queue_url_names_its_region() {
    let location =
        Location::parse("https://sqs.eu-west-1.amazonaws.com/123456789012/videos").unwrap();
    assert_eq!(
        location.queue,
        QueueRef::Url("https://sqs.eu-west-1.amazonaws.com/123456789012/videos".into())
    );
    assert_eq!(location.region.as_deref(), Some("eu-west-1"));
    assert_eq!(location.endpoint, None);
    assert_eq!(location.wait_seconds, 20);
}

#[test]
fn a_local_queue_url_is_its_own_endpoint() {
    let location = Location::parse("http://127.0.0.1:4566/000000000000/videos").unwrap();
    assert_eq!(location.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
}

#[test]
fn malformed_locations_are_refused() {
    for url in [
        "sqs://",
        "sqs://a/b",
        "http://127.0.0.1:4566/videos",
        "sqs://videos?wait_seconds=21",
        "sqs://videos?colour=blue",
    ] {
        assert!(Location::parse(url).is_err(), "{url}");
    }
}

#[test]
fn the_dead_letter_queue_comes_from_the_redrive_policy() {
    let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:videos-dlq","maxReceiveCount":"5"}"#;
    assert_eq!(
        dead_letter_target(policy),
        Some(("videos-dlq".to_owned(), "123456789012".to_owned()))
    );
    assert_eq!(dead_letter_target("{}"), None);
}

#[test]
fn delays_round_up_to_whole_seconds() {
    assert_eq!(ceil_seconds(Duration::ZERO), 0);
    assert_eq!(ceil_seconds(Duration::from_millis(1)), 1);
    assert_eq!(ceil_seconds(Duration::from_millis(1500)), 2);
    assert_eq!(ceil_seconds(Duration::from_secs(3)), 3);
}

#[test]
fn long_delays_wait_natively_for_fifteen_minutes_and_carry_their_due_time() {
    let job = Envelope {
        name: "echo".into(),
        payload: "{}".into(),
        max_attempts: 3,
        enqueued_at_ms: 0,
        attempts_before: 0,
        not_before_ms: None,
    };
    let short = job
        .outgoing(Duration::from_secs(60), MAX_NATIVE_DELAY)
        .unwrap();
    assert_eq!(short.delay_seconds, 60);
    assert!(
        short
            .attributes
            .iter()
            .all(|(name, _)| *name != ATTR_NOT_BEFORE)
    );
    let before = now_ms();
    let long = job
        .outgoing(Duration::from_secs(3600), MAX_NATIVE_DELAY)
        .unwrap();
    assert_eq!(long.delay_seconds, 900);
    let due: i64 = long
        .attributes
        .iter()
        .find(|(name, _)| *name == ATTR_NOT_BEFORE)
        .and_then(|(_, value)| value.string_value()?.parse().ok())
        .unwrap();
    assert!(due >= before + 3_600_000 && due <= now_ms() + 3_600_000);
}

/// Against the SQS-compatible server at `ANB_TEST_AWS_ENDPOINT`.
mod against_a_server {
    use std::time::Instant;

    use super::*;

    fn client() -> Client {
        let endpoint = std::env::var("ANB_TEST_AWS_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        Client::from_conf(config)
    }

    /// A fresh queue (with a dead-letter queue unless `max_receive_count` is `None`).
    async fn fresh_queue(
        attributes: &[(QueueAttributeName, &str)],
        max_receive_count: Option<u32>,
    ) -> String {
        let client = client();
        let name = format!("anb-unit-{}", uuid::Uuid::new_v4().simple());
        let mut create = client.create_queue().queue_name(&name);
        for (key, value) in attributes {
            create = create.attributes(key.clone(), *value);
        }
        if let Some(count) = max_receive_count {
            let dead = client
                .create_queue()
                .queue_name(format!("{name}-dlq"))
                .send()
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "SQS is not reachable (set ANB_TEST_AWS_ENDPOINT): {}",
                        DisplayErrorContext(error)
                    )
                });
            let arn = client
                .get_queue_attributes()
                .queue_url(dead.queue_url().unwrap())
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap()
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                .unwrap();
            create = create.attributes(
                QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{count}"}}"#),
            );
        }
        let created = create.send().await.unwrap_or_else(|error| {
            panic!(
                "SQS is not reachable (set ANB_TEST_AWS_ENDPOINT): {}",
                DisplayErrorContext(error)
            )
        });
        created.queue_url().unwrap().to_owned()
    }

    async fn backend(queue_url: &str, wait_seconds: i32) -> SqsBackend {
        SqsBackend::new(client(), QueueRef::Url(queue_url.to_owned()), wait_seconds)
            .await
            .unwrap()
    }

    fn job(payload: String, delay: Duration) -> NewJob {
        NewJob {
            name: "echo",
            payload,
            max_attempts: 5,
            delay,
            priority: crate::Priority::HIGHEST,
            unique: None,
        }
    }

    fn claim_request(max: usize, lease: Duration) -> ClaimRequest<'static> {
        ClaimRequest {
            names: &["echo"],
            max,
            owner: "tests",
            lease,
        }
    }

    #[tokio::test]
    async fn sends_receives_and_deletes_in_batches_of_ten() {
        let queue = backend(&fresh_queue(&[], Some(10)).await, 1).await;
        let before = queue.requests_sent().unwrap();
        let jobs: Vec<NewJob> = (0..25)
            .map(|n| job(format!("{{\"n\":{n}}}"), Duration::ZERO))
            .collect();
        let ids = queue.enqueue(&jobs).await.unwrap();
        assert_eq!(ids.len(), 25);
        let after_send = queue.requests_sent().unwrap();
        assert_eq!(after_send - before, 3, "25 jobs in 3 batched sends");

        let mut claimed = Vec::new();
        let mut receives = 0;
        while claimed.len() < 25 && receives < 20 {
            claimed.extend(
                queue
                    .claim(claim_request(10, Duration::from_secs(30)))
                    .await
                    .unwrap(),
            );
            receives += 1;
        }
        assert_eq!(claimed.len(), 25);
        let after_receive = queue.requests_sent().unwrap();
        assert_eq!(
            after_receive - after_send,
            receives,
            "one request per receive"
        );
        assert!(receives <= 5, "at most 10 per receive, took {receives}");

        let leases: Vec<ClaimLease> = claimed.iter().map(ClaimedJob::lease).collect();
        queue.complete("tests", &leases).await.unwrap();
        assert_eq!(
            queue.requests_sent().unwrap() - after_receive,
            3,
            "25 deletes in 3 batches"
        );
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.ready, stats.in_flight), (0, 0));
    }

    #[tokio::test]
    async fn a_job_over_the_queue_size_limit_is_refused_with_its_size() {
        let url = fresh_queue(
            &[(QueueAttributeName::MaximumMessageSize, "1024")],
            Some(10),
        )
        .await;
        let queue = backend(&url, 1).await;
        let before = queue.requests_sent().unwrap();
        let payload = format!("\"{}\"", "x".repeat(2000));
        let error = queue
            .enqueue(&[job(payload, Duration::ZERO)])
            .await
            .unwrap_err();
        match error {
            QueueError::MessageTooLarge { job, size, limit } => {
                assert_eq!(job, "echo");
                assert_eq!(limit, 1024);
                assert!(size > 2000, "{size}");
            }
            other => panic!("expected MessageTooLarge, got {other:?}"),
        }
        assert_eq!(queue.requests_sent().unwrap(), before, "nothing was sent");
    }

    #[tokio::test]
    async fn a_queue_without_a_dead_letter_queue_is_refused() {
        let url = fresh_queue(&[], None).await;
        let error = SqsBackend::new(client(), QueueRef::Url(url), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(error, QueueError::NoDeadLetterQueue { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_delay_beyond_the_native_limit_hops_until_it_is_due() {
        let url = fresh_queue(&[], Some(10)).await;
        let mut queue = backend(&url, 1).await;
        // A 1 s native limit stands in for SQS's 15 minutes.
        Arc::get_mut(&mut queue.inner).unwrap().native_delay_limit = Duration::from_secs(1);
        let enqueued = Instant::now();
        queue
            .enqueue(&[job("{}".into(), Duration::from_millis(3500))])
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let claimed = loop {
            let claimed = queue
                .claim(claim_request(10, Duration::from_secs(30)))
                .await
                .unwrap();
            if let Some(job) = claimed.into_iter().next() {
                break job;
            }
            assert!(Instant::now() < deadline, "the delayed job never arrived");
        };
        let waited = enqueued.elapsed();
        assert!(
            waited >= Duration::from_millis(3490),
            "ran after {waited:?}, before its delay"
        );
        assert_eq!(claimed.attempt, 1, "hops are not attempts");
    }

    #[tokio::test]
    async fn the_redrive_policy_dead_letters_a_job_received_too_often() {
        let url = fresh_queue(&[], Some(2)).await;
        let queue = backend(&url, 1).await;
        queue
            .enqueue(&[job("{}".into(), Duration::ZERO)])
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Received and abandoned (its 1 s lease runs out) until SQS moves it.
        while queue.stats().await.unwrap().dead == 0 {
            assert!(Instant::now() < deadline, "never dead-lettered");
            let _ = queue
                .claim(claim_request(1, Duration::from_secs(1)))
                .await
                .unwrap();
        }
        let dead = queue.dead_jobs(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].name.as_str(), dead[0].last_error.as_deref()),
            ("echo", None)
        );
    }

    #[tokio::test]
    async fn an_abandoned_claim_gives_back_what_it_receives_without_an_attempt() {
        let url = fresh_queue(&[], Some(10)).await;
        let queue = backend(&url, 3).await;
        // The worker gives up waiting (shutdown) while the long poll goes on.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(200),
            queue.claim(claim_request(10, Duration::from_secs(60))),
        )
        .await;
        assert!(abandoned.is_err(), "nothing to receive yet");
        queue
            .enqueue(&[job("{}".into(), Duration::ZERO)])
            .await
            .unwrap();
        // Let the abandoned poll take it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Without the release it would stay invisible for the 60 s lease.
        let deadline = Instant::now() + Duration::from_secs(30);
        let claimed = loop {
            let claimed = queue
                .claim(claim_request(10, Duration::from_secs(30)))
                .await
                .unwrap();
            if let Some(job) = claimed.into_iter().next() {
                break job;
            }
            assert!(
                Instant::now() < deadline,
                "the prefetched job was not given back"
            );
        };
        assert_eq!(claimed.attempt, 1);
    }

    fn request_for(names: &'static [&'static str], lease: Duration) -> ClaimRequest<'static> {
        ClaimRequest {
            names,
            max: 10,
            owner: "tests",
            lease,
        }
    }

    /// Claims until a job comes, for at most 30 s.
    async fn claim_one(queue: &SqsBackend, lease: Duration) -> ClaimedJob {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let claimed = queue.claim(claim_request(1, lease)).await.unwrap();
            if let Some(job) = claimed.into_iter().next() {
                return job;
            }
            assert!(Instant::now() < deadline, "no job arrived");
        }
    }

    /// A worker without the job's handler gives it back as a copy that keeps its
    /// attempts: before, it went back by visibility 0 and each bounce counted as a
    /// receive, so two bounces moved it to the dead letters (redrive at 2) unrun.
    #[tokio::test]
    async fn a_job_bounced_by_workers_without_its_handler_keeps_its_attempts() {
        let url = fresh_queue(&[], Some(2)).await;
        let queue = backend(&url, 1).await;
        queue
            .enqueue(&[job("{}".into(), Duration::ZERO)])
            .await
            .unwrap();
        let mut bounces = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while bounces < 3 {
            assert!(
                Instant::now() < deadline,
                "the job never reached the other worker"
            );
            let claimed = queue
                .claim(request_for(&["other"], Duration::from_secs(30)))
                .await
                .unwrap();
            assert!(
                claimed.is_empty(),
                "a job without a handler here was claimed"
            );
            if queue.inner.saw_only_strangers.load(Ordering::Relaxed) {
                bounces += 1;
            }
        }
        let job = claim_one(&queue, Duration::from_secs(30)).await;
        assert_eq!(job.attempt, 1, "bounces counted as attempts");
        assert_eq!(queue.stats().await.unwrap().dead, 0);
    }

    /// A receive that fails to handle one message (here: dead-lettering a job past its
    /// last attempt, into a dead-letter queue that is gone) still returns the runnable
    /// jobs it received. Before, the error ended the claim: the runnable job stayed
    /// invisible for its lease with its attempt spent.
    #[tokio::test]
    async fn a_receive_returns_its_runnable_jobs_when_handling_the_others_fails() {
        let url = fresh_queue(&[], Some(10)).await;
        let queue = backend(&url, 1).await;
        let last_try = NewJob {
            max_attempts: 1,
            ..job("{\"n\":1}".into(), Duration::ZERO)
        };
        queue.enqueue(&[last_try]).await.unwrap();
        // Its only attempt: the lease runs out without an outcome.
        let abandoned = claim_one(&queue, Duration::from_secs(1)).await;
        assert_eq!(abandoned.attempt, 1);
        client()
            .delete_queue()
            .queue_url(&queue.inner.dead_letter_url)
            .send()
            .await
            .unwrap();
        queue
            .enqueue(&[job("{\"n\":2}".into(), Duration::ZERO)])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let runnable = loop {
            let claimed = queue
                .claim(claim_request(10, Duration::from_secs(30)))
                .await
                .expect("a failed side step must not fail the claim");
            if let Some(job) = claimed.into_iter().find(|job| job.payload == "{\"n\":2}") {
                break job;
            }
            assert!(
                Instant::now() < deadline,
                "the runnable job was not returned"
            );
        };
        assert_eq!(runnable.attempt, 1);
    }

    /// SQS keeps a receipt invisible for at most 12 hours from its receive (here 5 s).
    /// A heartbeat whose lease no longer fits reports the lease lost at once, and a
    /// retry delayed past what is left goes out as a copy. Before, the heartbeat kept
    /// answering "held" while the message reappeared for another worker, and the retry
    /// asked for a visibility SQS refuses.
    #[tokio::test]
    async fn leases_and_retries_stay_within_the_visibility_limit_of_a_receive() {
        let url = fresh_queue(&[], Some(10)).await;
        let mut queue = backend(&url, 1).await;
        Arc::get_mut(&mut queue.inner).unwrap().visibility_limit = Duration::from_secs(5);
        queue
            .enqueue(&[job("{}".into(), Duration::ZERO)])
            .await
            .unwrap();
        let held = claim_one(&queue, Duration::from_secs(2)).await;
        let lease = Duration::from_secs(2);
        let lost = queue.extend("tests", &[held.lease()], lease).await.unwrap();
        assert!(lost.is_empty(), "a lease that fits was reported lost");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let lost = queue.extend("tests", &[held.lease()], lease).await.unwrap();
        assert_eq!(
            lost.len(),
            1,
            "a lease past the receipt's limit was not reported"
        );
        assert!(queue.inner.leases().is_empty(), "the lost lease was kept");

        // Its visibility runs out; received again, it is retried past what is left.
        let again = claim_one(&queue, Duration::from_secs(2)).await;
        assert_eq!(again.id, held.id);
        queue
            .retry("tests", &again.lease(), Duration::from_secs(6), "later")
            .await
            .unwrap();
        let retried = claim_one(&queue, Duration::from_secs(30)).await;
        assert_ne!(retried.id, again.id, "the retry did not go out as a copy");
        assert_eq!(retried.attempt, again.attempt + 1);
    }

    /// SQS takes or refuses each message of a batch on its own; a bulk enqueue where
    /// some are refused says which went out (before: a plain error, as if none had).
    #[tokio::test]
    async fn a_bulk_enqueue_sqs_partly_refuses_says_which_jobs_were_enqueued() {
        let url = fresh_queue(&[], Some(10)).await;
        let mut queue = backend(&url, 1).await;
        // A native delay limit past SQS's 900 s makes SQS refuse that one entry.
        Arc::get_mut(&mut queue.inner).unwrap().native_delay_limit = Duration::from_secs(2_000);
        let jobs = [
            job("{\"n\":1}".into(), Duration::ZERO),
            job("{\"n\":2}".into(), Duration::from_secs(1_000)),
            job("{\"n\":3}".into(), Duration::ZERO),
        ];
        let error = queue.enqueue(&jobs).await.unwrap_err();
        let QueueError::PartlyEnqueued { ids, reason } = error else {
            panic!("expected a partial enqueue, got {error}");
        };
        assert_eq!(
            ids.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true],
            "{reason}"
        );
        assert!(reason.contains("DelaySeconds"), "{reason}");
        let mut payloads = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while payloads.len() < 2 {
            assert!(Instant::now() < deadline, "got only {payloads:?}");
            for job in queue
                .claim(claim_request(10, Duration::from_secs(30)))
                .await
                .unwrap()
            {
                assert!(ids.contains(&Some(job.id.clone())));
                payloads.push(job.payload);
            }
        }
        payloads.sort();
        assert_eq!(payloads, ["{\"n\":1}", "{\"n\":3}"]);
    }
}
