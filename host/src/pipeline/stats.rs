//! What the pipeline counted, for `/metrics`, the stats API, the dashboard and
//! the alerts: [`Metrics`], shared between the pipeline thread and the rest.
//! The plain atomics are what tests and decisions read; [`Metrics::export`]
//! copies them into the service's [`Telemetry`] when it is scraped. Figures
//! with labels or distributions (per scenario, per stage, per plugin) are
//! recorded into the telemetry where they happen.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use super::{Quarantine, sink};
use crate::telemetry::Telemetry;

/// How many of the latest dead letters [`Metrics::recent_dead_letters`] keeps.
pub const RECENT_DEAD_LETTERS: usize = 20;

/// Bytes of a dead letter's value kept for its preview.
pub const PREVIEW_BYTES: usize = 200;

/// Bytes of an error message kept for the dashboard (plugin errors may echo
/// the whole event).
pub const ERROR_BYTES: usize = 300;

/// The first `max` bytes of `text`, cut at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One of the latest dead letters, as `/api/pipeline` and the dashboard
/// list them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecentDeadLetter {
    /// When it was committed, RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    /// The reason code (`plugin_error`, `unrouted`, …).
    pub reason: String,
    /// The error message (at most [`ERROR_BYTES`]).
    pub error: String,
    /// The scenario, when the event reached one.
    pub scenario: Option<String>,
    /// `name@registry-version` of the plugin, when one ran.
    pub plugin: Option<String>,
    /// Source topic, partition and offset.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The first [`PREVIEW_BYTES`] bytes of the value, lossily as UTF-8.
    pub preview: String,
}

