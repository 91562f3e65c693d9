//! A queue on a real broker (SQS on the S3/SQS-compatible server, or Redis),
//! reached by the app through a [`Gate`] that a test closes to make the
//! broker unreachable and opens again.

use std::sync::{Arc, Mutex};

use anb_core::jobs::TranscodeVideo;
use anb_queue::{JobContext, Queue, Worker};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::harness::aws_endpoint;

/// Which broker holds the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Sqs,
    Redis,
}

pub fn redis_url() -> String {
    std::env::var("ANB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `host:port` of a service URL.
fn address(url: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
}

fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A fresh queue on a broker, and the gate the app reaches it through.
#[derive(Debug)]
pub struct TestBroker {
    pub kind: Broker,
    pub gate: Gate,
    /// SQS: the queue's URL; Redis: the queue's URL on the real server.
    url: String,
}

impl TestBroker {
    /// A fresh queue; fails loudly if the broker is down.
    pub async fn start(kind: Broker) -> Self {
        match kind {
            Broker::Sqs => {
                let endpoint = aws_endpoint();
                let client = sqs_client(&endpoint);
                let name = format!("anb-api-test-{}", uuid::Uuid::new_v4().simple());
                let dead_letters = client
                    .create_queue()
                    .queue_name(format!("{name}-dlq"))
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "SQS-compatible server at {endpoint} (ANB_TEST_AWS_ENDPOINT) is not reachable: {}",
                            aws_sdk_sqs::error::DisplayErrorContext(e)
                        )
                    });
                let arn = client
                    .get_queue_attributes()
                    .queue_url(dead_letters.queue_url().unwrap())
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .unwrap()
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                            .cloned()
                    })
                    .unwrap();
                let queue = client
                    .create_queue()
                    .queue_name(&name)
                    .attributes(
                        aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                        format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"5"}}"#),
                    )
                    .send()
                    .await
                    .unwrap();
                Self {
                    kind,
                    gate: Gate::open_to(address(&endpoint)).await,
                    url: queue.queue_url().unwrap().to_owned(),
                }
            }
            Broker::Redis => {
                let server = redis_url();
                let mut url = url::Url::parse(&server).unwrap();
                url.query_pairs_mut().append_pair(
                    "queue",
                    &format!("anb-api-test-{}", uuid::Uuid::new_v4().simple()),
                );
                Self {
                    kind,
                    gate: Gate::open_to(address(&server)).await,
                    url: url.to_string(),
                }
            }
        }
    }

    /// The queue's URL as the app sees it (`ANB_QUEUE_URL`): through the
    /// gate. An SQS queue URL is also its endpoint; credentials come from
    /// the AWS SDK's environment variables, as for the app.
    pub fn app_url(&self) -> String {
        let mut url = url::Url::parse(&self.url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.gate.port)).unwrap();
        url.to_string()
    }

    /// The queue as the app sees it.
    pub async fn app_queue(&self) -> Queue {
        Queue::connect(&self.app_url())
            .await
            .unwrap_or_else(|e| panic!("queue {} unreachable: {e}", self.app_url()))
    }

    /// The queue straight on the broker, as a worker sees it.
    pub async fn direct_queue(&self) -> Queue {
        match self.kind {
            Broker::Sqs => Queue::from_sqs_client(sqs_client(&aws_endpoint()), &self.url).await,
            Broker::Redis => Queue::connect(&self.url).await,
        }
        .unwrap_or_else(|e| panic!("queue {} unreachable: {e}", self.url))
    }

    /// A worker straight on the broker, recording the jobs it is given.
    pub async fn consumer(&self) -> Consumer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let worker = Worker::new(self.direct_queue().await).handle({
            let seen = seen.clone();
            move |job: TranscodeVideo, _ctx: JobContext| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(job);
                    Ok(())
                }
            }
        });
        let task = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
        Consumer { seen, stop, task }
    }

    /// Deletes the SQS queues (Redis keys of a drained queue expire with it).
    pub async fn cleanup(self) {
        self.gate.close().await;
        if self.kind == Broker::Sqs {
            let client = sqs_client(&aws_endpoint());
            for url in [self.url.clone(), format!("{}-dlq", self.url)] {
                let _ = client.delete_queue().queue_url(url).send().await;
            }
        }
    }
}

/// A worker recording the transcoding jobs it receives.
#[derive(Debug)]
pub struct Consumer {
    seen: Arc<Mutex<Vec<TranscodeVideo>>>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), anb_queue::QueueError>>,
}

impl Consumer {
    /// The video ids of the jobs received so far, in order of arrival.
    pub fn video_ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|job| job.video_id.to_string())
            .collect()
    }

    /// Stops the worker; returns every video id received.
    pub async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        let Self { seen, task, .. } = self;
        task.await.unwrap().unwrap();
        let seen = seen.lock().unwrap();
        seen.iter().map(|job| job.video_id.to_string()).collect()
    }
}

/// A TCP forwarder to a real server that can be closed (connections refused,
/// open ones cut) and opened again on the same port.
#[derive(Debug)]
pub struct Gate {
    pub port: u16,
    target: String,
    running: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl Gate {
    async fn open_to(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Self {
            port: listener.local_addr().unwrap().port(),
            target,
            running: Mutex::new(None),
            connections: Arc::default(),
        };
        gate.serve(listener);
        gate
    }

    fn serve(&self, listener: TcpListener) {
        let (target, connections) = (self.target.clone(), self.connections.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.running.lock().unwrap() = Some(accepting);
    }

    /// The broker becomes unreachable: new connections are refused and
    /// open ones cut.
    pub async fn close(&self) {
        let accepting = self.running.lock().unwrap().take();
        if let Some(accepting) = accepting {
            accepting.abort();
            let _ = accepting.await;
        }
        self.connections.lock().unwrap().abort_all();
    }

    /// The broker is reachable again, on the same port.
    pub async fn open(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the gate's port again");
        self.serve(listener);
    }
}
