//! What the producer will take: the size rules that keep one record from
//! failing a whole cycle.
//!
//! librdkafka refuses, synchronously and before sending, any message whose
//! value, key and headers together pass the producer's `message.max.bytes`
//! (1,000,000 by default). A refusal inside a cycle would fail the cycle, and
//! its retry would meet the same record for ever. So the pipeline decides
//! before it sends, from sizes alone (which a replay sees the same way):
//!
//! - an output record that would not fit fails its event (`output_limit`,
//!   to the dead-letter topic), before any record of that event is sent; so
//!   does an event whose records together would not fit one journal record
//!   (see `journal.rs`);
//! - a dead letter whose source value (or key) would not fit carries the first
//!   [`DEAD_LETTER_PREVIEW`] bytes of the value (and no key when the key is too
//!   large), with [`HEADER_VALUE_SIZE`] giving the original size.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::catalog::Route;
use super::journal::Deliveries;
use super::route::DeadLetterReason;
use super::sink::PartitionBatch;
use super::{CycleError, Pipeline, journal};
use crate::runtime::{BatchResult, EventError, FailureKind, Status};

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room kept for librdkafka's own per-message and per-header overhead.
const OVERHEAD: usize = 512;

/// Bytes of a source value a truncated dead letter keeps.
pub const DEAD_LETTER_PREVIEW: usize = 64 << 10;

/// Header of a dead letter whose value was cut: the source value's full size.
pub const HEADER_VALUE_SIZE: &str = "weir-value-size";

/// Header of a dead letter whose source key was too large to keep: its size.
pub const HEADER_KEY_SIZE: &str = "weir-key-size";

/// The producer's `message.max.bytes`, from the extra librdkafka settings.
pub(crate) fn message_limit(kafka: &BTreeMap<String, String>) -> Result<usize, String> {
    match kafka.get("message.max.bytes") {
        None => Ok(DEFAULT_MESSAGE_MAX_BYTES),
        Some(text) => text.trim().parse::<usize>().map_err(|_| {
            format!("pipeline.kafka.\"message.max.bytes\" = {text:?}: expected a number of bytes")
        }),
    }
}

/// Whether a message of these parts fits under `limit`.
pub(crate) fn fits(limit: usize, value: usize, key: usize, headers: &[(&str, &str)]) -> bool {
    let headers: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    value + key + headers + OVERHEAD <= limit
}

/// The largest journal record for source `topic`: what the producer takes
/// with the record's key.
pub(crate) fn journal_budget(limit: usize, key: &str) -> usize {
    limit.saturating_sub(OVERHEAD + key.len())
}

/// What a dead letter of a source value of `value` bytes and key of `key`
/// bytes carries: `(value bytes kept, whether the key is kept)`.
pub(crate) fn dead_letter_parts(
    limit: usize,
    value: usize,
    key: usize,
    headers: &[(&str, &str)],
) -> (usize, bool) {
    if fits(limit, value, key, headers) {
        return (value, true);
    }
    let keep_key = key <= DEAD_LETTER_PREVIEW;
    (
        value.min(DEAD_LETTER_PREVIEW),
        keep_key && fits(limit, value.min(DEAD_LETTER_PREVIEW), key, headers),
    )
}

/// Header naming the scenario on outputs and dead letters.
pub const HEADER_SCENARIO: &str = "weir-scenario";
/// Header naming the plugin as `name@registry-version`.
pub const HEADER_PLUGIN: &str = "weir-plugin";
/// Header carrying the plugin's own version (from `describe`).
pub const HEADER_PLUGIN_VERSION: &str = "weir-plugin-version";
/// Header with the dead-letter reason code.
pub const HEADER_REASON: &str = "weir-reason";
/// Header with the dead-letter error message.
pub const HEADER_ERROR: &str = "weir-error";
/// Header with the source topic.
pub const HEADER_SOURCE_TOPIC: &str = "weir-source-topic";
/// Header with the source partition.
pub const HEADER_SOURCE_PARTITION: &str = "weir-source-partition";
/// Header with the source offset.
pub const HEADER_SOURCE_OFFSET: &str = "weir-source-offset";

