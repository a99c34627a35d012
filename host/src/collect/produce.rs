//! The collector's state and its way to Kafka: an idempotent producer with
//! `acks=all` whose delivery every request waits for, a bound on the request
//! bytes held meanwhile, the bad-records topic, and the collector's metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::{Client, ClientRules, cut};
use super::{CollectConfig, StreamConfig, unavailable};

/// How long a request waits for room among the bytes in flight before 503.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// The collector's counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct CollectMetrics {
    /// Events the broker acknowledged, by endpoint (`pixel`, `matomo`, `collect`).
    pub accepted: Mutex<BTreeMap<&'static str, u64>>,
    /// Records refused for their content, by reason.
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests answered 503 (broker down or slow, memory in flight used up).
    pub unavailable: AtomicU64,
    /// Refused records the bad-records topic did not take (logged instead).
    pub bad_records_lost: AtomicU64,
    /// Matomo requests without `rec=1`, answered but not recorded (as Matomo does).
    pub not_recorded: AtomicU64,
    /// The file tailer's counters.
    pub tail: Arc<super::tail::TailMetrics>,
    /// Where they are exported from, with the requests by endpoint and status.
    pub telemetry: crate::telemetry::Telemetry,
}

impl CollectMetrics {
    fn add(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str, n: u64) {
        *map.lock().expect("metrics lock").entry(key).or_default() += n;
    }

    /// Copies these counters into their telemetry, before it is rendered.
    pub fn export(&self) {
        let t = &self.telemetry;
        for (endpoint, n) in self.accepted.lock().expect("metrics lock").iter() {
            t.counter("weir_collect_events_total", &[("endpoint", endpoint)])
                .absolute(*n);
        }
        for (reason, n) in self.refused.lock().expect("metrics lock").iter() {
            t.counter("weir_collect_refused_total", &[("reason", reason)])
                .absolute(*n);
        }
        for (name, value) in [
            ("weir_collect_unavailable_total", &self.unavailable),
            (
                "weir_collect_bad_records_lost_total",
                &self.bad_records_lost,
            ),
            ("weir_collect_not_recorded_total", &self.not_recorded),
            ("weir_tail_lines_total", &self.tail.lines),
            ("weir_tail_resent_lines_total", &self.tail.resent),
            ("weir_tail_cut_lines_total", &self.tail.cut),
            ("weir_tail_truncations_total", &self.tail.truncations),
            ("weir_tail_failures_total", &self.tail.failures),
        ] {
            t.counter(name, &[]).absolute(value.load(Ordering::Relaxed));
        }
    }
}

/// One record for Kafka.
#[derive(Debug)]
pub struct Outgoing {
    /// Record key (a visitor, or a configured field).
    pub key: Option<String>,
    /// The event's JSON.
    pub payload: Vec<u8>,
    /// Record timestamp, ms.
    pub timestamp_ms: i64,
}

/// A record refused for its content, on its way to the bad-records topic.
#[derive(Debug)]
pub struct Refusal<'a> {
    /// Stable slug (the metric's `reason` label).
    pub reason: &'static str,
    /// What was wrong, for people.
    pub detail: String,
    /// `pixel`, `matomo` or `collect`.
    pub endpoint: &'static str,
    /// The JSON stream, for `collect`.
    pub stream: Option<&'a str>,
    /// Position in a bulk request or batch.
    pub index: Option<usize>,
    /// The refused text as received (cut to the record limit).
    pub raw: &'a [u8],
}

/// Everything a request handler needs.
pub struct Front {
    config: CollectConfig,
    rules: ClientRules,
    producer: FutureProducer,
    in_flight: Arc<Semaphore>,
    hits_topic: String,
    streams: BTreeMap<String, (StreamConfig, Option<[u8; 32]>)>,
    metrics: Arc<CollectMetrics>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("hits_topic", &self.hits_topic)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// The collector's state over a producer to `brokers`; hits go to
    /// `hits_topic` unless the configuration names another.
    pub fn new(
        config: CollectConfig,
        brokers: &str,
        hits_topic: &str,
        telemetry: crate::telemetry::Telemetry,
    ) -> Result<Self, KafkaError> {
        let hits_topic = config
            .topic
            .clone()
            .unwrap_or_else(|| hits_topic.to_owned());
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", config.produce_timeout_ms.to_string())
            // The producer's own queue holds no more than the requests may.
            .set(
                "queue.buffering.max.kbytes",
                (config.max_in_flight_bytes / 1024).max(1).to_string(),
            );
        for (key, value) in &config.kafka {
            client.set(key, value);
        }
        let producer: FutureProducer = client.create()?;
        let streams = config
            .streams_with(&hits_topic)
            .into_iter()
            .map(|(name, stream)| {
                let digest = stream.key.as_deref().map(crate::api::token_digest);
                (name, (stream, digest))
            })
            .collect();
        Ok(Self {
            rules: ClientRules::new(&config),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_bytes)),
            producer,
            hits_topic,
            streams,
            metrics: Arc::new(CollectMetrics {
                telemetry,
                ..CollectMetrics::default()
            }),
            config,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CollectConfig {
        &self.config
    }

    /// The collector's counters.
    pub fn metrics(&self) -> Arc<CollectMetrics> {
        self.metrics.clone()
    }

    /// Where tracking hits go.
    pub fn hits_topic(&self) -> &str {
        &self.hits_topic
    }

    pub(super) fn rules(&self) -> &ClientRules {
        &self.rules
    }

    /// A stream by name, with the digest of its key.
    pub(super) fn stream(&self, name: &str) -> Option<&(StreamConfig, Option<[u8; 32]>)> {
        self.streams.get(name)
    }

    /// Room for `bytes` of a request among the bytes in flight, or 503.
    pub(super) async fn room(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Response> {
        let wanted =
            u32::try_from(bytes.clamp(1, self.config.max_in_flight_bytes)).unwrap_or(u32::MAX);
        match tokio::time::timeout(ROOM_WAIT, self.in_flight.clone().acquire_many_owned(wanted))
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.unavailable(
                "the collector holds as many request bytes as it may while the broker \
                 acknowledges them; try again",
            )),
        }
    }

