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
use weir::aggregate::{Counters, CountersConfig, Totals};
use weir::pipeline::sink::{CountersSink, Sink};
use weir::pipeline::{Metrics, Pipeline, PipelineConfig};
use weir::registry::{MakeCurrent, Member, PutMode, Registry};
use weir::runtime::{Runtime, RuntimeConfig};
use weir_integration::{Service, unique};

const PARTITIONS: i32 = 3;

async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
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

async fn produce(brokers: &str, topic: &str, events: Vec<(Option<String>, Vec<u8>)>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("message.timeout.ms", "60000")
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
struct ReadBack {
    value: Vec<u8>,
    headers: HashMap<String, String>,
}

/// Reads every committed record of `topics` from the start, until `want` arrived and
/// nothing more came for a moment.
fn read_committed(brokers: &str, topics: &[&str], want: usize) -> Vec<ReadBack> {
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

/// Runs a pipeline on its own thread until `metrics.events` reaches `events`.
async fn run_until(
    config: PipelineConfig,
    registry: &Registry,
    sinks: Vec<Box<dyn Sink>>,
    events: u64,
) -> Arc<Metrics> {
    let stop = CancellationToken::new();
    let pipeline = Pipeline::new(config, registry.clone(), sinks, stop.clone())
        .await
        .expect("pipeline");
    let metrics = pipeline.metrics();
    let thread = std::thread::spawn(move || pipeline.run());
    let started = Instant::now();
    while metrics.events.load(Ordering::Relaxed) < events {
        assert!(
            !thread.is_finished(),
            "the pipeline stopped early: {:?}",
            thread.join().map(|r| r.map(|_| ()))
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the pipeline handled {} of {events} events in 240 s",
            metrics.events.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let finished = tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join");
    finished.expect("pipeline thread").expect("pipeline run");
    metrics
}

fn event(scenario: &str, i: usize, with_attributes: bool) -> Value {
    let mut value = json!({
        "scenario_id": scenario,
        "memberId": format!("m{}", i % 50),
        "h": (i % 24) as i64,
        "e_n": if i % 3 == 0 { "구매" } else { "조회" },
        "url": format!("/goods/{}", i % 100),
        "seq": i,
    });
    if with_attributes {
        value["age"] = json!(15 + (i % 30) as i64);
        value["gender"] = json!(if i % 2 == 0 { "MALE" } else { "FEMALE" });
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
