//! The service's metrics: every series weir exports, its help and kind
//! ([`SERIES`]), recorded through the `metrics` facade into a Prometheus
//! recorder that [`Telemetry`] owns, and rendered by the exporter for
//! `GET /metrics`.
//!
//! Each running service has a recorder of its own rather than the
//! process-global one, so several services in one process (the tests, a
//! replica beside a collector) never mix their figures. Code that counts
//! holds a [`Telemetry`] and asks it for a handle ([`Telemetry::counter`] and
//! the like); the hot paths keep their handles or record once per cycle.
//! Counters that the pipeline keeps as plain atomics for its own decisions are
//! copied into the recorder when `/metrics` is read (`Metrics::export`).
//!
//! The names follow Prometheus' conventions (`_total` counters, `_seconds`
//! and `_bytes` units); `docs/observability.md` lists them for operators.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// What kind of series a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, exported with buckets.
    Histogram,
}

/// Every series weir exports: name, kind, help. The Grafana dashboard and the
/// alert rules in `compose/` may name only these (a test checks).
pub const SERIES: &[(&str, Kind, &str)] = &[
    (
        "weir_build_info",
        Kind::Gauge,
        "Always 1; the labels say which weir this is.",
    ),
    // The pipeline.
    (
        "weir_events_total",
        Kind::Counter,
        "Events consumed and committed.",
    ),
    (
        "weir_outputs_total",
        Kind::Counter,
        "Output records committed.",
    ),
    (
        "weir_dead_letters_total",
        Kind::Counter,
        "Events sent to the dead-letter topic, by reason.",
    ),
    (
        "weir_cycles_total",
        Kind::Counter,
        "Batch cycles committed.",
    ),
    (
        "weir_failed_cycles_total",
        Kind::Counter,
        "Batch cycles aborted and retried (Kafka, Redis or archive trouble).",
    ),
    (
        "weir_replayed_events_total",
        Kind::Counter,
        "Events whose results were read back from the journal for the sinks only (outputs produced before a restart or rebalance).",
    ),
    (
        "weir_replay_missing_events_total",
        Kind::Counter,
        "Events a replay needed whose results the journal no longer had; the sinks miss them (a log line names each range).",
    ),
    (
        "weir_recounted_events_total",
        Kind::Counter,
        "Events whose results were read back from the journal for a sink that had lost them (Redis rolled back).",
    ),
    (
        "weir_sink_failures_total",
        Kind::Counter,
        "Times a sink did not take committed results, which were handed to it again.",
    ),
    (
        "weir_unproducible_dead_letters_total",
        Kind::Counter,
        "Dead letters the producer refused even cut down; a marker without the value took their place.",
    ),
    (
        "weir_revoked_partitions_total",
        Kind::Counter,
        "Partitions taken from this replica by consumer-group rebalances.",
    ),
    (
        "weir_revoke_commits_total",
        Kind::Counter,
        "Partitions whose durable offsets were committed as a rebalance took them from this replica.",
    ),
    (
        "weir_producer_recreations_total",
        Kind::Counter,
        "Times the transactional producer was made again after a fatal error (fenced, or its transaction aborted by the broker) or a transactional call that did not return.",
    ),
    (
        "weir_quarantines_total",
        Kind::Counter,
        "Times a scenario was set aside because its plugin's failures were costly.",
    ),
    (
        "weir_scenario_quarantined",
        Kind::Gauge,
        "1 while a scenario is set aside for its plugin's failures, else 0.",
    ),
    (
        "weir_dependency_up",
        Kind::Gauge,
        "1 while a dependency (registry, kafka, redis, archive) is reachable, else 0.",
    ),
    (
        "weir_registry_generation",
        Kind::Gauge,
        "Registry generation the pipeline runs.",
    ),
    (
        "weir_consumer_lag",
        Kind::Gauge,
        "Records of an assigned partition this replica has not consumed yet (the last stable offset minus the consumer's position), from the consumer's statistics every 5 s.",
    ),
    (
        "weir_sink_failing",
        Kind::Gauge,
        "1 while a sink keeps failing to take committed results, else 0.",
    ),
    (
        "weir_sink_failing_seconds",
        Kind::Gauge,
        "How long a sink has been failing, in seconds (0 when it is not).",
    ),
    (
        "weir_cycle_stage_seconds",
        Kind::Histogram,
        "Time a batch cycle spent in each stage: gather, route, plugin, produce, commit, sinks.",
    ),
    (
        "weir_plugin_call_seconds",
        Kind::Histogram,
        "Time of one plugin call (one batch of one scenario), by plugin@version.",
    ),
    (
        "weir_plugin_call_events",
        Kind::Histogram,
        "Events in one plugin call, by plugin@version.",
    ),
    // Per scenario.
    (
        "weir_scenario_events_total",
        Kind::Counter,
        "Events routed to a scenario and committed.",
    ),
    (
        "weir_scenario_matched_total",
        Kind::Counter,
        "Events a scenario's plugin emitted (matched), committed.",
    ),
    (
        "weir_scenario_outputs_total",
        Kind::Counter,
        "Output records of a scenario, committed.",
    ),
    (
        "weir_scenario_dead_letters_total",
        Kind::Counter,
        "Dead letters of a scenario's events, by reason.",
    ),
    (
        "weir_canary_verdicts_total",
        Kind::Counter,
        "Canary candidates this replica rolled back or promoted, by scenario and verdict.",
    ),
    // The sinks.
    (
        "weir_counters_rollbacks_total",
        Kind::Counter,
        "Times Redis was found to have lost counts it had (a restart from a snapshot, an AOF without fsync, a failover); the range was recounted from the journal.",
    ),
    (
        "weir_counters_uncounted_offsets_total",
        Kind::Counter,
        "Source offsets whose counts Redis lost and the journal no longer held; the stats API and a log line name each range.",
    ),
    (
        "weir_redis_script_seconds",
        Kind::Histogram,
        "Time of one counting script call on Redis (one cycle's counts and fences).",
    ),
    (
        "weir_archive_fences_total",
        Kind::Counter,
        "Partitions the archive took over as their writer (fenced their earlier writers).",
    ),
    (
        "weir_archive_fenced_out_total",
        Kind::Counter,
        "Partitions another replica's archive fenced while this one held rows of them; those rows were dropped here and are archived by the owner.",
    ),
    (
        "weir_archive_files_total",
        Kind::Counter,
        "Parquet files the archive made durable (renamed into place).",
    ),
    (
        "weir_archive_bytes_total",
        Kind::Counter,
        "Bytes of the Parquet files the archive made durable.",
    ),
    (
        "weir_archive_open_files",
        Kind::Gauge,
        "Parquet files open for writing now.",
    ),
    // The collector.
    (
        "weir_collect_requests_total",
        Kind::Counter,
        "HTTP requests the collector answered, by endpoint and status code.",
    ),
    (
        "weir_collect_events_total",
        Kind::Counter,
        "Events the collector took and the broker acknowledged, by endpoint.",
    ),
    (
        "weir_collect_refused_total",
        Kind::Counter,
        "Records the collector refused for their content (sent to the bad-records topic), by reason.",
    ),
    (
        "weir_collect_unavailable_total",
        Kind::Counter,
        "Requests answered 503: the broker did not acknowledge in time, or the memory for requests in flight was used up.",
    ),
    (
        "weir_collect_bad_records_lost_total",
        Kind::Counter,
        "Refused records the bad-records topic did not take (each is logged).",
    ),
    (
        "weir_collect_not_recorded_total",
        Kind::Counter,
        "Matomo requests without rec=1: answered, not recorded, as Matomo does.",
    ),
    (
        "weir_tail_lines_total",
        Kind::Counter,
        "Lines of tailed files the broker acknowledged.",
    ),
    (
        "weir_tail_resent_lines_total",
        Kind::Counter,
        "Tailed lines sent again after a restart: they were in flight when weir stopped, and may be in Kafka twice.",
    ),
    (
        "weir_tail_cut_lines_total",
        Kind::Counter,
        "Tailed lines longer than max_line_bytes, cut there.",
    ),
    (
        "weir_tail_truncations_total",
        Kind::Counter,
        "Tailed files found shorter than their offset (copytruncate) and read again from the start.",
    ),
    (
        "weir_tail_failures_total",
        Kind::Counter,
        "Tailed lines the broker did not acknowledge, or reads that failed (retried).",
    ),
    // Alerts.
    (
        "weir_alert_firing",
        Kind::Gauge,
        "1 while an alert rule fires, else 0.",
    ),
    (
        "weir_alert_notifications_total",
        Kind::Counter,
        "Alert notifications, by webhook and outcome (sent, retried, failed).",
    ),
];

