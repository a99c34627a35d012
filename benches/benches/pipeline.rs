//! End-to-end throughput and latency of the pipeline against a real Kafka broker:
//! Kafka → route → `scenario` plugin → output topic (transactional) → commit.
//!
//! Needs a broker: start one with `tests/stack up kafka`, then
//! `eval "$(tests/stack env)" && cargo bench -p weir-benches --bench pipeline`.
//! `WEIR_BENCH_EVENTS` (default 500000) sets the throughput run's size,
//! `WEIR_BENCH_BATCH` the pipeline's `batch_max_events` (default: the pipeline's),
//! `WEIR_BENCH_KAFKA=key=value,...` extra librdkafka settings for the pipeline.
//!
//! Two phases, each printed as one parseable line:
//! - `pipeline-throughput events=N seconds=S events_per_s=R`: N events produced
//!   beforehand, timed from the pipeline's start until all were committed.
//! - `pipeline-latency rate=R events=N p50_ms=.. p99_ms=.. max_ms=..`: events produced
//!   at a steady rate while the pipeline runs; latency from the producer's send time
//!   (carried in the event) until a `read_committed` consumer sees the output.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use weir::pipeline::{Pipeline, PipelineConfig};
use weir::registry::{MakeCurrent, PutMode, Registry};
use weir::runtime::{Runtime, RuntimeConfig};

const PARTITIONS: i32 = 3;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn event(scenario: &str, i: u64, sent_ms: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "scenario_id": scenario,
        "memberId": format!("m{}", i % 1000),
        "age": 15 + i % 40,
        "gender": if i.is_multiple_of(2) { "MALE" } else { "FEMALE" },
        "h": i % 24,
        "e_n": if i.is_multiple_of(3) { "구매" } else { "조회" },
        "url": format!("https://shop.example/goods/{}?ref=home&campaign=autumn", i % 977),
        "device": "mobile",
        "session": format!("s-{:08x}", i.wrapping_mul(2_654_435_761)),
        "sent_ms": sent_ms,
    }))
    .expect("event JSON")
}

fn new_producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()
        .expect("producer")
}

fn send(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, value: &[u8]) {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn setup(brokers: &str, tag: &str) -> (Registry, String, String, String) {
    let (input, output, dlq) = (
        format!("{tag}-in"),
        format!("{tag}-out"),
        format!("{tag}-dlq"),
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let topics: Vec<NewTopic> = [&input, &output, &dlq]
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.expect("topic");
    }
    let dir = std::env::temp_dir().join(tag);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let registry = Registry::connect(
        &format!("sqlite://{}", dir.join("registry.db").display()),
        runtime,
    )
    .await
    .expect("registry");
    let bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("scenario plugin");
    registry
        .upload_plugin(bytes, Some("scenario"), "bench", MakeCurrent::IfNew)
        .await
        .expect("upload");
    let scenario = json!({
        "scenario_id": "5",
        "title": "adult male users who clicked buy after 9",
        "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1, "sent_ms": 1, "url": 0},
        "filters": [
            {"left": "age", "operator": ">", "right": 20},
            {"left": "gender", "operator": "==", "right": "MALE"},
            {"left": "h", "operator": ">=", "right": 9}
        ],
        "logical_operator": "AND",
        "output_topic": output,
    });
    registry
        .put_scenario(scenario, None, PutMode::Create, "bench")
        .await
        .expect("scenario");
    (registry, input, output, dlq)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(brokers) = std::env::var("WEIR_TEST_KAFKA") else {
        eprintln!(
            "WEIR_TEST_KAFKA is not set: start a broker with `tests/stack up kafka` and \
             `eval \"$(tests/stack env)\"`, then run this benchmark again"
        );
        std::process::exit(2);
    };
    // RUST_LOG=weir::pipeline=debug shows each cycle's run / sinks / commit times.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let events: u64 = std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let tag = format!("bench-{}-{}", std::process::id(), now_ms());
    let (registry, input, output, dlq) = setup(&brokers, &tag).await;
    let mut config = PipelineConfig {
        brokers: brokers.clone(),
        group_id: format!("{tag}-group"),
        topics: vec![input.clone()],
        dlq_topic: dlq,
        ..PipelineConfig::default()
    };
    if let Some(batch) = std::env::var("WEIR_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.batch_max_events = batch;
    }
    // `WEIR_BENCH_KAFKA=key=value,key=value`: extra client settings to compare.
    if let Ok(settings) = std::env::var("WEIR_BENCH_KAFKA") {
        for pair in settings.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').expect("WEIR_BENCH_KAFKA: key=value");
            config.kafka.insert(key.to_owned(), value.to_owned());
        }
    }
    println!(
        "pipeline-config batch_max_events={} kafka={:?}",
        config.batch_max_events, config.kafka
    );

    // Throughput: everything produced first, then drained.
    let producer = new_producer(&brokers);
    let sent = now_ms();
    for i in 0..events {
        send(&producer, &input, &event("5", i, sent));
    }
    producer.flush(Duration::from_secs(120)).expect("flush");

    let stop = CancellationToken::new();
    let pipeline = Pipeline::new(
        config,
        registry,
        Vec::new(),
        weir::telemetry::Telemetry::new(),
        stop.clone(),
    )
    .await
    .expect("pipeline");
    let metrics = pipeline.metrics();
    let started = Instant::now();
    let thread = std::thread::spawn(move || pipeline.run());
    while metrics.events.load(Ordering::Relaxed) < events {
        assert!(!thread.is_finished(), "the pipeline stopped early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "pipeline-throughput events={events} seconds={seconds:.2} events_per_s={:.0}",
        events as f64 / seconds
    );

    // Latency: a steady rate for a few seconds, read back read_committed.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{tag}-reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "latest")
        .create()
        .expect("reader");
    reader.subscribe(&[&output]).expect("subscribe");
    // Let the reader join and position itself at the end before timing.
    let join_deadline = Instant::now() + Duration::from_secs(15);
    while reader.assignment().map(|a| a.count()).unwrap_or(0) == 0 && Instant::now() < join_deadline
    {
        reader.poll(Duration::from_millis(100));
    }
    let rate = 20_000u64;
    let seconds_of_load = 5u64;
    let total = rate * seconds_of_load;
    let load = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            let producer = new_producer(&brokers);
            let started = Instant::now();
            for i in 0..total {
                let due = Duration::from_micros(i * 1_000_000 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                send(&producer, &input, &event("5", i, now_ms()));
            }
            producer.flush(Duration::from_secs(60)).expect("flush");
        })
    };
    let mut latencies = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(seconds_of_load + 60);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(100)) {
            let seen = now_ms();
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("output JSON");
            if let Some(sent) = value["sent_ms"].as_i64() {
                latencies.push(seen - sent);
            }
        }
    }
    load.join().expect("load thread");
    stop.cancel();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("thread")
        .expect("run");
    latencies.sort_unstable();
    println!(
        "pipeline-latency rate={rate} events={} p50_ms={} p99_ms={} max_ms={}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
}