    /// 503, counted.
    pub(super) fn unavailable(&self, detail: &str) -> Response {
        self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        unavailable(self.config.retry_after_secs, detail)
    }

    /// Produces `records` to `topic` and waits until the broker acknowledged
    /// every one; else 503 (some may have been stored: the client's retry may
    /// store them twice, never none).
    pub(super) async fn send(
        &self,
        topic: &str,
        endpoint: &'static str,
        records: Vec<Outgoing>,
    ) -> Result<(), Response> {
        let count = records.len() as u64;
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut future = FutureRecord::to(topic)
                .payload(&record.payload)
                .timestamp(record.timestamp_ms);
            if let Some(key) = &record.key {
                future = future.key(key);
            }
            match self.producer.send_result(future) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => {
                    tracing::warn!(%error, topic, "the producer refused a record");
                    return Err(self.unavailable(&format!(
                        "the broker is not taking records now ({error}); try again"
                    )));
                }
            }
        }
        let deadline = Duration::from_millis(self.config.produce_timeout_ms + 1_000);
        let waited = tokio::time::timeout(deadline, async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => return Err(error.to_string()),
                    Err(_) => return Err("the producer stopped".to_owned()),
                }
            }
            Ok(())
        })
        .await;
        match waited {
            Ok(Ok(())) => {
                CollectMetrics::add(&self.metrics.accepted, endpoint, count);
                Ok(())
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, topic, "the broker did not acknowledge a request's records");
                let detail =
                    if error.contains(&RDKafkaErrorCode::UnknownTopicOrPartition.to_string()) {
                        format!("topic {topic} does not exist in Kafka; create it, then try again")
                    } else {
                        format!("the broker did not acknowledge the records ({error}); try again")
                    };
                Err(self.unavailable(&detail))
            }
            Err(_) => {
                Err(self
                    .unavailable("the broker did not acknowledge the records in time; try again"))
            }
        }
    }

    /// Sends a refused record to the bad-records topic with its reason, and
    /// counts it. Waits for no acknowledgement: the client's answer does not
    /// depend on it; a record the topic does not take is logged and counted.
    pub(super) fn refuse(&self, client: &Client, refusal: Refusal<'_>) {
        CollectMetrics::add(&self.metrics.refused, refusal.reason, 1);
        let raw = String::from_utf8_lossy(refusal.raw);
        let record = json!({
            "reason": refusal.reason,
            "detail": refusal.detail,
            "endpoint": refusal.endpoint,
            "stream": refusal.stream,
            "index": refusal.index,
            "received_at_ms": client.received_ms,
            "client_ip": client.ip.to_string(),
            "user_agent": client.user_agent,
            "raw": cut(&raw, self.config.max_record_bytes),
        });
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        let future = FutureRecord::<(), _>::to(&self.config.bad_topic)
            .payload(&payload)
            .timestamp(client.received_ms);
        let metrics = self.metrics.clone();
        let reason = refusal.reason;
        match self.producer.send_result(future) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        metrics.bad_records_lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            reason,
                            "a refused record did not reach the bad-records topic"
                        );
                    }
                });
            }
            Err((error, _)) => {
                metrics.bad_records_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, reason, "a refused record did not reach the bad-records topic");
            }
        }
    }

    /// The producer, for the file tailer.
    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// Matomo requests answered but not recorded.
    pub(super) fn not_recorded(&self) {
        self.metrics.not_recorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for records still queued, at most `timeout` (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// An event as JSON bytes.
pub(super) fn encode(event: &serde_json::Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(event).unwrap_or_default()
}
