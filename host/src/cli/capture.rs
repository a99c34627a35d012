//! `weir capture`: records of a live topic, or of the dead-letter topic to
//! reproduce failures, written as JSON Lines that `weir plugin test` and
//! `weir plugin diff` read.
//!
//! Each line is an envelope ([`Captured`]), with the record where it was:
//!
//! ```json
//! {"capture":{"topic":"weir.events","partition":2,"offset":41,"timestamp":1765090800000,"key":"m0002","headers":{"weir.reason":"plugin_trap"}},"value":{"memberId":"m0002","h":10}}
//! ```
//!
//! `value` holds a value that is JSON as JSON; any other value (a log line)
//! is `text` instead, as UTF-8 (bytes that are not are replaced). A line of
//! `plugin test`'s input that starts with `{"capture":` is read as an
//! envelope: the plugin gets the value, key, timestamp and headers, in batches
//! of one topic and partition as the pipeline gives them; any other line is
//! an event as it is.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Where a captured record was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Origin {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) headers: BTreeMap<String, String>,
}

/// One line of a capture file. A JSON value is kept as it came, byte for
/// byte (its keys in their order), so the plugin gets what it got from Kafka.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Captured {
    pub(crate) capture: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
}

/// The prefix every envelope starts with (fields are written in order).
const ENVELOPE: &[u8] = b"{\"capture\":";

impl Captured {
    /// The envelope of a record.
    pub(crate) fn of(origin: Origin, payload: &[u8]) -> Self {
        match serde_json::from_slice::<Box<RawValue>>(payload) {
            Ok(value) => Self {
                capture: origin,
                value: Some(value),
                text: None,
            },
            Err(_) => Self {
                capture: origin,
                value: None,
                text: Some(String::from_utf8_lossy(payload).into_owned()),
            },
        }
    }

    /// A line of input read as an envelope: `None` for a plain event, an
    /// error for a line that starts like one but is not.
    pub(crate) fn parse(line: &[u8]) -> anyhow::Result<Option<Self>> {
        if !line.starts_with(ENVELOPE) {
            return Ok(None);
        }
        let captured: Self = serde_json::from_slice(line)
            .context("a line starting with {\"capture\": is not a capture envelope")?;
        if captured.value.is_some() == captured.text.is_some() {
            bail!("a capture envelope holds one of `value` or `text`");
        }
        Ok(Some(captured))
    }

