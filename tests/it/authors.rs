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

/// What the README's "Write a plugin" says, on a machine with only the
/// registry: `weir plugin new`, the crate's own `cargo test`, `weir plugin
/// build`, and `weir plugin test` on the sample events it came with.
#[test]
fn a_new_plugin_passes_its_test_builds_and_runs_on_its_samples() {
    let dir = std::env::temp_dir().join(unique("weir-new"));
    std::fs::create_dir_all(&dir).unwrap();
    let krate = dir.join("buy-clicks");
    // The builds of new plugins share a target directory, so a second run
    // does not compile the SDK's dependencies again.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-new");
    let run = |program: &std::path::Path, args: &[&str]| {
        let started = Instant::now();
        let output = Command::new(program)
            .args(args)
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", &target)
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
    };
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
