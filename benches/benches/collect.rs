//! The collector's throughput and latency against a real Kafka broker, beside
//! producing the same events straight to Kafka with rdkafka in the same run.
//!
//! Needs a broker: `tests/stack up kafka`, then
//! `eval "$(tests/stack env)" && cargo bench -p weir-benches --bench collect`.
//! `WEIR_BENCH_HITS` (default 100000) pixel hits, `WEIR_BENCH_BULK` (default
//! 2000) NDJSON requests of 100 events, `WEIR_BENCH_CONNECTIONS` (default 32)
//! keep-alive connections. The load generator runs in the same process, on the
//! same cores, as a `wrk` beside the server would.
//!
//! Printed, one parseable line each:
//! - `collect-pixel requests=N seconds=S requests_per_s=R p50_ms=.. p99_ms=..`
//! - `collect-bulk requests=N events=E seconds=S events_per_s=R p50_ms=.. p99_ms=..`
//! - `kafka-direct events=N seconds=S events_per_s=R` (acks=all, idempotent)
//! - `collect-ratio pixel_vs_direct=.. bulk_vs_direct=..`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use weir::collect::{CollectConfig, Front};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hit_query(i: u64) -> String {
    format!(
        "e_c=buttonClick&e_a=Clicked&e_n=buy&url=https%3A%2F%2Fshop.example%2Fgoods%2F{}&urlref=https%3A%2F%2Fshop.example%2F&_idn=0&cookie=1&res=1920x1080&memberId={}&h={}",
        i % 977,
        100_000 + i % 5000,
        i % 24
    )
}

fn record(i: u64) -> String {
    format!(
        "{{\"scenario_id\":\"5\",\"e_c\":\"buttonClick\",\"e_a\":\"Clicked\",\"e_n\":\"buy\",\"url\":\"https://shop.example/goods/{}\",\"memberId\":\"{}\",\"h\":\"{}\"}}",
        i % 977,
        100_000 + i % 5000,
        i % 24
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `total` requests over `connections` concurrent workers; returns the
/// elapsed time and the sorted latencies in ms.
async fn load(
    total: u64,
    connections: u64,
    request: impl Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> (Duration, Vec<f64>) {
    let request = Arc::new(request);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (request, next) = (request.clone(), next.clone());
        workers.spawn(async move {
            // One client per worker: one kept-alive connection each.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let sent = Instant::now();
                let response = request(&client, i).send().await.expect("a response");
                assert!(
                    response.status().is_success(),
                    "the collector answered {}",
                    response.status()
                );
                let _ = response.bytes().await;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.expect("worker"));
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    (elapsed, latencies)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let brokers = std::env::var("WEIR_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "no Kafka: start one with `tests/stack up kafka`, then `eval \"$(tests/stack env)\"`"
        )
    });
    let hits = env_or("WEIR_BENCH_HITS", 100_000);
    let bulk = env_or("WEIR_BENCH_BULK", 2_000);
    let connections = env_or("WEIR_BENCH_CONNECTIONS", 32);
    let stamp = chrono::Utc::now().timestamp_millis();
    let (hits_topic, direct_topic, logs_topic) = (
        format!("bench-collect-{stamp}"),
        format!("bench-direct-{stamp}"),
        format!("bench-bulk-{stamp}"),
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin");
    let topics: Vec<NewTopic> = [&hits_topic, &direct_topic, &logs_topic]
        .iter()
        .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
        .collect();
    for created in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        created.expect("topic created");
    }

    let mut config = CollectConfig {
        listen: "127.0.0.1:0".into(),
        bad_topic: format!("bench-bad-{stamp}"),
        ..CollectConfig::default()
    };
    config.streams.insert(
        "logs".into(),
        weir::collect::StreamConfig {
            topic: logs_topic.clone(),
            key: None,
            key_field: None,
        },
    );
    let front = Arc::new(
        Front::new(
            config.clone(),
            &brokers,
            &hits_topic,
            weir::telemetry::Telemetry::new(),
        )
        .expect("front"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    tokio::spawn(weir::http::serve(
        listener,
        weir::collect::router(front.clone()),
        config.http_limits(),
        stop.clone().cancelled_owned(),
    ));

    // Pixel hits.
    let base = format!("http://{addr}");
    let url = base.clone();
    let (elapsed, latencies) = load(hits, connections, move |client, i| {
        client.get(format!("{url}/5?{}", hit_query(i)))
    })
    .await;
    let pixel_rate = hits as f64 / elapsed.as_secs_f64();
    println!(
        "collect-pixel requests={hits} seconds={:.2} requests_per_s={pixel_rate:.0} p50_ms={:.2} p99_ms={:.2}",
        elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    // Bulk NDJSON, 100 events a request.
    let url = base.clone();
    let (elapsed, latencies) = load(bulk, connections, move |client, i| {
        let body: String = (i * 100..i * 100 + 100).map(|j| record(j) + "\n").collect();
        client
            .post(format!("{url}/collect/logs"))
            .header("content-type", "application/x-ndjson")
            .body(body)
    })
    .await;
    let events = bulk * 100;
    let bulk_rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "collect-bulk requests={bulk} events={events} seconds={:.2} events_per_s={bulk_rate:.0} p50_ms={:.2} p99_ms={:.2}",
        elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    // The baseline: the same events produced straight to Kafka, same settings.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events as usize);
    for i in 0..events {
        let payload = record(i);
        loop {
            match producer.send_result(FutureRecord::<(), _>::to(&direct_topic).payload(&payload)) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                // The local queue is full: let deliveries drain.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    for delivery in deliveries {
        delivery
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    let elapsed = started.elapsed();
    let direct_rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "kafka-direct events={events} seconds={:.2} events_per_s={direct_rate:.0}",
        elapsed.as_secs_f64()
    );
    println!(
        "collect-ratio pixel_vs_direct={:.3} bulk_vs_direct={:.3}",
        pixel_rate / direct_rate,
        bulk_rate / direct_rate
    );
    stop.cancel();
}