impl RecentDeadLetter {
    /// The summary of `letter`, committed now.
    pub(super) fn of(letter: &super::produce::DeadLetter<'_>) -> Self {
        use rdkafka::message::Message;
        let message = letter.message;
        let value = message.payload().unwrap_or_default();
        let mut end = value.len().min(PREVIEW_BYTES);
        // Whole characters only: step back off a continuation byte.
        while end > 0 && end < value.len() && (value[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        Self {
            at: chrono::Utc::now().to_rfc3339(),
            reason: letter.reason.as_str().to_owned(),
            error: cut(&letter.error, ERROR_BYTES).to_owned(),
            scenario: letter.scenario.map(|r| r.id.clone()),
            plugin: letter.scenario.map(|r| r.plugin_label.clone()),
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            preview: String::from_utf8_lossy(&value[..end]).into_owned(),
        }
    }
}

/// A sink that keeps failing.
#[derive(Debug, Clone, Serialize)]
pub struct SinkFailing {
    /// Since when, Unix milliseconds.
    pub since_ms: i64,
    /// Its last error.
    pub error: String,
}

/// What the consumer's client last said of its brokers.
#[derive(Debug, Clone, Default)]
pub struct KafkaSeen {
    /// Some broker was up at the last statistics; `None` before the first.
    pub reachable: Option<bool>,
    /// librdkafka's last error, as it said it.
    pub error: Option<String>,
}

/// Counters of what the pipeline did, for metrics and tests.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Where every figure is exported from (`GET /metrics`).
    pub telemetry: Telemetry,
    /// Events consumed and handled (committed); not those replayed to the sinks.
    pub events: AtomicU64,
    /// Output records produced (committed).
    pub outputs: AtomicU64,
    /// Events sent to the dead-letter topic (committed).
    pub dead_letters: AtomicU64,
    /// Dead letters by reason code.
    pub dead_letters_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Batch cycles committed.
    pub cycles: AtomicU64,
    /// Batch cycles that failed and were retried, and turns without events whose
    /// sinks or offset commit failed.
    pub failed_cycles: AtomicU64,
    /// Events consumed again for the sinks only: their outputs were produced before a
    /// restart or rebalance, but a sink had not made them durable yet.
    pub replayed: AtomicU64,
    /// Registry generation in use.
    pub generation: AtomicU64,
    /// Times a scenario was set aside for its plugin's costly failures.
    pub quarantines: AtomicU64,
    /// Scenarios set aside now, by scenario id.
    pub quarantined: Mutex<BTreeMap<String, Quarantine>>,
    /// Dead letters the producer refused even cut down: a marker without the
    /// value was produced instead.
    pub unproducible_dead_letters: AtomicU64,
    /// Partitions taken from this replica by rebalances.
    pub revoked_partitions: AtomicU64,
    /// Times the producer was made again after a fatal error.
    pub producer_recreations: AtomicU64,
    /// Partitions whose durable offsets were committed as they were revoked.
    pub revoke_commits: AtomicU64,
    /// Events whose results a replay needed but the journal no longer had (or
    /// never had): the sinks miss them, and a log line names each range.
    pub replay_missing: AtomicU64,
    /// Times the sinks failed to take committed results, which were kept and
    /// handed again.
    pub sink_failures: AtomicU64,
    /// Events whose results were read back from the journal for a sink that had
    /// lost them (Redis rolled back).
    pub recounted: AtomicU64,
    /// The sinks' own counters ([`sink::Sink::counts`]), by metric name.
    pub sink_counts: Mutex<BTreeMap<&'static str, sink::SinkCount>>,
    /// The sinks' own gauges ([`sink::Sink::gauges`]), by name.
    pub sink_gauges: Mutex<BTreeMap<&'static str, f64>>,
    /// Records not consumed yet, per assigned partition, from the consumer's
    /// statistics (every `statistics.interval.ms`).
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Sinks failing now: since when (Unix ms) and the last error.
    pub sink_failing: Mutex<BTreeMap<&'static str, SinkFailing>>,
    /// What each scenario's shadow candidate did beside its plugin, by scenario id.
    pub shadows: Mutex<BTreeMap<String, super::shadow::ShadowStats>>,
    /// What each scenario's canary and its plugin did on this replica, by scenario id.
    pub canaries: Mutex<BTreeMap<String, super::canary::CanaryStats>>,
    /// The consumer has been given its partitions (possibly none) at least once.
    pub assigned: AtomicBool,
    /// When the loop last turned (fetched, waited on purpose or committed), Unix ms.
    pub last_turn_ms: AtomicI64,
    /// Whether a broker answered at the consumer's last statistics (every
    /// `statistics.interval.ms`), and librdkafka's last error.
    pub kafka: Mutex<KafkaSeen>,
    /// The latest dead letters committed, newest last, at most [`RECENT_DEAD_LETTERS`].
    pub recent_dead_letters: Mutex<VecDeque<RecentDeadLetter>>,
    /// Every scenario ever quarantined here, with its plugin: their gauge goes
    /// back to 0 once lifted.
    quarantine_seen: Mutex<BTreeMap<String, String>>,
    /// Partitions whose lag was exported, so that a revoked one goes back to 0.
    lag_seen: Mutex<BTreeSet<(String, i32)>>,
    /// Sinks that ever failed, so that their gauges go back to 0.
    sink_failing_seen: Mutex<BTreeSet<&'static str>>,
    /// `(Unix ms, events)` taken every second ([`Metrics::sample`]), the last
    /// [`RATE_SAMPLES`].
    samples: Mutex<VecDeque<(i64, u64)>>,
}

/// How many samples of the event count are kept for the rate.
const RATE_SAMPLES: usize = 16;

impl Metrics {
    /// Counters recording into `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            telemetry,
            ..Self::default()
        }
    }

    /// Adds committed dead letters to the latest ones.
    pub(super) fn note_dead_letters(&self, letters: Vec<RecentDeadLetter>) {
        if letters.is_empty() {
            return;
        }
        let mut recent = self.recent_dead_letters.lock().expect("metrics lock");
        for letter in letters {
            if recent.len() == RECENT_DEAD_LETTERS {
                recent.pop_front();
            }
            recent.push_back(letter);
        }
    }

    /// Notes that `sink` failed with `error`, or (`None`) that it took
    /// results again. True when this begins or ends a streak of failures: the
    /// change worth a log line (the rest of a streak is not).
    pub(super) fn note_sink(&self, sink: &'static str, error: Option<String>) -> bool {
        let mut failing = self.sink_failing.lock().expect("metrics lock");
        match error {
            Some(error) => {
                let before = failing.get(sink).map(|f| f.since_ms);
                let since_ms = before.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
                let error = cut(&error, ERROR_BYTES).to_owned();
                failing.insert(sink, SinkFailing { since_ms, error });
                before.is_none()
            }
            None => failing.remove(sink).is_some(),
        }
    }

    /// The loop turned now.
    pub(super) fn note_turn(&self) {
        self.last_turn_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Notes the event count at `now_ms`; the service calls it every second.
    pub fn sample(&self, now_ms: i64) {
        let mut samples = self.samples.lock().expect("metrics lock");
        if samples.len() == RATE_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((now_ms, self.events.load(Ordering::Relaxed)));
    }

    /// Events committed per second over the samples kept (about 15 s).
    pub fn events_per_second(&self) -> f64 {
        let samples = self.samples.lock().expect("metrics lock");
        match (samples.front(), samples.back()) {
            (Some(&(t0, e0)), Some(&(t1, e1))) if t1 > t0 => {
                e1.saturating_sub(e0) as f64 * 1000.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }

    /// The quarantines in force now.
    pub fn quarantined_now(&self) -> BTreeMap<String, Quarantine> {
        self.quarantined.lock().expect("metrics lock").clone()
    }

    /// Copies the atomics, the gauges and the sinks' counts into the
    /// telemetry, before it is rendered.
    pub fn export(&self) {
        let t = &self.telemetry;
        for (name, value) in [
            ("weir_events_total", &self.events),
            ("weir_outputs_total", &self.outputs),
            ("weir_cycles_total", &self.cycles),
            ("weir_failed_cycles_total", &self.failed_cycles),
            ("weir_replayed_events_total", &self.replayed),
            ("weir_replay_missing_events_total", &self.replay_missing),
            ("weir_recounted_events_total", &self.recounted),
            ("weir_sink_failures_total", &self.sink_failures),
            (
                "weir_unproducible_dead_letters_total",
                &self.unproducible_dead_letters,
            ),
            ("weir_revoked_partitions_total", &self.revoked_partitions),
            ("weir_revoke_commits_total", &self.revoke_commits),
            (
                "weir_producer_recreations_total",
                &self.producer_recreations,
            ),
            ("weir_quarantines_total", &self.quarantines),
        ] {
            t.counter(name, &[]).absolute(value.load(Ordering::Relaxed));
        }
        for (reason, n) in self
            .dead_letters_by_reason
            .lock()
            .expect("metrics lock")
            .iter()
        {
            t.counter("weir_dead_letters_total", &[("reason", reason)])
                .absolute(*n);
        }
        for count in self.sink_counts.lock().expect("metrics lock").values() {
            if let Some(name) = sink_series(count.name) {
                t.counter(name, &[]).absolute(count.value);
            }
        }
        for (name, value) in self.sink_gauges.lock().expect("metrics lock").iter() {
            if let Some(series) = crate::telemetry::SERIES
                .iter()
                .map(|(n, ..)| *n)
                .find(|n| n.strip_prefix("weir_") == Some(name))
            {
                t.gauge(series, &[]).set(*value);
            }
        }
        t.gauge("weir_registry_generation", &[])
            .set(self.generation.load(Ordering::Relaxed) as f64);
        {
            let now = self.quarantined.lock().expect("metrics lock");
            let mut seen = self.quarantine_seen.lock().expect("metrics lock");
            for (scenario, q) in now.iter() {
                seen.insert(scenario.clone(), q.plugin.clone());
            }
            for (scenario, plugin) in seen.iter() {
                let on = now.get(scenario).is_some_and(|q| &q.plugin == plugin);
                t.gauge(
                    "weir_scenario_quarantined",
                    &[("scenario", scenario), ("plugin", plugin)],
                )
                .set(if on { 1.0 } else { 0.0 });
            }
        }
        {
            let lag = self.lag.lock().expect("metrics lock");
            let mut seen = self.lag_seen.lock().expect("metrics lock");
            seen.extend(lag.keys().cloned());
            for tp in seen.iter() {
                let partition = tp.1.to_string();
                t.gauge(
                    "weir_consumer_lag",
                    &[("topic", &tp.0), ("partition", &partition)],
                )
                .set(lag.get(tp).copied().unwrap_or(0) as f64);
            }
        }
        {
            let failing = self.sink_failing.lock().expect("metrics lock");
            let mut seen = self.sink_failing_seen.lock().expect("metrics lock");
            seen.extend(failing.keys().copied());
            let now = chrono::Utc::now().timestamp_millis();
            for sink in seen.iter() {
                let since = failing.get(sink).map(|f| f.since_ms);
                t.gauge("weir_sink_failing", &[("sink", sink)])
                    .set(if since.is_some() { 1.0 } else { 0.0 });
                t.gauge("weir_sink_failing_seconds", &[("sink", sink)])
                    .set(since.map_or(0.0, |s| (now - s).max(0) as f64 / 1000.0));
            }
        }
    }
}

/// The exported name of a sink's own counter ([`sink::SinkCount::name`]).
fn sink_series(name: &str) -> Option<&'static str> {
    crate::telemetry::SERIES.iter().map(|(n, ..)| *n).find(|n| {
        n.strip_prefix("weir_")
            .and_then(|n| n.strip_suffix("_total"))
            == Some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_sets_counters_and_puts_lifted_gauges_back_to_zero() {
        let metrics = Metrics::new(Telemetry::new());
        metrics.events.store(42, Ordering::Relaxed);
        metrics
            .lag
            .lock()
            .unwrap()
            .insert(("hits".to_owned(), 3), 17);
        assert!(
            metrics.note_sink("counters", Some("redis down".to_owned())),
            "a streak begins"
        );
        assert!(
            !metrics.note_sink("counters", Some("redis still down".to_owned())),
            "the same streak"
        );
        metrics.export();
        let text = metrics.telemetry.render();
        assert!(text.contains("weir_events_total 42"), "{text}");
        assert!(
            text.contains(r#"weir_consumer_lag{topic="hits",partition="3"} 17"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_sink_failing{sink="counters"} 1"#),
            "{text}"
        );
        metrics.lag.lock().unwrap().clear();
        assert!(metrics.note_sink("counters", None), "the streak ends");
        assert!(!metrics.note_sink("counters", None), "nothing to end");
        metrics.export();
        let text = metrics.telemetry.render();
        assert!(
            text.contains(r#"weir_consumer_lag{topic="hits",partition="3"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_sink_failing{sink="counters"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[test]
    fn the_rate_spans_the_samples_kept() {
        let metrics = Metrics::default();
        assert_eq!(metrics.events_per_second(), 0.0);
        for second in 0..20u64 {
            metrics.events.store(second * 100, Ordering::Relaxed);
            metrics.sample(second as i64 * 1000);
        }
        assert_eq!(metrics.events_per_second(), 100.0);
    }

    #[test]
    fn the_latest_dead_letters_are_kept_newest_last() {
        let metrics = Metrics::default();
        let letter = |offset| RecentDeadLetter {
            at: String::new(),
            reason: "unrouted".to_owned(),
            error: String::new(),
            scenario: None,
            plugin: None,
            topic: "t".to_owned(),
            partition: 0,
            offset,
            preview: String::new(),
        };
        metrics.note_dead_letters((0..25).map(letter).collect());
        let recent = metrics.recent_dead_letters.lock().unwrap();
        assert_eq!(recent.len(), RECENT_DEAD_LETTERS);
        assert_eq!(recent.front().unwrap().offset, 5);
        assert_eq!(recent.back().unwrap().offset, 24);
    }

    #[test]
    fn every_sink_count_has_an_exported_name() {
        for name in [
            "counters_rollbacks",
            "counters_uncounted_offsets",
            "archive_fences",
            "archive_fenced_out",
        ] {
            assert!(sink_series(name).is_some(), "{name}");
        }
    }
}
