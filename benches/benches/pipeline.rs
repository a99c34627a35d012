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
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;
use weir::pipeline::{Pipeline, PipelineConfig};
use weir::registry::{MakeCurrent, PutMode, Registry};
use weir::runtime::{Runtime, RuntimeConfig};
use weir_benches::kafka::{
    create_topics, event, latencies, now_ms, percentile, producer, scenario_5, send,
};

const PARTITIONS: i32 = 3;

async fn setup(brokers: &str, tag: &str) -> (Registry, String, String, String) {
    let (input, output, dlq) = (
        format!("{tag}-in"),
        format!("{tag}-out"),
        format!("{tag}-dlq"),
    );
    create_topics(brokers, &[&input, &output, &dlq], PARTITIONS).await;
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
    let scenario = scenario_5(&output);
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
    let producer = producer(&brokers);
    let sent = now_ms();
    for i in 0..events {
        send(&producer, &input, None, &event("5", i, sent, false));
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
    let rate = 20_000u64;
    let latencies = tokio::task::spawn_blocking({
        let (brokers, group) = (brokers.clone(), format!("{tag}-reader"));
        move || {
            latencies(&brokers, (&input, &output, &group), (rate, 5), |i, now| {
                (None, event("5", i, now, false))
            })
        }
    })
    .await
    .expect("latency run");
    stop.cancel();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("thread")
        .expect("run");
    println!(
        "pipeline-latency rate={rate} events={} p50_ms={} p99_ms={} max_ms={}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
}
