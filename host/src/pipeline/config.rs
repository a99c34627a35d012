//! How the pipeline is configured: the `[pipeline]` section, its defaults, and
//! every problem with it at once.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::produce;

/// How the pipeline consumes, batches and commits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; replicas with the same group share the partitions.
    pub group_id: String,
    /// Topics consumed besides those scenarios name in `source` (events that carry a
    /// `scenario_id` field arrive here).
    pub topics: Vec<String>,
    /// Where failed and unroutable events go.
    pub dlq_topic: String,
    /// Where each cycle's results are kept for replays to the sinks (see
    /// `journal.rs`). Made at start when missing, with `journal_partitions`
    /// partitions and the broker's default replication; its retention must
    /// outlast the longest time a sink holds events (the archive's file age)
    /// plus any downtime, or a replay finds its range gone and says so.
    pub journal_topic: String,
    /// Partitions of the journal topic when weir makes it.
    pub journal_partitions: i32,
    /// Most events in one batch cycle.
    pub batch_max_events: usize,
    /// Longest wait for a batch to fill, milliseconds.
    pub batch_linger_ms: u64,
    /// Prefix of the transactional id, which is `<prefix>-<group_id>-<instance>`.
    pub transactional_id_prefix: String,
    /// This replica's name in the transactional id (default: the host name). It must
    /// stay the same across restarts of a replica and differ between replicas of one
    /// group: a restarted replica then fences its crashed predecessor and aborts its
    /// open transaction at once, instead of leaving its partitions' committed offsets
    /// unreadable until the transaction times out.
    pub instance: Option<String>,
    /// How long the broker lets one transaction stay open before it aborts it
    /// (the producer's `transaction.timeout.ms`), milliseconds. It holds a cycle's
    /// produce and commit (the sinks run after it committed), so it must be more
    /// than `call_timeout_ms`.
    /// An open transaction of a replica that died and does not come back holds
    /// read_committed readers of its partitions back this long.
    pub transaction_timeout_ms: u64,
    /// Timeout of one Kafka call (init, commit and abort of a transaction, reading
    /// committed offsets, waiting for deliveries), milliseconds.
    pub call_timeout_ms: u64,
    /// How often the registry generation is checked, milliseconds.
    pub registry_poll_ms: u64,
    /// First retry delay after a failed cycle, milliseconds; doubles up to 5 s.
    pub retry_backoff_ms: u64,
    /// How long a scenario whose plugin's failures were costly in a batch (see
    /// `quarantine_after_ms`) is set aside, seconds: its events go straight to the
    /// dead-letter topic (reason `plugin_quarantined`) instead of costing every
    /// cycle that much again. After that the plugin is tried again. 0 turns
    /// quarantine off.
    pub quarantine_secs: u64,
    /// Wall time a plugin's failed calls (traps, CPU or memory limits alike) may
    /// cost in one batch before its scenario is set aside, milliseconds. Cheap
    /// failures (a plugin refusing bad events, or trapping at once on one) never
    /// reach it; a plugin that spins and then traps, or hits its CPU limit, does.
    pub quarantine_after_ms: u64,
    /// Extra librdkafka settings for the consumer and producer (e.g. security).
    pub kafka: BTreeMap<String, String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "weir".into(),
            topics: vec!["weir.events".into()],
            dlq_topic: "weir.dlq".into(),
            journal_topic: "weir.journal".into(),
            journal_partitions: 6,
            batch_max_events: 16_384,
            batch_linger_ms: 100,
            transactional_id_prefix: "weir".into(),
            instance: None,
            transaction_timeout_ms: 120_000,
            call_timeout_ms: 30_000,
            registry_poll_ms: 500,
            retry_backoff_ms: 100,
            quarantine_secs: 30,
            quarantine_after_ms: 250,
            kafka: BTreeMap::new(),
        }
    }
}

/// Whether `text` is a broker address librdkafka can use: `host:port`, with
/// an optional listener name (`PLAINTEXT://`, `SASL_SSL://`, …) before it.
fn broker_address(text: &str) -> bool {
    let address = match text.split_once("://") {
        Some((listener, rest)) => {
            if listener.is_empty()
                || !listener
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_')
            {
                return false;
            }
            rest
        }
        None => text,
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

impl PipelineConfig {
    /// Every problem with the configuration, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push("pipeline.brokers: empty; give `host:port` of a Kafka broker".into());
        } else if let Some(bad) = self.brokers.split(',').find(|b| !broker_address(b.trim())) {
            problems.push(format!(
                "pipeline.brokers: {:?} is not a broker address; expected host:port[,host:port]                  (a listener name such as PLAINTEXT:// may come first)",
                bad.trim()
            ));
        }
        if self.group_id.trim().is_empty() {
            problems.push("pipeline.group_id: empty; give a consumer group name".into());
        }
        if self.dlq_topic.trim().is_empty() {
            problems.push("pipeline.dlq_topic: empty; give a topic name such as `weir.dlq`".into());
        }
        if self.journal_topic.trim().is_empty() {
            problems.push(
                "pipeline.journal_topic: empty; give a topic name such as `weir.journal`".into(),
            );
        } else if self.journal_topic == self.dlq_topic || self.topics.contains(&self.journal_topic)
        {
            problems.push(format!(
                "pipeline.journal_topic: {:?} is also consumed or the dead-letter topic; give the journal a topic of its own",
                self.journal_topic
            ));
        }
        if !(1..=10_000).contains(&self.journal_partitions) {
            problems.push(format!(
                "pipeline.journal_partitions: {} is out of range; use 1 to 10000",
                self.journal_partitions
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_max_events) {
            problems.push(format!(
                "pipeline.batch_max_events: {} is out of range; use 1 to 1000000",
                self.batch_max_events
            ));
        }
        if self.call_timeout_ms < 1_000 {
            problems.push("pipeline.call_timeout_ms: use at least 1000".into());
        }
        if self.transaction_timeout_ms <= self.call_timeout_ms {
            problems.push(format!(
                "pipeline.transaction_timeout_ms = {} must be more than pipeline.call_timeout_ms = {}: \
                 a transaction outlasts its own commit call",
                self.transaction_timeout_ms, self.call_timeout_ms
            ));
        }
        if let Err(problem) = produce::message_limit(&self.kafka) {
            problems.push(problem);
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        for good in [
            "127.0.0.1:9092",
            "kafka-1.example:19092",
            "PLAINTEXT://k:9092",
            "[::1]:9092",
        ] {
            assert!(broker_address(good), "{good}");
        }
        for bad in [
            "",
            "k",
            "k:",
            "k:0",
            "k:99999",
            "http://k:9092",
            "://k:9092",
            "k 1:9092",
            ":9092",
        ] {
            assert!(!broker_address(bad), "{bad}");
        }
    }
}
