//! Faults: Redis killed mid-stream and restarted, with and without persistence.
//! Each test runs a private redis-server (from `tests/stack install`) that it kills
//! and restarts itself, so the shared test servers are left alone.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use weir::aggregate::CountersSink;
use weir::aggregate::{Counters, CountersConfig};
use weir::pipeline::sink::Sink;
use weir::pipeline::{Pipeline, PipelineConfig};
use weir::registry::{MakeCurrent, PutMode, Registry};
use weir::runtime::{Runtime, RuntimeConfig};
use weir_integration::{Service, unique};

/// A redis-server of this test's own.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(persistent: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("weir-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port,
            dir,
            persistent,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command.spawn().expect(
            "redis-server not found: install it with `tests/stack install` (apt redis-server)",
        );
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 redis-server");
            child.wait().expect("reap redis-server");
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs scenario events through the pipeline with counters on a private Redis that
/// is killed after the first wave and restarted during the second. Returns the
/// counters' totals, when Redis was killed, `since`, and how many cycles failed.
async fn kill_and_restart_redis(persistent: bool) -> (u64, u64, i64, Option<i64>, u64) {
    let brokers = Service::Kafka.addr();
    let u = unique("fault");
    let (events_topic, out, dlq) = (
        format!("{u}-events"),
        format!("{u}-out"),
        format!("{u}-dlq"),
    );
    let mut redis = PrivateRedis::start(persistent);

    let dir = std::env::temp_dir().join(unique("weir-faults"));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let registry = Registry::connect(&format!("sqlite://{}", dir.join("r.db").display()), runtime)
        .await
        .expect("registry");
    let bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).unwrap();
    registry
        .upload_plugin(bytes, Some("scenario"), "test", MakeCurrent::IfNew)
        .await
        .unwrap();
    let id = format!("{u}-s");
    let doc = json!({
        "scenario_id": id, "output_topic": out,
        "filters": [{"left": "n", "operator": ">=", "right": 0}]
    });
    registry
        .put_scenario(doc, None, PutMode::Create, "test")
        .await
        .expect("scenario");

    let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let wave = |from: u64| {
        let producer = producer.clone();
        let topic = events_topic.clone();
        let id = id.clone();
        async move {
            let values: Vec<Vec<u8>> = (from..from + 10_000)
                .map(|n| serde_json::to_vec(&json!({"scenario_id": id, "n": n})).unwrap())
                .collect();
            let sends = values.iter().map(|v| {
                producer.send(
                    rdkafka::producer::FutureRecord::<(), _>::to(&topic).payload(v),
                    Duration::from_secs(30),
                )
            });
            for sent in futures::future::join_all(sends).await {
                sent.map_err(|(e, _)| e).expect("produce");
            }
        }
    };

    let group = unique("group");
    let config = CountersConfig {
        url: redis.url(),
        key_prefix: "weirtest".into(),
        ..CountersConfig::default()
    };
    let counters = Counters::connect(&config, &group).await.expect("counters");
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(CountersSink::new(
        counters.clone(),
        tokio::runtime::Handle::current(),
    ))];
    let pipeline_config = PipelineConfig {
        brokers: brokers.clone(),
        group_id: group,
        topics: vec![events_topic.clone()],
        dlq_topic: dlq,
        batch_max_events: 1_000,
        retry_backoff_ms: 50,
        ..PipelineConfig::default()
    };
    let stop = CancellationToken::new();
    let pipeline = Pipeline::new(pipeline_config, registry, sinks, stop.clone())
        .await
        .expect("pipeline");
    let metrics = pipeline.metrics();
    let thread = std::thread::spawn(move || pipeline.run());
    let wait_for = |n: u64| {
        let metrics = metrics.clone();
        async move {
            let started = Instant::now();
            while metrics.events.load(Ordering::Relaxed) < n {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "stuck at {:?}",
                    metrics.events
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    wave(0).await;
    wait_for(10_000).await;
    // The counters take a cycle once Kafka committed it: wait until they have
    // all of it. The pipeline is idle then, so the first counter write after
    // this instant belongs to a batch that comes later.
    let counted = Instant::now();
    while counters.totals(&id).await.map_or(0, |t| t.total) < 10_000 {
        assert!(counted.elapsed() < Duration::from_secs(60), "not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = chrono::Utc::now().timestamp_millis();
    redis.kill();
    wave(10_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One cycle may commit in Kafka before its counters fail; then nothing more
    // is consumed until Redis takes it.
    let during = metrics.events.load(Ordering::Relaxed);
    assert!(
        (10_000..=11_000).contains(&during),
        "at most one cycle commits while Redis is down: {during}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metrics.events.load(Ordering::Relaxed),
        during,
        "nothing more commits while Redis is down"
    );
    redis.spawn();
    wave(20_000).await;
    wait_for(30_000).await;
    stop.cancel();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .unwrap()
        .unwrap()
        .expect("run");

    let totals = counters.totals(&id).await.expect("totals");
    let since = counters.counting_since(&id).await.expect("since");
    (
        totals.total,
        totals.matched,
        killed_at,
        since,
        metrics.failed_cycles.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_persistence_killed_and_restarted_keeps_counts_exact() {
    let (total, matched, killed_at, since, failed) = kill_and_restart_redis(true).await;
    assert!(failed > 0, "the outage was noticed and retried");
    assert_eq!(
        (total, matched),
        (30_000, 30_000),
        "every event counted once across the outage"
    );
    assert!(
        since.is_some_and(|s| s < killed_at),
        "counting did not start over: {since:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_counts_from_the_restart_and_says_so() {
    let (total, matched, killed_at, since, failed) = kill_and_restart_redis(false).await;
    assert!(failed > 0, "the outage was noticed and retried");
    // The first 10,000 were counted in the Redis that was lost; the 20,000 handled
    // after the restart (10,000 of them retried) are counted once.
    assert_eq!((total, matched), (20_000, 20_000));
    assert!(
        since.is_some_and(|s| s > killed_at),
        "`since` marks the fresh start: {since:?}"
    );
}