    /// The value's bytes, as the plugin gets them.
    pub(crate) fn payload(&self) -> Vec<u8> {
        match (&self.value, &self.text) {
            (Some(value), _) => value.get().as_bytes().to_vec(),
            (None, Some(text)) => text.as_bytes().to_vec(),
            (None, None) => Vec::new(),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct CaptureArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WEIR_KAFKA", default_value = "127.0.0.1:9092")]
    kafka: String,
    /// The topic to read.
    #[arg(long, required_unless_present = "dead_letters")]
    topic: Option<String>,
    /// Read the dead-letter topic instead: the events that failed, with their
    /// reason, plugin and version in the headers.
    #[arg(long, conflicts_with = "topic")]
    dead_letters: bool,
    /// The dead-letter topic's name.
    #[arg(long, default_value = "weir.dlq")]
    dlq_topic: String,
    /// Stop after this many records.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    max: u64,
    /// Start this many records before the end of each partition (default:
    /// from the beginning).
    #[arg(long)]
    last: Option<i64>,
    /// Only records whose `scenario_id` field is this (a JSON value's).
    #[arg(long)]
    scenario: Option<String>,
    /// Keep waiting for new records after the end, until --max or Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Give up when no record came for this long, seconds.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Write here instead of stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

impl CaptureArgs {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        // Without --topic, --dead-letters was given (clap requires one).
        let topic = self.topic.clone().unwrap_or_else(|| self.dlq_topic.clone());
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            // Assigned, never subscribed: no group is joined and nothing is
            // committed, so capturing moves no replica's offsets.
            .set("group.id", format!("weir-capture-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .context("creating the Kafka consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("cannot reach Kafka at {} (--kafka)", self.kafka))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("topic {topic} does not exist at {}", self.kafka);
        }
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            let start = match self.last {
                Some(n) => Offset::OffsetTail(n.max(0)),
                None => Offset::Beginning,
            };
            assignment
                .add_partition_offset(&topic, partition, start)
                .context("assigning the partitions")?;
        }
        consumer
            .assign(&assignment)
            .context("assigning the partitions")?;

        let mut out: Box<dyn Write> = match &self.out {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        let mut at_end = std::collections::HashSet::new();
        let mut written = 0u64;
        let mut last_record = Instant::now();
        while written < self.max {
            if !self.follow && at_end.len() == partitions.len() {
                break;
            }
            if last_record.elapsed() > Duration::from_secs(self.idle_secs) {
                eprintln!(
                    "weir capture: nothing new for {} s; stopping",
                    self.idle_secs
                );
                break;
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = match message {
                Ok(message) => message,
                Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                    at_end.insert(partition);
                    continue;
                }
                Err(error) => bail!("reading {topic}: {error}"),
            };
            last_record = Instant::now();
            at_end.remove(&message.partition());
            let payload = message.payload().unwrap_or_default();
            if let Some(scenario) = &self.scenario
                && !scenario_is(payload, scenario)
            {
                continue;
            }
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|header| {
                            (
                                header.key.to_owned(),
                                String::from_utf8_lossy(header.value.unwrap_or_default())
                                    .into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let origin = Origin {
                topic: topic.clone(),
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                headers,
            };
            serde_json::to_writer(&mut out, &Captured::of(origin, payload))?;
            out.write_all(b"\n")?;
            written += 1;
        }
        out.flush()?;
        eprintln!("weir capture: {written} records from {topic}");
        Ok(ExitCode::SUCCESS)
    }
}

/// Whether a JSON value's `scenario_id` is `scenario` (a number or a string).
fn scenario_is(payload: &[u8], scenario: &str) -> bool {
    #[derive(Deserialize)]
    struct Routed {
        scenario_id: Option<Value>,
    }
    match serde_json::from_slice::<Routed>(payload).map(|r| r.scenario_id) {
        Ok(Some(Value::String(id))) => id == scenario,
        Ok(Some(Value::Number(id))) => id.to_string() == scenario,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            topic: "weir.dlq".into(),
            partition: 2,
            offset: 41,
            timestamp: Some(1_765_090_800_000),
            key: Some("m0002".into()),
            headers: [("weir.reason".to_owned(), "plugin_trap".to_owned())].into(),
        }
    }

    #[test]
    fn json_values_stay_json_and_others_are_text() {
        let json = Captured::of(origin(), br#"{"h": 10}"#);
        let line = serde_json::to_vec(&json).unwrap();
        assert!(
            line.starts_with(ENVELOPE),
            "{}",
            String::from_utf8_lossy(&line)
        );
        let back = Captured::parse(&line).unwrap().unwrap();
        assert_eq!(back.capture, origin());
        assert_eq!(back.payload(), br#"{"h": 10}"#, "the value as it came");
        let ordered = Captured::of(origin(), br#"{"z":1,"a":2}"#);
        assert_eq!(
            ordered.payload(),
            br#"{"z":1,"a":2}"#,
            "keys keep their order"
        );

        let log = Captured::of(
            origin(),
            b"127.0.0.1 - - [07/Dec/2026] \"GET / HTTP/1.1\" 200",
        );
        let back = Captured::parse(&serde_json::to_vec(&log).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            back.text.as_deref(),
            Some("127.0.0.1 - - [07/Dec/2026] \"GET / HTTP/1.1\" 200")
        );
        assert_eq!(back.payload(), log.text.unwrap().as_bytes());
    }

    #[test]
    fn plain_events_are_not_envelopes_and_broken_envelopes_are_errors() {
        assert!(Captured::parse(br#"{"memberId": "m1"}"#).unwrap().is_none());
        assert!(Captured::parse(b"not json").unwrap().is_none());
        assert!(Captured::parse(br#"{"capture":{"topic":"t"}}"#).is_err());
        assert!(
            Captured::parse(
                br#"{"capture":{"topic":"t","partition":0,"offset":1},"value":1,"text":"x"}"#
            )
            .is_err(),
            "one of value or text"
        );
    }

    #[test]
    fn scenarios_are_matched_as_numbers_or_strings() {
        assert!(scenario_is(br#"{"scenario_id": 5}"#, "5"));
        assert!(scenario_is(br#"{"scenario_id": "5"}"#, "5"));
        assert!(!scenario_is(br#"{"scenario_id": 6}"#, "5"));
        assert!(!scenario_is(b"text", "5"));
    }
}