/// Bucket bounds of the `_seconds` histograms: 100 µs to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Bucket bounds of `weir_plugin_call_events`.
const EVENT_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

static METADATA: Metadata<'static> = Metadata::new("weir", Level::INFO, Some("weir"));

/// One service's metrics recorder. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// A recorder with every series of [`SERIES`] described, and the build
    /// info set.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("weir_plugin_call_events".into()),
                    EVENT_BUCKETS,
                )
            })
            .expect("the bucket bounds are not empty")
            .build_recorder();
        for &(name, kind, help) in SERIES {
            let (name, help) = (KeyName::from_const_str(name), help.into());
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        let telemetry = Self {
            inner: Arc::new(Inner { recorder, handle }),
        };
        telemetry
            .gauge("weir_build_info", &[("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        telemetry
    }

    /// The counter `name` with `labels`.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.inner
            .recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// The gauge `name` with `labels`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&key(name, labels), &METADATA)
    }

    /// The histogram `name` with `labels`.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.inner
            .recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// Every series in Prometheus' text format.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Folds the histograms' recent samples into their buckets. Rendering does
    /// it too; a service calls this every few seconds so that samples do not
    /// pile up when nobody scrapes.
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    debug_assert!(
        SERIES.iter().any(|(n, ..)| *n == name),
        "{name} is not in telemetry::SERIES"
    );
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_with_help_type_labels_and_buckets() {
        let telemetry = Telemetry::new();
        telemetry
            .counter("weir_scenario_events_total", &[("scenario", "5\"x")])
            .increment(3);
        telemetry
            .histogram("weir_cycle_stage_seconds", &[("stage", "plugin")])
            .record(0.003);
        let text = telemetry.render();
        assert!(
            text.contains("# TYPE weir_scenario_events_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_scenario_events_total{scenario="5\"x"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_cycle_stage_seconds_bucket{stage="plugin",le="0.005"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"weir_build_info{version=""#), "{text}");
    }

    #[test]
    fn two_services_keep_their_own_figures() {
        let (a, b) = (Telemetry::new(), Telemetry::new());
        a.counter("weir_events_total", &[]).increment(7);
        assert!(a.render().contains("weir_events_total 7"));
        assert!(!b.render().contains("weir_events_total 7"));
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for &(name, kind, help) in SERIES {
            assert!(name.starts_with("weir_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(help.ends_with('.') || help.ends_with(')'), "{name}: {help}");
        }
        let mut names: Vec<&str> = SERIES.iter().map(|(n, ..)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERIES.len(), "a name is listed twice");
    }
}
