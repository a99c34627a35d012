//! The pipeline against real Kafka and Redis: every input event accounted for exactly
//! once across the output and dead-letter topics (read `read_committed`), counters
//! that match, and a restart that resumes where the last commit left off.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weir::aggregate::CountersSink;
use weir::aggregate::{Counters, CountersConfig, Totals};
use weir::pipeline::sink::Sink;
use weir::pipeline::{Metrics, Pipeline, PipelineConfig};
use weir::registry::{MakeCurrent, Member, PutMode, Registry};
use weir::runtime::{Runtime, RuntimeConfig};
use weir::telemetry::Telemetry;
use weir_integration::{Service, unique};

const PARTITIONS: i32 = 3;

/// Creates `topics` with [`PARTITIONS`] partitions each.
pub(crate) async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        // The brokers' default replication: 1 on the single broker, 3 on the
        // cluster. No time-based retention: test events carry timestamps days in
        // the past, which a retention check would delete before they are read.
        .map(|t| {
            NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(-1)).set("retention.ms", "-1")
        })
        .collect();
    for result in admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topics")
    {
        result.expect("topic created");
    }
}

pub(crate) async fn produce(brokers: &str, topic: &str, events: Vec<(Option<String>, Vec<u8>)>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("message.timeout.ms", "60000")
        // Room for the oversized events some tests send (the broker takes ~1 MiB).
        .set("message.max.bytes", "1040000")
        .create()
        .expect("producer");
    let sends = events.into_iter().map(|(key, value)| {
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            let mut record = FutureRecord::to(&topic).payload(&value);
            if let Some(key) = &key {
                record = record.key(key);
            }
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for result in futures::future::join_all(sends).await {
        result.expect("produce");
    }
}

/// A registry on a fresh SQLite file with the shipped plugins.
async fn registry() -> Registry {
    let dir = std::env::temp_dir().join(unique("weir-pipeline"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    registry_in(&dir).await
}

/// A registry on `<dir>/registry.db` with the shipped plugins (`scenario`,
/// `access-log`).
pub(crate) async fn registry_in(dir: &std::path::Path) -> Registry {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let url = format!("sqlite://{}", dir.join("registry.db").display());
    let registry = Registry::connect(&url, runtime).await.expect("registry");
    for (name, path) in [
        ("scenario", weir_artifacts::PLUGIN_SCENARIO),
        ("access-log", weir_artifacts::PLUGIN_ACCESS_LOG),
    ] {
        let bytes = std::fs::read(path).expect("plugin artifact");
        registry
            .upload_plugin(bytes, Some(name), "test", MakeCurrent::IfNew)
            .await
            .expect("upload");
    }
    registry
}

/// One record read back, with the headers the accounting needs.
#[derive(Debug, Clone)]
pub(crate) struct ReadBack {
    value: Vec<u8>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: HashMap<String, String>,
}

impl ReadBack {
    /// The record's value.
    pub(crate) fn value(&self) -> &[u8] {
        &self.value
    }
}

/// What `weir::service::start` runs for a test on the real broker: the
/// pipeline on `events` with `dlq`, counters in memory, the archive under
/// `dir`, no collector, and `alerts`.
pub(crate) fn service_plan(
    (brokers, group): (&str, &str),
    (events, dlq): (&str, &str),
    dir: &std::path::Path,
    alerts: weir::alert::AlertsConfig,
) -> weir::service::PipelinePlan {
    weir::service::PipelinePlan {
        pipeline: PipelineConfig {
            brokers: brokers.into(),
            group_id: group.into(),
            topics: vec![events.into()],
            dlq_topic: dlq.into(),
            batch_linger_ms: 20,
            registry_poll_ms: 100,
            ..PipelineConfig::default()
        },
        counters: weir::service::CountersSection::default(),
        archive: weir::archive::ArchiveConfig {
            root: dir.join("archive").display().to_string(),
            ..weir::archive::ArchiveConfig::default()
        },
        collect: weir::collect::CollectConfig {
            enabled: false,
            ..weir::collect::CollectConfig::default()
        },
        data_dir: dir.to_path_buf(),
        demo: false,
        demo_events: None,
        alerts,
    }
}

/// Waits until `metrics` counts at least `n` events handled (90 s at most).
pub(crate) async fn handled(metrics: &Metrics, n: u64) {
    let started = Instant::now();
    while metrics.events.load(Ordering::Relaxed) < n {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the pipeline handled {} of {n} events in 90 s",
            metrics.events.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every committed record of `topics` from the start, until `want` arrived and
/// nothing more came for a moment.
pub(crate) fn read_committed(brokers: &str, topics: &[&str], want: usize) -> Vec<ReadBack> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(topics).expect("subscribe");
    let mut got = Vec::new();
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(message) => {
                let message = message.expect("read");
                let mut headers = HashMap::new();
                if let Some(h) = message.headers() {
                    for header in h.iter() {
                        let value =
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                        headers.insert(header.key.to_owned(), value);
                    }
                }
                got.push(ReadBack {
                    value: message.payload().unwrap_or_default().to_vec(),
                    key: message.key().map(<[u8]>::to_vec),
                    headers,
                });
                quiet_since = Instant::now();
            }
            None if got.len() >= want && quiet_since.elapsed() > Duration::from_secs(3) => break,
            None => {}
        }
    }
    got
}

fn pipeline_config(brokers: &str, group: &str, topics: &[&str], dlq: &str) -> PipelineConfig {
    PipelineConfig {
        brokers: brokers.into(),
        group_id: group.into(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        dlq_topic: dlq.into(),
        batch_max_events: 2_000,
        batch_linger_ms: 20,
        registry_poll_ms: 100,
        ..PipelineConfig::default()
    }
}

/// A pipeline running on a thread of its own.
pub(crate) struct Running {
    stop: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    thread: Option<std::thread::JoinHandle<Result<Arc<Metrics>, weir::pipeline::PipelineError>>>,
}

impl Running {
    pub(crate) async fn start(
        config: PipelineConfig,
        registry: &Registry,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Self {
        let stop = CancellationToken::new();
        let pipeline = Pipeline::new(
            config,
            registry.clone(),
            sinks,
            Telemetry::new(),
            stop.clone(),
        )
        .await
        .expect("pipeline");
        let metrics = pipeline.metrics();
        let thread = Some(std::thread::spawn(move || pipeline.run()));
        Self {
            stop,
            metrics,
            thread,
        }
    }

    /// Waits until `metrics.events` reaches `events`; fails if the pipeline stops
    /// first or takes more than 240 s.
    pub(crate) async fn wait_for(&mut self, events: u64) {
        self.wait_until(&format!("{events} events handled"), |m| {
            m.events.load(Ordering::Relaxed) >= events
        })
        .await;
    }

    /// Waits until `done` holds for the metrics; fails if the pipeline stops
    /// first or takes more than 240 s.
    pub(crate) async fn wait_until(&mut self, what: &str, done: impl Fn(&Metrics) -> bool) {
        let started = Instant::now();
        while !done(&self.metrics) {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let ended = self.thread.take().map(|t| t.join().map(|r| r.map(|_| ())));
                panic!("the pipeline stopped early: {ended:?}");
            }
            if started.elapsed() >= Duration::from_secs(240) {
                // How long the pipeline's loop has not turned tells a thread
                // stuck in a call from one that turns and finds nothing.
                let turned = self.metrics.last_turn_ms.load(Ordering::Relaxed);
                let idle_ms = chrono::Utc::now().timestamp_millis() - turned;
                panic!(
                    "not reached in 240 s: {what}; the pipeline's loop last turned {idle_ms} ms \
                     ago; {:?}",
                    self.metrics
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the pipeline thread still runs.
    pub(crate) fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the pipeline gracefully and waits for it.
    pub(crate) async fn stop(mut self) -> Arc<Metrics> {
        self.stop.cancel();
        let thread = self.thread.take().expect("running");
        let finished = tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join");
        finished.expect("pipeline thread").expect("pipeline run");
        self.metrics
    }
}

/// Runs a pipeline on its own thread until `metrics.events` reaches `events`.
pub(crate) async fn run_until(
    config: PipelineConfig,
    registry: &Registry,
    sinks: Vec<Box<dyn Sink>>,
    events: u64,
) -> Arc<Metrics> {
    let mut running = Running::start(config, registry, sinks).await;
    running.wait_for(events).await;
    running.stop().await
}

fn event(scenario: &str, i: usize, with_attributes: bool) -> Value {
    let mut value = json!({
        "scenario_id": scenario,
        "memberId": format!("m{}", i % 50),
        "h": (i % 24) as i64,
        "e_n": if i.is_multiple_of(3) { "구매" } else { "조회" },
        "url": format!("/goods/{}", i % 100),
        "seq": i,
    });
    if with_attributes {
        value["age"] = json!(15 + (i % 30) as i64);
        value["gender"] = json!(if i.is_multiple_of(2) {
            "MALE"
        } else {
            "FEMALE"
        });
    }
    value
}

fn scenario_doc(id: &str, extra: Value) -> Value {
    let mut doc = json!({
        "scenario_id": id,
        "title": "adult male users who clicked buy after 9",
        "manager": "test",
        "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1, "url": 0},
        "filters": [
            {"left": "age", "operator": ">", "right": 20},
            {"left": "gender", "operator": "==", "right": "MALE"},
            {"left": "h", "operator": ">=", "right": 9}
        ],
        "logical_operator": "AND",
        "enabled": true
    });
    for (k, v) in extra.as_object().expect("object") {
        doc[k] = v.clone();
    }
    doc
}

/// Whether `scenario 5`'s filter matches, computed independently of the plugin.
fn matches(event: &Value, members: &HashMap<String, (i64, String)>) -> bool {
    let (age, gender) = match (&event["age"], &event["gender"]) {
        (Value::Number(age), Value::String(g)) => (age.as_i64().unwrap(), g.clone()),
        _ => members[event["memberId"].as_str().unwrap()].clone(),
    };
    age > 20 && gender == "MALE" && event["h"].as_i64().unwrap() >= 9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_accounted_for_exactly_once() {
    let brokers = Service::Kafka.addr();
    let u = unique("p");
    let events_topic = format!("{u}-events");
    let logs_topic = format!("{u}-logs");
    let dlq = format!("{u}-dlq");
    let (out_enriched, out_plain, out_logs) = (
        format!("{u}-out-a"),
        format!("{u}-out-b"),
        format!("{u}-out-logs"),
    );
    create_topics(
        &brokers,
        &[
            &events_topic,
            &logs_topic,
            &dlq,
            &out_enriched,
            &out_plain,
            &out_logs,
        ],
    )
    .await;

    let registry = registry().await;
    let members: HashMap<String, (i64, String)> = (0..50)
        .map(|m| {
            (
                format!("m{m}"),
                (
                    18 + m as i64,
                    if m % 3 == 0 { "MALE" } else { "FEMALE" }.to_owned(),
                ),
            )
        })
        .collect();
    let import: Vec<Member> = members
        .iter()
        .map(|(id, (age, gender))| Member {
            member_id: id.clone(),
            attributes: json!({"age": age, "gender": gender})
                .as_object()
                .unwrap()
                .clone(),
        })
        .collect();
    registry
        .import_members(&import)
        .await
        .expect("import members");
    let (a, b, logs) = (format!("{u}-a"), format!("{u}-b"), format!("{u}-logs"));
    for doc in [
        scenario_doc(
            &a,
            json!({"output_topic": out_enriched, "enrich": {"by": "memberId"}}),
        ),
        scenario_doc(&b, json!({"output_topic": out_plain})),
        json!({"scenario_id": logs, "plugin": "access-log", "source": [logs_topic], "output_topic": out_logs}),
    ] {
        registry
            .put_scenario(doc, None, PutMode::Create, "test")
            .await
            .expect("scenario");
    }

    // 40,000 enriched, 40,000 plain, 1,000 for an unknown scenario, 19,000 log lines
    // of which 1,000 are garbage: 100,000 events.
    let mut json_events = Vec::new();
    let mut expected_matched: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..81_000 {
        let (scenario, attrs) = match i % 81 {
            0 => ("no-such-scenario", true),
            n if n % 2 == 0 => (a.as_str(), false),
            _ => (b.as_str(), true),
        };
        let value = event(scenario, i, attrs);
        if scenario != "no-such-scenario" && matches(&value, &members) {
            *expected_matched.entry(scenario.to_owned()).or_default() += 1;
        }
        json_events.push((
            value["memberId"].as_str().map(str::to_owned),
            serde_json::to_vec(&value).unwrap(),
        ));
    }
    let log_lines: Vec<(Option<String>, Vec<u8>)> = (0..19_000)
        .map(|i| {
            let line = if i % 19 == 0 {
                format!("garbage line {i} that is no log format")
            } else {
                format!(
                    "10.0.{}.{} - - [26/Nov/2026:09:{:02}:00 +0000] \"GET /goods/{i} HTTP/1.1\" 200 {} \"-\" \"Mozilla/5.0 (X11; Linux)\"",
                    i % 200, i % 250, i % 60, 100 + i
                )
            };
            (None, line.into_bytes())
        })
        .collect();
    produce(&brokers, &events_topic, json_events).await;
    produce(&brokers, &logs_topic, log_lines).await;

    let counters_config = CountersConfig {
        url: Service::Redis.addr(),
        key_prefix: "weirtest".into(),
        ..CountersConfig::default()
    };
    let group = unique("group");
    let counters = Counters::connect(&counters_config, &group)
        .await
        .expect("counters");
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(CountersSink::new(
        counters.clone(),
        tokio::runtime::Handle::current(),
    ))];
    let config = pipeline_config(&brokers, &group, &[&events_topic], &dlq);
    let metrics = run_until(config, &registry, sinks, 100_000).await;
    assert_eq!(metrics.events.load(Ordering::Relaxed), 100_000);

    let read = read_committed(
        &brokers,
        &[&out_enriched, &out_plain, &out_logs, &dlq],
        100_000,
    );
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    let mut dead_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_output_plugin: BTreeMap<String, u64> = BTreeMap::new();
    for record in &read {
        let h = &record.headers;
        let source = if let Some(reason) = h.get("weir-reason") {
            *dead_reasons.entry(reason.clone()).or_default() += 1;
            assert!(
                h.contains_key("weir-error"),
                "a dead letter says why: {h:?}"
            );
            (
                h["weir-source-topic"].clone(),
                format!("{}:{}", h["weir-source-partition"], h["weir-source-offset"]),
            )
        } else {
            *per_output_plugin
                .entry(h["weir-plugin"].clone())
                .or_default() += 1;
            assert!(h.contains_key("weir-plugin-version"), "{h:?}");
            (
                h["weir-source-topic"].clone(),
                h["weir-source-offset"].clone(),
            )
        };
        *seen.entry(source).or_default() += 1;
    }
    let doubled = seen.values().filter(|n| **n > 1).count();
    assert_eq!(
        doubled, 0,
        "{doubled} input events produced more than one record"
    );
    assert_eq!(
        seen.len(),
        100_000,
        "every input event has exactly one record out ({} read)",
        read.len()
    );
    assert_eq!(
        dead_reasons.get("unknown_scenario"),
        Some(&1_000),
        "{dead_reasons:?}"
    );
    assert_eq!(
        dead_reasons.get("plugin_error"),
        Some(&1_000),
        "garbage log lines: {dead_reasons:?}"
    );
    assert_eq!(
        per_output_plugin.get("scenario@1"),
        Some(&80_000),
        "{per_output_plugin:?}"
    );
    assert_eq!(
        per_output_plugin.get("access-log@1"),
        Some(&18_000),
        "{per_output_plugin:?}"
    );

    // Enrichment reached the plugin: the enriched scenario's outputs carry member attributes.
    let enriched_sample = read
        .iter()
        .find(|r| {
            r.headers.get("weir-scenario") == Some(&a) && !r.headers.contains_key("weir-reason")
        })
        .expect("an enriched output");
    let sample: Value = serde_json::from_slice(&enriched_sample.value).expect("output JSON");
    assert!(
        sample["age"].is_number() && sample["gender"].is_string(),
        "{sample}"
    );

    // The counters agree with an independent count.
    for (scenario, total) in [(&a, 40_000u64), (&b, 40_000), (&logs, 19_000)] {
        let got = counters.totals(scenario).await.expect("totals");
        let matched = expected_matched
            .get(scenario.as_str())
            .copied()
            .unwrap_or(0);
        let (errors, dropped) = if scenario == &logs {
            (1_000, 0)
        } else {
            (0, 0)
        };
        if scenario == &logs {
            assert_eq!(
                (got.total, got.errors, got.dropped),
                (total, errors, dropped),
                "{scenario}"
            );
        } else {
            assert_eq!(
                got,
                Totals {
                    total,
                    matched,
                    errors,
                    dropped
                },
                "{scenario}"
            );
        }
    }
}

/// Fresh topics, a registry and one scenario 5 writing to its own output topic.
struct OneScenario {
    brokers: String,
    events_topic: String,
    out: String,
    dlq: String,
    registry: Registry,
    id: String,
}

async fn one_scenario(name: &str) -> OneScenario {
    let brokers = Service::Kafka.addr();
    let u = unique(name);
    let (events_topic, out, dlq) = (
        format!("{u}-events"),
        format!("{u}-out"),
        format!("{u}-dlq"),
    );
    create_topics(&brokers, &[&events_topic, &out, &dlq]).await;
    let registry = registry().await;
    let id = format!("{u}-s");
    registry
        .put_scenario(
            scenario_doc(&id, json!({"output_topic": out})),
            None,
            PutMode::Create,
            "test",
        )
        .await
        .expect("scenario");
    OneScenario {
        brokers,
        events_topic,
        out,
        dlq,
        registry,
        id,
    }
}

/// Source positions (`partition:offset`) of the outputs of `records`, by plugin label.
fn outputs_by_source(records: &[ReadBack]) -> HashMap<String, Vec<String>> {
    let mut by_source: HashMap<String, Vec<String>> = HashMap::new();
    for record in records
        .iter()
        .filter(|r| !r.headers.contains_key("weir-reason"))
    {
        by_source
            .entry(record.headers["weir-source-offset"].clone())
            .or_default()
            .push(record.headers["weir-plugin"].clone());
    }
    by_source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swap_under_load_takes_effect_between_batches() {
    let brokers = Service::Kafka.addr();
    let u = unique("swap");
    let (events_topic, out, dlq) = (
        format!("{u}-events"),
        format!("{u}-out"),
        format!("{u}-dlq"),
    );
    create_topics(&brokers, &[&events_topic, &out, &dlq]).await;
    let registry = registry().await;
    let scenario_bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("artifact");
    let passthrough_bytes = std::fs::read(weir_artifacts::FIXTURE_PASSTHROUGH).expect("artifact");
    registry
        .upload_plugin(scenario_bytes, Some("swap"), "test", MakeCurrent::IfNew)
        .await
        .expect("v1");
    let id = format!("{u}-s");
    registry
        .put_scenario(
            scenario_doc(&id, json!({"plugin": "swap", "output_topic": out})),
            None,
            PutMode::Create,
            "test",
        )
        .await
        .expect("scenario");

    let group = unique("group");
    let stop = CancellationToken::new();
    let mut config = pipeline_config(&brokers, &group, &[&events_topic], &dlq);
    config.batch_max_events = 500;
    let pipeline = Pipeline::new(
        config,
        registry.clone(),
        Vec::new(),
        Telemetry::new(),
        stop.clone(),
    )
    .await
    .expect("pipeline");
    let metrics = pipeline.metrics();
    let thread = std::thread::spawn(move || pipeline.run());

    // Events flow in ten waves; the new version is uploaded once the first has
    // handled some (swaps follow processing, not production).
    let total = 30_000usize;
    for wave in 0..10 {
        let events = (wave * 3_000..(wave + 1) * 3_000)
            .map(|i| (None, serde_json::to_vec(&event(&id, i, true)).unwrap()))
            .collect();
        produce(&brokers, &events_topic, events).await;
        if wave == 3 {
            let started = Instant::now();
            while metrics.events.load(Ordering::Relaxed) < 6_000 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "pipeline stuck"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            registry
                .upload_plugin(
                    passthrough_bytes.clone(),
                    Some("swap"),
                    "test",
                    MakeCurrent::IfNew,
                )
                .await
                .expect("v2");
        }
    }
    let started = Instant::now();
    while metrics.events.load(Ordering::Relaxed) < total as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "pipeline too slow or stuck"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .unwrap()
        .unwrap()
        .expect("run");

    let read = read_committed(&brokers, &[&out, &dlq], total);
    let by_source = outputs_by_source(&read);
    assert_eq!(by_source.len(), total, "every event has an output");
    assert!(
        by_source.values().all(|labels| labels.len() == 1),
        "no event has two outputs"
    );
    // Per partition, in offset order, the version changes once and never back.
    let mut per_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (source, labels) in &by_source {
        let (p, o) = source.split_once(':').expect("partition:offset");
        per_partition
            .entry(p.parse().unwrap())
            .or_default()
            .push((o.parse().unwrap(), labels[0].clone()));
    }
    let mut labels_seen = std::collections::BTreeSet::new();
    for (partition, mut outputs) in per_partition {
        outputs.sort();
        // In offset order a partition's outputs go from the first version to the
        // second at most once, and never back.
        let switches: Vec<_> = outputs.windows(2).filter(|w| w[0].1 != w[1].1).collect();
        assert!(
            switches.len() <= 1,
            "partition {partition} went back and forth between versions"
        );
        if let Some(switch) = switches.first() {
            assert_eq!(
                (switch[0].1.as_str(), switch[1].1.as_str()),
                ("swap@1", "swap@2"),
                "partition {partition}"
            );
        }
        labels_seen.extend(outputs.into_iter().map(|(_, label)| label));
    }
    assert_eq!(
        labels_seen.into_iter().collect::<Vec<_>>(),
        ["swap@1", "swap@2"],
        "both versions ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_plugin_hurts_only_its_own_scenario() {
    let brokers = Service::Kafka.addr();
    let u = unique("hostile");
    let (events_topic, out_good, out_bad, dlq) = (
        format!("{u}-events"),
        format!("{u}-good"),
        format!("{u}-bad"),
        format!("{u}-dlq"),
    );
    create_topics(&brokers, &[&events_topic, &out_good, &out_bad, &dlq]).await;
    let registry = registry().await;
    let endless = std::fs::read(weir_artifacts::FIXTURE_ENDLESS_LOOP).expect("artifact");
    registry
        .upload_plugin(endless, Some("endless-loop"), "test", MakeCurrent::IfNew)
        .await
        .expect("upload");
    let (good, bad) = (format!("{u}-good"), format!("{u}-bad"));
    registry
        .put_scenario(
            scenario_doc(&good, json!({"output_topic": out_good})),
            None,
            PutMode::Create,
            "test",
        )
        .await
        .expect("good scenario");
    registry
        .put_scenario(
            json!({"scenario_id": bad, "plugin": "endless-loop", "output_topic": out_bad}),
            None,
            PutMode::Create,
            "test",
        )
        .await
        .expect("bad scenario");

    // 19,999 events for the good scenario, 61 for the endless loop, interleaved.
    let mut events = Vec::new();
    let (mut good_count, mut good_matched) = (0u64, 0u64);
    for i in 0..20_060 {
        let scenario = if i % 334 == 0 { &bad } else { &good };
        let value = event(scenario, i, true);
        if scenario == &good {
            good_count += 1;
            good_matched += u64::from(matches(&value, &HashMap::new()));
        }
        events.push((None, serde_json::to_vec(&value).unwrap()));
    }
    let bad_count = events.len() as u64 - good_count;
    produce(&brokers, &events_topic, events).await;

    let group = unique("group");
    let counters_config = CountersConfig {
        url: Service::Redis.addr(),
        key_prefix: "weirtest".into(),
        ..CountersConfig::default()
    };
    let counters = Counters::connect(&counters_config, &group)
        .await
        .expect("counters");
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(CountersSink::new(
        counters.clone(),
        tokio::runtime::Handle::current(),
    ))];
    let metrics = run_until(
        pipeline_config(&brokers, &group, &[&events_topic], &dlq),
        &registry,
        sinks,
        20_060,
    )
    .await;

    let read = read_committed(&brokers, &[&out_good, &out_bad, &dlq], 20_060);
    let good_outputs = read
        .iter()
        .filter(|r| r.headers.get("weir-scenario") == Some(&good))
        .count();
    assert_eq!(
        good_outputs as u64, good_count,
        "the good scenario produced all its outputs"
    );
    let dead: Vec<&ReadBack> = read
        .iter()
        .filter(|r| r.headers.contains_key("weir-reason"))
        .collect();
    assert_eq!(
        dead.len() as u64,
        bad_count,
        "every event of the hostile scenario was dead-lettered"
    );
    for letter in &dead {
        assert_eq!(letter.headers["weir-scenario"], bad);
        assert_eq!(letter.headers["weir-plugin"], "endless-loop@1");
        let reason = letter.headers["weir-reason"].as_str();
        assert!(
            reason == "cpu_limit" || reason == "plugin_quarantined",
            "{reason}"
        );
    }
    let good_totals = counters.totals(&good).await.expect("totals");
    assert_eq!(
        (good_totals.total, good_totals.matched),
        (good_count, good_matched)
    );
    assert_eq!(
        counters.totals(&bad).await.expect("totals").errors,
        bad_count
    );
    assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), bad_count);
}

/// Where a source event ended up: `partition:offset`, from an output's or a dead
/// letter's headers.
fn source_of(record: &ReadBack) -> String {
    match record.headers.get("weir-source-partition") {
        Some(partition) => format!("{partition}:{}", record.headers["weir-source-offset"]),
        None => record.headers["weir-source-offset"].clone(),
    }
}

/// Runs `good` events for the good scenario and, interleaved on the same topic,
/// `hostile` events for each hostile scenario; returns what was read back and the
/// wall time the pipeline took.
async fn run_mix(
    registry: &Registry,
    u: &str,
    good: &str,
    hostile: &[String],
    good_events: usize,
    hostile_events: usize,
) -> (Vec<ReadBack>, Duration, u64) {
    let brokers = Service::Kafka.addr();
    let (events_topic, dlq) = (format!("{u}-events"), format!("{u}-dlq"));
    let outputs: Vec<String> = std::iter::once(good)
        .chain(hostile.iter().map(String::as_str))
        .map(|id| format!("{id}-out"))
        .collect();
    let mut topics: Vec<&str> = outputs.iter().map(String::as_str).collect();
    topics.extend([events_topic.as_str(), dlq.as_str()]);
    create_topics(&brokers, &topics).await;
    let mut events = Vec::new();
    let every = good_events / hostile_events.max(1);
    for i in 0..good_events {
        events.push((None, serde_json::to_vec(&event(good, i, true)).unwrap()));
        if hostile_events > 0 && i % every == 0 {
            for scenario in hostile {
                events.push((None, serde_json::to_vec(&event(scenario, i, true)).unwrap()));
            }
        }
    }
    let total = events.len();
    produce(&brokers, &events_topic, events).await;
    let started = Instant::now();
    run_until(
        pipeline_config(&brokers, &unique("group"), &[&events_topic], &dlq),
        registry,
        Vec::new(),
        total as u64,
    )
    .await;
    let took = started.elapsed();
    let mut read_from: Vec<&str> = outputs.iter().map(String::as_str).collect();
    read_from.push(&dlq);
    (
        read_committed(&brokers, &read_from, total),
        took,
        total as u64,
    )
}

/// Every hostile class at once beside a good scenario on one topic: a plugin
/// that sleeps in every export, one that spins forever, one that spins and then
/// traps, one that floods records. The good scenario gets every output once and
/// keeps flowing (its run takes at most a few times as long as alone), and every
/// hostile event ends up exactly once: an output, or a dead letter naming the
/// plugin and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_class_stays_in_its_own_scenario() {
    let registry = registry().await;
    let u = unique("classes");
    let hostile_plugins = [
        ("sleeper", weir_artifacts::FIXTURE_SLEEPER, json!({})),
        (
            "endless-loop",
            weir_artifacts::FIXTURE_ENDLESS_LOOP,
            json!({}),
        ),
        ("slow-trap", weir_artifacts::FIXTURE_SLOW_TRAP, json!({})),
        (
            "bad-output",
            weir_artifacts::FIXTURE_BAD_OUTPUT,
            json!({"mode": "record-flood"}),
        ),
    ];
    let mut hostile = Vec::new();
    for (name, path, config) in &hostile_plugins {
        let bytes = std::fs::read(path).expect("artifact");
        registry
            .upload_plugin(bytes, Some(name), "test", MakeCurrent::IfNew)
            .await
            .expect("upload");
        let id = format!("{u}-{name}");
        let mut doc =
            json!({"scenario_id": id, "plugin": name, "output_topic": format!("{id}-out")});
        for (k, v) in config.as_object().unwrap() {
            doc[k] = v.clone();
        }
        registry
            .put_scenario(doc, None, PutMode::Create, "test")
            .await
            .unwrap_or_else(|e| panic!("{name} scenario: {e}"));
        hostile.push(id);
    }
    let alone = format!("{u}-alone");
    let good = format!("{u}-good");
    for id in [&alone, &good] {
        registry
            .put_scenario(
                scenario_doc(id, json!({"output_topic": format!("{id}-out")})),
                None,
                PutMode::Create,
                "test",
            )
            .await
            .expect("good scenario");
    }

    const GOOD: usize = 8_000;
    let (_, alone_took, _) = run_mix(&registry, &format!("{u}-a"), &alone, &[], GOOD, 0).await;
    let (read, mixed_took, total) =
        run_mix(&registry, &format!("{u}-m"), &good, &hostile, GOOD, 40).await;
    println!(
        "good scenario alone: {alone_took:?}; beside four hostile ones: {mixed_took:?} ({:.1}x)",
        mixed_took.as_secs_f64() / alone_took.as_secs_f64()
    );

    let mut by_scenario: HashMap<String, Vec<&ReadBack>> = HashMap::new();
    for record in &read {
        by_scenario
            .entry(record.headers["weir-scenario"].clone())
            .or_default()
            .push(record);
    }
    assert_eq!(
        read.len() as u64,
        total,
        "one output or dead letter per event"
    );
    assert_eq!(by_scenario[&good].len(), GOOD);
    assert!(
        by_scenario[&good]
            .iter()
            .all(|r| !r.headers.contains_key("weir-reason"))
    );
    for (id, (name, _, _)) in hostile.iter().zip(&hostile_plugins) {
        let records = &by_scenario[id];
        let sources: std::collections::HashSet<String> =
            records.iter().map(|r| source_of(r)).collect();
        assert_eq!(
            sources.len(),
            records.len(),
            "{name}: an event accounted for twice"
        );
        assert_eq!(records.len() as u64, (total - GOOD as u64) / 4, "{name}");
        for record in records {
            assert_eq!(record.headers["weir-plugin"], format!("{name}@1"));
            let reason = record.headers.get("weir-reason").map(String::as_str);
            let allowed: &[Option<&str>] = match *name {
                // Its sleeps return at once: every event is handled.
                "sleeper" => &[None],
                "endless-loop" => &[Some("cpu_limit"), Some("plugin_quarantined")],
                "slow-trap" => &[
                    Some("plugin_trap"),
                    Some("cpu_limit"),
                    Some("plugin_quarantined"),
                ],
                // The CPU budget is wall time: on a machine loaded by the rest of
                // the suite a slow batch meets it too, and fails only its own events.
                _ => &[
                    None,
                    Some("output_limit"),
                    Some("cpu_limit"),
                    Some("plugin_quarantined"),
                ],
            };
            assert!(allowed.contains(&reason), "{name}: {reason:?}");
        }
    }
    // A stall (a sleep held for real, a budget per failed call) costs minutes here.
    assert!(
        mixed_took < alone_took * 6 + Duration::from_secs(10),
        "the good scenario slowed from {alone_took:?} alone to {mixed_took:?}"
    );
}

/// One event of 1,000,100 bytes for no scenario among 10,000 good ones: more
/// than the producer takes, so its dead letter carries the first 64 KiB of the
/// value and its size; the good ones are committed once, and nothing stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_to_dead_letter_whole_does_not_wedge_the_pipeline() {
    let OneScenario {
        brokers,
        events_topic,
        out,
        dlq,
        registry,
        id,
    } = one_scenario("poison").await;
    let mut big = json!({"scenario_id": "no-such-scenario", "memberId": "m1"});
    let padding = 1_000_100 - serde_json::to_vec(&big).unwrap().len() - r#","pad":"""#.len();
    big["pad"] = json!("x".repeat(padding));
    let big = serde_json::to_vec(&big).unwrap();
    assert_eq!(big.len(), 1_000_100);
    let mut events: Vec<(Option<String>, Vec<u8>)> = (0..10_000)
        .map(|i| (None, serde_json::to_vec(&event(&id, i, true)).unwrap()))
        .collect();
    events.insert(5_000, (Some("big".to_owned()), big.clone()));
    produce(&brokers, &events_topic, events).await;

    let group = unique("group");
    let metrics = run_until(
        pipeline_config(&brokers, &group, &[&events_topic], &dlq),
        &registry,
        Vec::new(),
        10_001,
    )
    .await;
    assert_eq!(metrics.events.load(Ordering::Relaxed), 10_001);
    assert_eq!(
        metrics.failed_cycles.load(Ordering::Relaxed),
        0,
        "no cycle failed"
    );

    let read = read_committed(&brokers, &[&out, &dlq], 10_001);
    let by_source = outputs_by_source(&read);
    let outputs: usize = by_source.values().map(Vec::len).sum();
    assert_eq!(outputs, 10_000, "every good event once");
    let dead: Vec<&ReadBack> = read
        .iter()
        .filter(|r| r.headers.contains_key("weir-reason"))
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["weir-reason"], "unknown_scenario");
    assert_eq!(dead[0].headers["weir-value-size"], "1000100");
    assert_eq!(dead[0].value, big[..64 << 10]);
}

/// Recreations a single fence may cost: up to the pipeline's own allowance of
/// 3 in 5 minutes (a 4th stops it). Alone it costs one; in a loaded full run
/// it has cost 2, and once 3, for a cause not yet found.
const MAX_EXPECTED_RECREATIONS: u64 = 3;

/// Another producer takes this replica's transactional id mid-stream (as a
/// restarted twin would): the pipeline is fenced, makes a new producer, retries,
/// and every event still ends up exactly once; it does not exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_made_again_and_nothing_is_lost_or_doubled() {
    let OneScenario {
        brokers,
        events_topic,
        out,
        dlq,
        registry,
        id,
    } = one_scenario("fenced").await;
    let group = unique("group");
    let mut config = pipeline_config(&brokers, &group, &[&events_topic], &dlq);
    config.instance = Some("twin".into());
    config.batch_max_events = 500;
    let transactional_id = format!("weir-{group}-twin");
    let mut running = Running::start(config, &registry, Vec::new()).await;
    let wave = |from: usize| {
        (from..from + 5_000)
            .map(|i| (None, serde_json::to_vec(&event(&id, i, true)).unwrap()))
            .collect::<Vec<_>>()
    };
    produce(&brokers, &events_topic, wave(0)).await;
    running.wait_for(1).await;
    // The twin: same transactional id, transactions initialised, so the
    // pipeline's producer is fenced at its next transaction.
    let twin_brokers = brokers.clone();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer as _;
        let twin: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &twin_brokers)
            .set("transactional.id", &transactional_id)
            .create()
            .expect("twin producer");
        twin.init_transactions(Duration::from_secs(30))
            .expect("the twin takes the id");
    })
    .await
    .unwrap();
    produce(&brokers, &events_topic, wave(5_000)).await;
    running.wait_for(10_000).await;
    let metrics = running.stop().await;
    // At least once; never past the pipeline's own allowance, which it did not
    // exceed since it is still running here.
    let recreations = metrics.producer_recreations.load(Ordering::Relaxed);
    assert!(
        (1..=MAX_EXPECTED_RECREATIONS).contains(&recreations),
        "{recreations} recreations"
    );
    let read = read_committed(&brokers, &[&out, &dlq], 10_000);
    let by_source = outputs_by_source(&read);
    assert_eq!(by_source.len(), 10_000, "every event has an output");
    assert!(
        by_source.values().all(|labels| labels.len() == 1),
        "no event has two outputs"
    );
    assert_eq!(metrics.events.load(Ordering::Relaxed), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_commits_and_a_restart_resumes_there() {
    let OneScenario {
        brokers,
        events_topic,
        out,
        dlq,
        registry,
        id,
    } = one_scenario("restart").await;
    let total = 30_000u64;
    let events = (0..total as usize)
        .map(|i| (None, serde_json::to_vec(&event(&id, i, true)).unwrap()))
        .collect();
    produce(&brokers, &events_topic, events).await;

    let group = unique("group");
    let mut config = pipeline_config(&brokers, &group, &[&events_topic], &dlq);
    config.batch_max_events = 1_000;
    // The first process stops part-way; whatever it handled, it committed.
    let first = run_until(config.clone(), &registry, Vec::new(), 10_000).await;
    let handled = first.events.load(Ordering::Relaxed);
    assert!(
        handled >= 10_000 && handled < total,
        "stopped part-way: {handled}"
    );
    let committed_before_restart = read_committed(&brokers, &[&out], handled as usize);
    assert_eq!(
        committed_before_restart.len() as u64,
        handled,
        "the first process committed all it handled"
    );

    // The second process handles exactly the rest.
    let second = run_until(config, &registry, Vec::new(), total - handled).await;
    assert_eq!(
        second.events.load(Ordering::Relaxed),
        total - handled,
        "resumed at the committed offsets"
    );
    let read = read_committed(&brokers, &[&out, &dlq], total as usize);
    let by_source = outputs_by_source(&read);
    assert_eq!(by_source.len() as u64, total);
    assert!(
        by_source.values().all(|labels| labels.len() == 1),
        "no event handled twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_joining_mid_stream_loses_and_doubles_nothing() {
    let OneScenario {
        brokers,
        events_topic,
        out,
        dlq,
        registry,
        id,
    } = one_scenario("rebalance").await;
    let group = unique("group");
    let mut config = pipeline_config(&brokers, &group, &[&events_topic], &dlq);
    config.batch_max_events = 500;

    let wave = |from: usize| {
        let brokers = brokers.clone();
        let topic = events_topic.clone();
        let id = id.clone();
        async move {
            let events = (from..from + 10_000)
                .map(|i| (None, serde_json::to_vec(&event(&id, i, true)).unwrap()))
                .collect();
            produce(&brokers, &topic, events).await;
        }
    };

    let stop = CancellationToken::new();
    // Two replicas of one group need names of their own in the transactional id.
    config.instance = Some("replica-1".into());
    let first = Pipeline::new(
        config.clone(),
        registry.clone(),
        Vec::new(),
        Telemetry::new(),
        stop.clone(),
    )
    .await
    .expect("first");
    let first_metrics = first.metrics();
    let first_thread = std::thread::spawn(move || first.run());
    wave(0).await;
    wave(10_000).await;
    // The second replica joins while the first is busy: the group rebalances.
    config.instance = Some("replica-2".into());
    let second = Pipeline::new(
        config,
        registry.clone(),
        Vec::new(),
        Telemetry::new(),
        stop.clone(),
    )
    .await
    .expect("second");
    let second_metrics = second.metrics();
    let second_thread = std::thread::spawn(move || second.run());
    // Waves go on until the second replica has taken a share (and two more after).
    // A cooperative rebalance takes two generations, each waiting seconds for
    // the busy first replica to rejoin: the waves are paced so that the join
    // happens mid-stream, not after a stream produced faster than that.
    let mut total = 20_000u64;
    let mut after_share = 0;
    while after_share < 2 {
        assert!(
            total < 400_000,
            "the second replica took no share of {total} events"
        );
        wave(total as usize).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        total += 10_000;
        if second_metrics.events.load(Ordering::Relaxed) > 0 {
            after_share += 1;
        }
    }
    let started = Instant::now();
    let handled = || {
        first_metrics.events.load(Ordering::Relaxed) + second_metrics.events.load(Ordering::Relaxed)
    };
    while handled() < total {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "handled {} of {total}",
            handled()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for thread in [first_thread, second_thread] {
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .unwrap()
            .expect("run");
    }
    assert!(
        second_metrics.events.load(Ordering::Relaxed) > 0,
        "the second replica took a share"
    );
    // Cooperative rebalancing: the first replica gave up only what moved, and
    // kept (with its open files) the rest of its partitions.
    let revoked = first_metrics.revoked_partitions.load(Ordering::Relaxed);
    assert!(
        (1..PARTITIONS as u64).contains(&revoked),
        "the first replica gave up {revoked} of {PARTITIONS} partitions"
    );
    // What it had handled of them and not committed yet (if any, at that
    // moment) was committed as they went.
    println!(
        "revoked {revoked}; committed as they went: {}",
        first_metrics.revoke_commits.load(Ordering::Relaxed)
    );

    let read = read_committed(&brokers, &[&out, &dlq], total as usize);
    let by_source = outputs_by_source(&read);
    assert_eq!(by_source.len() as u64, total, "every event has an output");
    assert!(
        by_source.values().all(|labels| labels.len() == 1),
        "no event has two outputs"
    );
    assert_eq!(
        handled(),
        total,
        "the replicas' committed counts add up exactly"
    );
}
