//! The plugin author's loop against a real broker: `weir capture` writes a
//! topic's records (JSON or not, with keys and headers) as envelopes, and
//! `weir plugin test` and `weir plugin diff` read them back with every event
//! where it was.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use weir_integration::{Service, unique};

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(crate::archive::weir_binary())
        .args(args)
        .env_remove("WEIR_KAFKA")
        .output()
        .expect("weir runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_writes_every_record_once_with_where_it_was_and_plugin_test_reads_it() {
    let brokers = Service::Kafka.addr();
    let topic = unique("capture");
    crate::pipeline::create_topics(&brokers, &[&topic]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    // 3 partitions: JSON events with keys, a log line, and one with headers
    // as a dead letter has them.
    let mut sent = BTreeSet::new();
    for i in 0..60u32 {
        let value = if i == 7 {
            "127.0.0.1 - - [07/Dec/2026:10:00:00 +0000] \"GET / HTTP/1.1\" 200 5".to_owned()
        } else {
            format!(
                "{{\"scenario_id\":{},\"n\":{i}}}",
                if i % 2 == 0 { 5 } else { 6 }
            )
        };
        let key = format!("k{}", i % 5);
        let mut record = FutureRecord::to(&topic).key(&key).payload(&value);
        if i == 11 {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "weir.reason",
                value: Some("plugin_trap"),
            }));
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
        sent.insert((delivery.partition, delivery.offset, value));
    }

    let dir = std::env::temp_dir().join(unique("weir-capture"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("captured.jsonl");
    let output = weir(&[
        "capture",
        "--kafka",
        &brokers,
        "--topic",
        &topic,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Each record as it was sent: a JSON value byte for byte (its keys in
    // their order), anything else as text.
    let got: BTreeSet<(i32, i64, String)> = text
        .lines()
        .zip(&lines)
        .map(|(raw, l)| {
            let value = match &l["text"] {
                Value::String(text) => text.clone(),
                _ => {
                    let start = raw.find(",\"value\":").expect("a value") + 9;
                    raw[start..raw.len() - 1].to_owned()
                }
            };
            (
                l["capture"]["partition"].as_i64().unwrap() as i32,
                l["capture"]["offset"].as_i64().unwrap(),
                value,
            )
        })
        .collect();
    assert_eq!(lines.len(), 60, "each record once: {text}");
    assert_eq!(got, sent, "every record, where it was");
    assert!(
        lines
            .iter()
            .all(|l| l["capture"]["topic"] == topic.as_str())
    );
    assert!(lines.iter().all(|l| l["capture"]["key"].is_string()));
    assert!(lines.iter().all(|l| l["capture"]["timestamp"].is_i64()));
    let with_headers: Vec<&Value> = lines
        .iter()
        .filter(|l| l["capture"]["headers"]["weir.reason"] == "plugin_trap")
        .collect();
    assert_eq!(with_headers.len(), 1, "{text}");

    // One scenario's events, and the last few of each partition.
    let only = weir(&[
        "capture",
        "--kafka",
        &brokers,
        "--topic",
        &topic,
        "--scenario",
        "5",
    ]);
    let only = String::from_utf8_lossy(&only.stdout).lines().count();
    assert_eq!(only, 30, "scenario 5's events only");
    let last = weir(&[
        "capture", "--kafka", &brokers, "--topic", &topic, "--last", "2",
    ]);
    let expected: usize = (0..3)
        .map(|p| {
            sent.iter()
                .filter(|(partition, ..)| *partition == p)
                .count()
                .min(2)
        })
        .sum();
    assert_eq!(
        String::from_utf8_lossy(&last.stdout).lines().count(),
        expected,
        "the last 2 of each partition"
    );

    // plugin test on the capture: one answer per record, at its offset.
    let test = weir(&[
        "plugin",
        "test",
        weir_artifacts::FIXTURE_TRAP_AT,
        "--config",
        "{}",
        "--input",
        file.to_str().unwrap(),
    ]);
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&test.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 61, "60 answers and the summary");
    let offsets: Vec<i64> = answers[..60]
        .iter()
        .map(|a| a["offset"].as_i64().unwrap())
        .collect();
    let captured: Vec<i64> = lines
        .iter()
        .map(|l| l["capture"]["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(
        offsets, captured,
        "answers in capture order, at their offsets"
    );
    assert_eq!(answers[60]["summary"]["events"], 60);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn capture_names_a_topic_that_does_not_exist() {
    let brokers = Service::Kafka.addr();
    let missing = unique("no-such-topic");
    let output = weir(&[
        "capture",
        "--kafka",
        &brokers,
        "--topic",
        &missing,
        "--idle-secs",
        "5",
    ]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains(&missing) && text.contains("does not exist"),
        "{text}"
    );
}

/// Where the plugin crates these tests make are built: one target directory
/// for all, so the SDK's dependencies compile once.
fn plugin_target() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-new")
}

/// The workspace's toolchain channel, from `rust-toolchain.toml`.
fn pinned_toolchain() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).expect("rust-toolchain.toml");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("a channel in rust-toolchain.toml")
}

/// Runs `program` with `args` in `dir` as a plugin author would, with `env`:
/// its standard output, or a failure that shows both outputs. Prints how long
/// it took.
fn author_runs(
    dir: &std::path::Path,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", plugin_target())
        // The toolchain `tests/stack install` prepared (with wasm32-wasip2),
        // not whatever the machine's default is.
        .env("RUSTUP_TOOLCHAIN", pinned_toolchain())
        .envs(env.iter().copied())
        // The test build's clippy wrapper is for this workspace only.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{program:?} {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "{program:?} {args:?}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What the README's "Write a plugin" says, on a machine with only the
/// registry: `weir plugin new`, the crate's own `cargo test`, `weir plugin
/// build`, and `weir plugin test` on the sample events it came with.
#[test]
fn a_new_plugin_passes_its_test_builds_and_runs_on_its_samples() {
    let dir = std::env::temp_dir().join(unique("weir-new"));
    std::fs::create_dir_all(&dir).unwrap();
    let krate = dir.join("buy-clicks");
    let target = plugin_target();
    let run = |program: &std::path::Path, args: &[&str]| author_runs(&krate, program, args, &[]);
    let started = Instant::now();
    let made = Command::new(crate::archive::weir_binary())
        .args(["plugin", "new", "buy-clicks", "--kind", "filter", "--dir"])
        .arg(&krate)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(krate.join(".weir/wit/plugin.wit").exists());
    let again = Command::new(crate::archive::weir_binary())
        .args(["plugin", "new", "buy-clicks", "--dir"])
        .arg(&krate)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing directory is left alone"
    );

    let tested = run(std::path::Path::new("cargo"), &["test"]);
    assert!(tested.contains("2 passed"), "{tested}");
    let built = run(&crate::archive::weir_binary(), &["plugin", "build"]);
    assert!(
        built.contains("plugin buy-clicks 0.1.0 (filter)"),
        "{built}"
    );
    assert!(built.contains("imports: "), "{built}");
    let wasm = target.join("wasm32-wasip2/release/buy_clicks.wasm");
    let answers = run(
        &crate::archive::weir_binary(),
        &[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--config",
            r#"{"field": "e_n", "equals": "구매"}"#,
            "--input",
            "captured.jsonl",
        ],
    );
    let summary: Value = serde_json::from_str(answers.lines().last().unwrap()).unwrap();
    assert_eq!(summary["summary"]["events"], 5, "{answers}");
    assert_eq!(
        summary["summary"]["emitted"], 2,
        "the two purchases: {answers}"
    );
    assert_eq!(summary["summary"]["dropped"], 3, "{answers}");
    println!(
        "weir plugin new -> cargo test -> weir plugin build -> weir plugin test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A registry with `relay` (passes every event) and `trap-at` (traps on
/// `{"trap":true}`), and the topics of one scenario, for the rollout tests.
struct Rollout {
    brokers: String,
    u: String,
    dir: std::path::PathBuf,
    registry: weir::registry::Registry,
    events: String,
    dlq: String,
    out: String,
}

/// Every tenth event is the one `trap-at` traps on; the others carry their number.
fn trap_every_tenth(i: usize) -> Vec<u8> {
    if i % 10 == 3 {
        br#"{"trap":true}"#.to_vec()
    } else {
        format!(r#"{{"i":{i}}}"#).into_bytes()
    }
}

impl Rollout {
    /// The brokers, the events, dead-letter and output topics, the directory.
    fn names(&self) -> (&str, &str, &str, &str, &std::path::Path) {
        (&self.brokers, &self.events, &self.dlq, &self.out, &self.dir)
    }

    async fn new(prefix: &str) -> Self {
        use weir::registry::MakeCurrent;
        let brokers = Service::Kafka.addr();
        let u = unique(prefix);
        let dir = std::env::temp_dir().join(&u);
        std::fs::create_dir_all(&dir).unwrap();
        let registry = crate::pipeline::registry_in(&dir).await;
        for (name, path) in [
            ("relay", weir_artifacts::FIXTURE_PASSTHROUGH),
            ("trap-at", weir_artifacts::FIXTURE_TRAP_AT),
        ] {
            registry
                .upload_plugin(
                    std::fs::read(path).unwrap(),
                    Some(name),
                    "test",
                    MakeCurrent::IfNew,
                )
                .await
                .expect("upload");
        }
        let (events, dlq, out) = (
            format!("{u}-events"),
            format!("{u}-dlq"),
            format!("{u}-out"),
        );
        crate::pipeline::create_topics(&brokers, &[&events, &dlq, &out]).await;
        Self {
            brokers,
            u,
            dir,
            registry,
            events,
            dlq,
            out,
        }
    }

    /// Stores `scenario` (its `source` and `output_topic` filled in) and
    /// starts the service on it, counting in Redis when `redis`.
    async fn start(
        &self,
        mut scenario: Value,
        redis: bool,
    ) -> (weir::service::Running, tokio_util::sync::CancellationToken) {
        scenario["source"] = serde_json::json!([self.events]);
        scenario["output_topic"] = serde_json::json!(self.out);
        self.registry
            .put_scenario(scenario, None, weir::registry::PutMode::Create, "test")
            .await
            .expect("scenario");
        let stop = tokio_util::sync::CancellationToken::new();
        let mut plan = crate::pipeline::service_plan(
            (&self.brokers, &self.u),
            (&self.events, &self.dlq),
            &self.dir,
            Default::default(),
        );
        if redis {
            plan.counters.redis = Some(Service::Redis.addr());
            plan.counters.key_prefix = Some(self.u.clone());
        }
        let service = weir::service::start(
            plan,
            self.registry.clone(),
            Default::default(),
            stop.clone(),
        )
        .await
        .expect("service");
        (service, stop)
    }
}

/// A scenario runs `relay` (passes every event) with `trap-at@1` in its shadow,
/// which traps on some events: the shadow's figures name every event it
/// answered otherwise, with samples, while the outputs on the real broker are
/// the scenario's own, each once, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_candidate_in_the_shadow_is_caught_and_changes_no_output() {
    const EVENTS: usize = 300;
    let setup = Rollout::new("shadow").await;
    let (service, stop) = setup
        .start(
            serde_json::json!({"scenario_id": "sh1", "plugin": "relay", "shadow": "trap-at@1"}),
            false,
        )
        .await;
    let (brokers, events, dlq, out, dir) = setup.names();
    let value = trap_every_tenth;
    crate::pipeline::produce(
        brokers,
        events,
        (0..EVENTS).map(|i| (None, value(i))).collect(),
    )
    .await;
    crate::pipeline::handled(&service.metrics, EVENTS as u64).await;

    let stats = service
        .metrics
        .shadows
        .lock()
        .unwrap()
        .get("sh1")
        .cloned()
        .expect("shadow figures");
    assert_eq!(stats.current, "relay@1");
    assert_eq!(stats.candidate, "trap-at@1");
    assert_eq!(stats.error, None, "{stats:?}");
    let traps = (0..EVENTS).filter(|i| i % 10 == 3).count() as u64;
    assert_eq!(stats.events, EVENTS as u64, "{stats:?}");
    assert_eq!(
        (stats.differ, stats.candidate_failed),
        (traps, traps),
        "{stats:?}"
    );
    assert_eq!(stats.agree, EVENTS as u64 - traps);
    assert_eq!(stats.current_failed, 0);
    assert!(stats.current_ns > 0 && stats.candidate_ns > 0, "{stats:?}");
    assert_eq!(stats.samples.len(), weir::pipeline::shadow::SAMPLES);
    for sample in &stats.samples {
        assert_eq!(sample.current["status"], "emitted", "{sample:?}");
        assert_eq!(sample.candidate["status"], "failed", "{sample:?}");
        assert!(
            sample.candidate["error"]
                .as_str()
                .is_some_and(|e| e.contains("trap")),
            "{sample:?}"
        );
    }

    // The outputs are the scenario's own, each once; nothing is dead-lettered.
    let outputs = crate::pipeline::read_committed(brokers, &[out, dlq], EVENTS);
    assert_eq!(outputs.len(), EVENTS, "each output once, no dead letter");
    let mut got: Vec<Vec<u8>> = outputs.iter().map(|r| r.value().to_vec()).collect();
    let mut sent: Vec<Vec<u8>> = (0..EVENTS).map(value).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "the relay's records, not the candidate's");
    assert!(
        outputs.iter().all(|r| {
            r.headers
                .get(weir::pipeline::produce::HEADER_PLUGIN)
                .is_some_and(|p| p == "relay@1")
        }),
        "every output names the scenario's plugin"
    );

    // A candidate that spins until its CPU limit is set aside, and the
    // scenario's events go on without waiting for it.
    let more: Vec<(Option<String>, Vec<u8>)> = std::iter::once(br#"{"loop":true}"#.to_vec())
        .chain((0..10).map(|i| format!(r#"{{"after":{i}}}"#).into_bytes()))
        .map(|v| (None, v))
        .collect();
    crate::pipeline::produce(brokers, events, more).await;
    crate::pipeline::handled(&service.metrics, EVENTS as u64 + 11).await;
    let stats = service
        .metrics
        .shadows
        .lock()
        .unwrap()
        .get("sh1")
        .cloned()
        .unwrap();
    assert!(
        stats
            .error
            .as_deref()
            .is_some_and(|e| e.contains("set aside")),
        "{stats:?}"
    );
    let outputs = crate::pipeline::read_committed(brokers, &[out, dlq], EVENTS + 11);
    assert_eq!(
        outputs.len(),
        EVENTS + 11,
        "each output once, no dead letter"
    );
    stop.cancel();
    service
        .finish(Duration::from_secs(30))
        .await
        .expect("drained");
    let _ = std::fs::remove_dir_all(dir);
}

/// A scenario runs `relay` (passes every event) with `trap-at@1` as a canary
/// on half the keys; the canary traps on some events. Its failures pass the
/// margin, so it is rolled back: the verdict is written into the scenario's
/// document and every later event meets `relay`. Across the rollback every
/// event has exactly one answer (an output or a dead letter), from the version
/// its key's hash gave it until the rollback; the counters per version and the
/// archive agree with the topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_with_nothing_lost_or_doubled() {
    use std::collections::BTreeMap;
    use weir::pipeline::canary::{Verdict, takes};
    use weir::pipeline::produce::{HEADER_PLUGIN, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
    use weir::registry::CanaryBy;

    const EVENTS: usize = 400;
    const MORE: usize = 100;
    let setup = Rollout::new("canary").await;
    let (service, stop) = setup
        .start(
            serde_json::json!({"scenario_id": "cn1", "plugin": "relay",
                               "canary": {"plugin": "trap-at@1", "share": 0.5,
                                          "min_events": 50, "rollback_margin": 0.02}}),
            true,
        )
        .await;
    let (brokers, events, dlq, out, dir) = setup.names();
    let registry = &setup.registry;
    let value = trap_every_tenth;
    let key = |i: usize| format!("k{i}");
    crate::pipeline::produce(
        brokers,
        events,
        (0..EVENTS).map(|i| (Some(key(i)), value(i))).collect(),
    )
    .await;
    crate::pipeline::handled(&service.metrics, EVENTS as u64).await;

    let stats = service.metrics.canaries.lock().unwrap().get("cn1").cloned();
    let stats = stats.expect("canary figures");
    assert_eq!(
        (stats.current.as_str(), stats.candidate.as_str()),
        ("relay@1", "trap-at@1")
    );
    match &stats.verdict {
        Some(Verdict::RolledBack(why)) => assert!(why.contains("trap-at@1 failed"), "{why}"),
        other => panic!("the canary was not rolled back: {other:?} {stats:?}"),
    }
    assert_eq!(stats.current_failed, 0, "{stats:?}");
    assert!(stats.candidate_failed > 0, "{stats:?}");

    // The verdict reaches the scenario's document, for every replica.
    let started = Instant::now();
    loop {
        let document = registry.scenario("cn1").await.unwrap().document;
        if let Some(why) = document["canary"]["rolled_back"].as_str() {
            assert!(why.contains("trap-at@1 failed"), "{why}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no rollback in the document: {document}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the catalog take it, then send more: all of it meets `relay`.
    tokio::time::sleep(Duration::from_secs(1)).await;
    crate::pipeline::produce(
        brokers,
        events,
        (EVENTS..EVENTS + MORE)
            .map(|i| (Some(key(i)), value(i)))
            .collect(),
    )
    .await;
    crate::pipeline::handled(&service.metrics, (EVENTS + MORE) as u64).await;

    // One answer per event, outputs and dead letters together.
    let records = crate::pipeline::read_committed(brokers, &[out, dlq], EVENTS + MORE);
    let mut answers: BTreeMap<(i32, i64), (String, bool, Option<String>)> = BTreeMap::new();
    for record in &records {
        let plugin = record.headers[HEADER_PLUGIN].clone();
        let (place, dead, key) = match record.headers.get(HEADER_SOURCE_PARTITION) {
            Some(partition) => (
                format!("{partition}:{}", record.headers[HEADER_SOURCE_OFFSET]),
                true,
                record
                    .key
                    .as_ref()
                    .map(|k| String::from_utf8(k.clone()).unwrap()),
            ),
            None => {
                let value: Value = serde_json::from_slice(record.value()).unwrap();
                let key = value["i"].as_u64().map(|i| key(i as usize));
                (record.headers[HEADER_SOURCE_OFFSET].clone(), false, key)
            }
        };
        let (partition, offset) = place.split_once(':').unwrap();
        let at = (partition.parse().unwrap(), offset.parse().unwrap());
        let previous = answers.insert(at, (plugin, dead, key));
        assert!(previous.is_none(), "two answers for {at:?}");
    }
    assert_eq!(answers.len(), EVENTS + MORE, "one answer per event");

    // Each answer is from the version the key's hash gave it, until the
    // rollback: per partition, the canary answers nothing after `relay`
    // answered one of its keys; only the canary dead-letters.
    let mut canary_last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut relay_first: BTreeMap<i32, i64> = BTreeMap::new();
    for ((partition, offset), (plugin, dead, key)) in &answers {
        let canary_key = key.as_ref().map(|k| {
            takes(
                CanaryBy::Key,
                5_000,
                events,
                *partition,
                *offset,
                Some(k.as_bytes()),
            )
        });
        match plugin.as_str() {
            "trap-at@1" => {
                assert_ne!(canary_key, Some(false), "{key:?} is not the canary's");
                canary_last.insert(*partition, *offset);
            }
            "relay@1" => {
                assert!(!dead, "relay dead-lettered {partition}:{offset}");
                if canary_key == Some(true) {
                    relay_first.entry(*partition).or_insert(*offset);
                }
            }
            other => panic!("answer from {other}"),
        }
        if *dead {
            assert_eq!(plugin, "trap-at@1");
        }
    }
    for (partition, first) in &relay_first {
        assert!(
            canary_last.get(partition).is_none_or(|last| last < first),
            "partition {partition}: the canary answered after its rollback"
        );
    }
    let later_canary = answers
        .values()
        .filter(|(plugin, _, key)| {
            plugin == "trap-at@1"
                && key
                    .as_ref()
                    .is_some_and(|k| k[1..].parse::<usize>().unwrap() >= EVENTS)
        })
        .count();
    assert_eq!(later_canary, 0, "events after the rollback met the canary");
    let by = |plugin: &str, dead: bool| {
        answers
            .values()
            .filter(|(p, d, _)| p == plugin && *d == dead)
            .count() as u64
    };
    assert!(by("trap-at@1", false) > 0 && by("trap-at@1", true) > 0);

    // The counters per version say the same, exactly once.
    let started = Instant::now();
    let versions = loop {
        let versions = service.counters.by_version("cn1").await.unwrap();
        let total: u64 = versions.values().map(|t| t.total).sum();
        if total >= (EVENTS + MORE) as u64 || started.elapsed() > Duration::from_secs(30) {
            break versions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        versions["relay@1"].total,
        by("relay@1", false),
        "{versions:?}"
    );
    assert_eq!(versions["relay@1"].errors, 0);
    assert_eq!(
        versions["trap-at@1"].total,
        by("trap-at@1", false) + by("trap-at@1", true),
        "{versions:?}"
    );
    assert_eq!(versions["trap-at@1"].errors, by("trap-at@1", true));
    let totals = service.counters.totals("cn1").await.unwrap();
    assert_eq!(totals.total, (EVENTS + MORE) as u64);

    stop.cancel();
    service
        .finish(Duration::from_secs(30))
        .await
        .expect("drained");
    // The archive holds every output once, the two versions' rows together.
    let read = crate::archive::read_back(&dir.join("archive"));
    let mut archived: Vec<(i32, i64)> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    archived.sort_unstable();
    let outputs: Vec<(i32, i64)> = answers
        .iter()
        .filter(|(_, (_, dead, _))| !dead)
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(archived, outputs, "every output archived once");
    let _ = std::fs::remove_dir_all(dir);
}

/// A canary that fails no more than the plugin is promoted by its
/// `promote_after` rule: the scenario's document names it as the plugin, and
/// from then on every event meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_by_its_rule() {
    use weir::pipeline::canary::Verdict;
    use weir::pipeline::produce::HEADER_PLUGIN;

    const EVENTS: usize = 200;
    let setup = Rollout::new("promote").await;
    let (service, stop) = setup
        .start(
            serde_json::json!({"scenario_id": "cp1", "plugin": "relay",
                               "canary": {"plugin": "trap-at@1", "share": 0.5,
                                          "min_events": 20, "promote_after": 40}}),
            false,
        )
        .await;
    let batch = |from: usize| {
        (from..from + EVENTS)
            .map(|i| {
                (
                    Some(format!("k{i}")),
                    format!(r#"{{"i":{i}}}"#).into_bytes(),
                )
            })
            .collect()
    };
    crate::pipeline::produce(&setup.brokers, &setup.events, batch(0)).await;
    crate::pipeline::handled(&service.metrics, EVENTS as u64).await;
    let started = Instant::now();
    loop {
        let scenario = setup.registry.scenario("cp1").await.unwrap();
        if scenario.plugin == "trap-at@1" {
            assert!(scenario.document.get("canary").is_none(), "{scenario:?}");
            assert_eq!(scenario.updated_by, "weir (canary rule)");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not promoted: {scenario:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    crate::pipeline::produce(&setup.brokers, &setup.events, batch(EVENTS)).await;
    crate::pipeline::handled(&service.metrics, 2 * EVENTS as u64).await;
    let records =
        crate::pipeline::read_committed(&setup.brokers, &[&setup.out, &setup.dlq], 2 * EVENTS);
    assert_eq!(
        records.len(),
        2 * EVENTS,
        "one output per event, no dead letter"
    );
    let later = records
        .iter()
        .filter(|r| {
            let value: Value = serde_json::from_slice(r.value()).unwrap();
            value["i"].as_u64().unwrap() >= EVENTS as u64
        })
        .map(|r| r.headers[HEADER_PLUGIN].as_str());
    assert!(later.clone().count() == EVENTS && later.into_iter().all(|p| p == "trap-at@1"));
    // The promoted plugin now runs every event, and the canary's figures and
    // verdict stay in view beside it.
    let stats = service.metrics.canaries.lock().unwrap().get("cp1").cloned();
    let stats = stats.expect("the promoted canary's figures stay");
    assert!(
        matches!(stats.verdict, Some(Verdict::Promoted(_))),
        "{stats:?}"
    );
    assert_eq!(stats.candidate, "trap-at@1");
    stop.cancel();
    service
        .finish(Duration::from_secs(30))
        .await
        .expect("drained");
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// The README's "Write a plugin", end to end on a running `weir serve` with a
/// real broker, with nothing but weir's commands: new, its unit test, build,
/// test on the sample events, push, scenario apply, a second version in the
/// shadow, its figures, promote, and the promoted version's outputs on the
/// topic. Prints how long the walk took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_from_new_to_a_promoted_version_on_live_traffic() {
    let walk = Instant::now();
    let brokers = Service::Kafka.addr();
    let u = unique("walk");
    let dir = std::env::temp_dir().join(&u);
    std::fs::create_dir_all(&dir).unwrap();
    let krate = dir.join("buy-clicks");
    let target = plugin_target();
    let (events, dlq, out) = (
        format!("{u}-events"),
        format!("{u}-dlq"),
        format!("{u}-out"),
    );
    crate::pipeline::create_topics(&brokers, &[&events, &dlq, &out]).await;
    let weir = crate::window::Serve::start(
        "weir-walk",
        &format!(
            "[pipeline]\nbrokers = {brokers:?}\ngroup_id = {u:?}\ntopics = [{events:?}]\n\
             dlq_topic = {dlq:?}\nregistry_poll_ms = 200\n"
        ),
        &[],
    );
    let server = format!("http://{}", weir.api);
    let env = [
        ("WEIR_SERVER", server.as_str()),
        ("WEIR_TOKEN", crate::window::ADMIN),
    ];
    let run = |program: &std::path::Path, args: &[&str]| {
        author_runs(
            if krate.exists() { &krate } else { &dir },
            program,
            args,
            &env,
        )
    };
    let weir_bin = crate::archive::weir_binary();
    let cargo = std::path::Path::new("cargo");
    run(&weir_bin, &["plugin", "new", "buy-clicks"]);
    assert!(run(cargo, &["test"]).contains("2 passed"));
    run(&weir_bin, &["plugin", "build"]);
    let wasm = target.join("wasm32-wasip2/release/buy_clicks.wasm");
    let wasm = wasm.to_str().unwrap();
    let config = r#"{"field": "e_n", "equals": "구매"}"#;
    let tried = run(
        &weir_bin,
        &[
            "plugin",
            "test",
            wasm,
            "--config",
            config,
            "--input",
            "captured.jsonl",
        ],
    );
    assert!(tried.contains(r#""emitted":2"#), "{tried}");
    assert!(run(&weir_bin, &["plugin", "push", wasm]).contains("buy-clicks"));

    let scenario = |shadow: Option<&str>| {
        let mut document = serde_json::json!({
            "scenario_id": "walk", "plugin": "buy-clicks@1", "source": [events],
            "output_topic": out, "field": "e_n", "equals": "구매"
        });
        if let Some(shadow) = shadow {
            document["shadow"] = shadow.into();
        }
        let path = krate.join("scenario.json");
        std::fs::write(&path, document.to_string()).unwrap();
        path
    };
    let first = scenario(None);
    run(
        &weir_bin,
        &["scenario", "apply", "-f", first.to_str().unwrap()],
    );

    // Version 2 keeps every event that has the field; in the shadow first.
    let lib = krate.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib)
        .unwrap()
        .replace(
            r#"const VERSION: &'static str = "0.1.0";"#,
            r#"const VERSION: &'static str = "0.2.0";"#,
        )
        .replace(
            "Ok(event.str(&self.config.field)?.as_deref() == Some(self.config.equals.as_str()))",
            "Ok(event.str(&self.config.field)?.is_some())",
        );
    assert!(code.contains("is_some())"), "the template changed: {code}");
    std::fs::write(&lib, code).unwrap();
    run(&weir_bin, &["plugin", "build"]);
    run(&weir_bin, &["plugin", "push", wasm]);
    let second = scenario(Some("buy-clicks@2"));
    run(
        &weir_bin,
        &["scenario", "apply", "-f", second.to_str().unwrap()],
    );
    // The catalog with the shadow is the one the next batches run.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let actions = ["구매", "조회", "장바구니"];
    let value = |i: usize| {
        if i % 10 == 9 {
            format!(r#"{{"memberId":"m{i}"}}"#).into_bytes()
        } else {
            format!(r#"{{"memberId":"m{i}","e_n":"{}"}}"#, actions[i % 3]).into_bytes()
        }
    };
    const N: usize = 120;
    crate::pipeline::produce(
        &brokers,
        &events,
        (0..N).map(|i| (None, value(i))).collect(),
    )
    .await;
    let bought = (0..N).filter(|i| i % 10 != 9 && i % 3 == 0).count();
    let with_field = (0..N).filter(|i| i % 10 != 9).count();
    let started = Instant::now();
    let stats = loop {
        let text = run(&weir_bin, &["scenario", "stats", "walk", "--json"]);
        let stats: Value = serde_json::from_str(&text).unwrap();
        if stats["shadow"]["events"] == N {
            break stats;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{stats}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let shadow = &stats["shadow"];
    assert_eq!(shadow["candidate"], "buy-clicks@2", "{stats}");
    assert_eq!(shadow["differ"], with_field - bought, "{stats}");
    assert_eq!(shadow["agree"], N - (with_field - bought), "{stats}");
    let human = run(&weir_bin, &["scenario", "stats", "walk"]);
    assert!(
        human.contains("shadow buy-clicks@2 beside buy-clicks@1"),
        "{human}"
    );

    assert!(run(&weir_bin, &["scenario", "promote", "walk"]).contains("buy-clicks@2"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    crate::pipeline::produce(
        &brokers,
        &events,
        (N..2 * N).map(|i| (None, value(i))).collect(),
    )
    .await;
    let later = (N..2 * N).filter(|i| i % 10 != 9).count();
    let outputs = crate::pipeline::read_committed(&brokers, &[&out, &dlq], bought + later);
    assert_eq!(
        outputs.len(),
        bought + later,
        "v1's matches, then v2's, each once"
    );
    let by = |label: &str| {
        outputs
            .iter()
            .filter(|r| {
                r.headers
                    .get(weir::pipeline::produce::HEADER_PLUGIN)
                    .is_some_and(|p| p == label)
            })
            .count()
    };
    assert_eq!((by("buy-clicks@1"), by("buy-clicks@2")), (bought, later));
    println!(
        "the README's walk (new, test, build, try, push, apply, shadow, promote, outputs): {:.1} s",
        walk.elapsed().as_secs_f64()
    );
    drop(weir);
    let _ = std::fs::remove_dir_all(&dir);
}