/// One dead letter on its way out.
pub(super) struct DeadLetter<'a> {
    pub(super) message: &'a OwnedMessage,
    pub(super) scenario: Option<&'a Route>,
    pub(super) reason: DeadLetterReason,
    pub(super) error: String,
}

/// `partition:offset` of a source message, as the output header gives it.
fn source_offset(message: &OwnedMessage) -> String {
    format!("{}:{}", message.partition(), message.offset())
}

/// The headers of an output record (see docs/pipeline.md, Headers).
fn output_headers<'a>(
    route: &'a Route,
    message: &'a OwnedMessage,
    source_offset: &'a str,
) -> [(&'a str, &'a str); 5] {
    [
        (HEADER_SCENARIO, route.id.as_str()),
        (HEADER_PLUGIN, route.plugin_label.as_str()),
        (HEADER_PLUGIN_VERSION, route.plugin_version.as_str()),
        (HEADER_SOURCE_TOPIC, message.topic()),
        (HEADER_SOURCE_OFFSET, source_offset),
    ]
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// Waits at most `timeout` until the producer holds no record: each delivered
/// and its delivery report handled by the producer's polling thread. Meanwhile
/// librdkafka sends what waits for `linger.ms` at once. This is librdkafka's
/// own `rd_kafka_flush` with a timeout, which holds its flushing flag while it
/// waits on a condition variable; the Rust client's `flush` calls it with no
/// timeout and polls for reports itself in steps of up to 100 ms, which the
/// polling thread has usually taken already, and the last records of a cycle
/// would wait out the linger (docs/pipeline.md, Throughput).
#[allow(unsafe_code)] // The FFI seam: one call into librdkafka.
fn flush_now(producer: &ThreadedProducer<Deliveries>, timeout: Duration) -> RDKafkaErrorCode {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live client `producer` owns, borrowed for the
    // whole call; librdkafka allows `rd_kafka_flush` from any thread, beside
    // the polling thread that serves the delivery reports it waits for.
    let code = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
    RDKafkaErrorCode::from(code)
}

impl Pipeline {
    /// Sends a partition batch's journal records in the open transaction.
    pub(super) fn send_journal(&mut self, batch: &PartitionBatch) -> Result<(), CycleError> {
        let key = journal::key(&self.config.group_id, &batch.topic, batch.partition);
        let budget = journal_budget(self.message_limit, &key);
        let tp = (batch.topic.clone(), batch.partition);
        for (index, record) in journal::encode(batch, budget).iter().enumerate() {
            // Only a batch's first record is where a replay of it starts, so
            // only its place is noted (tag 0: not noted).
            let tag = if index == 0 {
                let tag = self.next_tag;
                self.next_tag = self.next_tag.wrapping_add(1).max(1);
                self.journal_sent.push((tag, tp.clone(), batch.last_offset));
                tag
            } else {
                0
            };
            self.send(
                BaseRecord::with_opaque_to(&self.config.journal_topic, tag)
                    .key(key.as_bytes())
                    .payload(record.as_slice()),
            )?;
        }
        Ok(())
    }

    /// Waits until every record sent is delivered and its report handled (the
    /// journal's places are then known), sending at once what the producer
    /// would hold for `linger.ms`: see [`flush_now`].
    pub(super) fn await_deliveries(&self, timeout: Duration) -> Result<(), CycleError> {
        match flush_now(&self.producer, timeout) {
            RDKafkaErrorCode::NoError => Ok(()),
            code => Err(CycleError::Kafka {
                context: "waiting for deliveries",
                source: KafkaError::Flush(code),
            }),
        }
    }

    pub(super) fn send(&self, record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), CycleError> {
        let mut record = record;
        // Timed from the first refusal: the clock is not read per record.
        let mut full_since: Option<Instant> = None;
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The broker takes nothing (down, or its partitions leaderless):
                // the cycle fails, is counted and retried, rather than waiting here.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if full_since.get_or_insert_with(Instant::now).elapsed() >= timeout =>
                {
                    return Err(CycleError::Kafka {
                        context: "producing: the producer's queue stayed full",
                        source: KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(CycleError::Kafka {
                        context: "producing",
                        source,
                    });
                }
            }
        }
    }

    /// Fails every emitted event one of whose records the producer would refuse
    /// for its size, or whose records together would not fit one journal record
    /// (see `produce.rs`), before any of its records is sent, so that the event
    /// goes to the dead-letter topic alone and every sink agrees.
    pub(super) fn fail_what_cannot_be_produced(
        &self,
        route: &Route,
        share: &[(usize, Option<String>)],
        messages: &[&OwnedMessage],
        result: &mut BatchResult,
    ) {
        let key = journal::key(
            &self.config.group_id,
            messages[0].topic(),
            messages[0].partition(),
        );
        let budget = journal_budget(self.message_limit, &key);
        let too_large: Vec<(usize, String)> = share
            .iter()
            .zip(result.outcomes())
            .enumerate()
            .filter(|(_, (_, outcome))| outcome.status == Status::Emitted)
            .filter_map(|(i, ((index, member), outcome))| {
                let sizes = || result.records(outcome).map(<[u8]>::len);
                if !journal::event_fits(
                    budget,
                    messages[*index].topic(),
                    &route.id,
                    &route.plugin_label,
                    sizes(),
                ) {
                    let message = format!(
                        "the event's {} records are {} bytes together, more than one journal \
                         record holds (the producer's message.max.bytes is {})",
                        outcome.record_count(),
                        sizes().sum::<usize>(),
                        self.message_limit
                    );
                    return Some((i, message));
                }
                let offset = source_offset(messages[*index]);
                let headers = output_headers(route, messages[*index], &offset);
                let key = member.as_ref().map_or(0, String::len);
                result
                    .records(outcome)
                    .enumerate()
                    .find(|(_, record)| !fits(self.message_limit, record.len(), key, &headers))
                    .map(|(k, record)| {
                        let message = format!(
                            "record {k} of the event is {} bytes, which with its key and headers \
                             passes the producer's message.max.bytes ({})",
                            record.len(),
                            self.message_limit
                        );
                        (i, message)
                    })
            })
            .collect();
        for (i, message) in too_large {
            result.fail_event(
                i,
                EventError {
                    kind: FailureKind::OutputLimit,
                    message,
                },
            );
        }
    }

    pub(super) fn send_output(
        &self,
        route: &Route,
        message: &OwnedMessage,
        member: Option<&str>,
        record: &[u8],
    ) -> Result<(), CycleError> {
        let offset = source_offset(message);
        let headers = output_headers(route, message, &offset)
            .into_iter()
            .fold(OwnedHeaders::new_with_capacity(5), |headers, (k, v)| {
                headers.insert(header(k, v))
            });
        let mut out = BaseRecord::with_opaque_to(&route.output_topic, 0)
            .payload(record)
            .headers(headers);
        if let Some(member) = member {
            out = out.key(member.as_bytes());
        }
        self.send(out)
    }

    /// Produces a dead letter: the source value and key with the reason, cut to
    /// what the producer takes (see `produce.rs`). If even that is refused, a
    /// marker without the value takes its place, so the event is still
    /// accounted for, and the pipeline goes on.
    pub(super) fn dead_letter(&self, letter: DeadLetter<'_>) -> Result<(), CycleError> {
        let message = letter.message;
        let (partition, offset) = (
            message.partition().to_string(),
            message.offset().to_string(),
        );
        let mut named: Vec<(&str, &str)> = vec![
            (HEADER_REASON, letter.reason.as_str()),
            (HEADER_ERROR, &letter.error),
            (HEADER_SOURCE_TOPIC, message.topic()),
            (HEADER_SOURCE_PARTITION, &partition),
            (HEADER_SOURCE_OFFSET, &offset),
        ];
        if let Some(route) = letter.scenario {
            named.extend([
                (HEADER_SCENARIO, route.id.as_str()),
                (HEADER_PLUGIN, &route.plugin_label),
                (HEADER_PLUGIN_VERSION, &route.plugin_version),
            ]);
        }
        let value = message.payload().unwrap_or_default();
        let key = message.key();
        let (value_size, key_size) = (
            value.len().to_string(),
            key.map_or(0, <[u8]>::len).to_string(),
        );
        let (kept, keep_key) = dead_letter_parts(
            self.message_limit,
            value.len(),
            key.map_or(0, <[u8]>::len),
            &named,
        );
        if kept < value.len() {
            named.push((HEADER_VALUE_SIZE, &value_size));
        }
        if key.is_some() && !keep_key {
            named.push((HEADER_KEY_SIZE, &key_size));
        }
        let headers = |named: &[(&str, &str)]| {
            named.iter().fold(
                OwnedHeaders::new_with_capacity(named.len()),
                |headers, &(k, v)| headers.insert(header(k, v)),
            )
        };
        let mut out = BaseRecord::with_opaque_to(&self.config.dlq_topic, 0)
            .payload(&value[..kept])
            .headers(headers(&named));
        if let Some(key) = key.filter(|_| keep_key) {
            out = out.key(key);
        }
        match self.send(out) {
            Err(CycleError::Kafka {
                source: KafkaError::MessageProduction(code),
                ..
            }) if code != RDKafkaErrorCode::QueueFull => {
                tracing::error!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %code,
                    "the dead letter was refused by the producer; a marker without its value takes its place"
                );
                self.metrics
                    .unproducible_dead_letters
                    .fetch_add(1, Ordering::Relaxed);
                let refused = format!(
                    "{}; the dead letter itself was refused: {code}",
                    letter.error
                );
                let marker: Vec<(&str, &str)> = named
                    .iter()
                    .map(|&(k, v)| {
                        if k == HEADER_ERROR {
                            (k, refused.as_str())
                        } else {
                            (k, v)
                        }
                    })
                    .collect();
                self.send(
                    BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.config.dlq_topic, 0)
                        .headers(headers(&marker)),
                )
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_comes_from_the_producer_settings() {
        assert_eq!(message_limit(&BTreeMap::new()), Ok(1_000_000));
        let set = BTreeMap::from([("message.max.bytes".to_owned(), "2000000".to_owned())]);
        assert_eq!(message_limit(&set), Ok(2_000_000));
        let bad = BTreeMap::from([("message.max.bytes".to_owned(), "big".to_owned())]);
        assert!(
            message_limit(&bad)
                .unwrap_err()
                .contains("expected a number")
        );
    }

    #[test]
    fn value_key_and_headers_count_together() {
        let headers = [("weir-scenario", "5")];
        assert!(fits(1_000_000, 900_000, 10, &headers));
        assert!(!fits(1_000_000, 999_990, 0, &[]));
        assert!(!fits(1_000_000, 999_000, 1_000, &headers));
    }

    #[test]
    fn an_oversized_dead_letter_keeps_a_preview_and_a_small_key() {
        let headers = [("weir-reason", "unknown_scenario")];
        assert_eq!(dead_letter_parts(1_000_000, 300, 8, &headers), (300, true));
        assert_eq!(
            dead_letter_parts(1_000_000, 1_000_100, 8, &headers),
            (DEAD_LETTER_PREVIEW, true)
        );
        // A key too large to keep goes; the value preview stays.
        assert_eq!(
            dead_letter_parts(1_000_000, 10, 999_700, &headers),
            (10, false)
        );
    }
}
