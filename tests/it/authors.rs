//! The plugin author's loop against a real broker: `weir capture` writes a
//! topic's records (JSON or not, with keys and headers) as envelopes, and
//! `weir plugin test` and `weir plugin diff` read them back with every event
//! where it was.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

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
