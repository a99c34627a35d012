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
use weir::telemetry::Telemetry;
use weir_integration::{PrivateStack, Service, unique};

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

    /// Writes a snapshot (`dump.rdb`) now; the next start loads it.
    fn save(&self) {
        let client = redis::Client::open(self.url()).expect("client");
        let mut conn = client.get_connection().expect("connect");
        redis::cmd("SAVE").query::<()>(&mut conn).expect("SAVE");
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
async fn kill_and_restart_redis(
    persistent: bool,
) -> (u64, u64, i64, Option<i64>, u64, Vec<weir::aggregate::Gap>) {
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
    let pipeline = Pipeline::new(
        pipeline_config,
        registry,
        sinks,
        Telemetry::new(),
        stop.clone(),
    )
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
    // One cycle may commit in Kafka before its counters fail, and the one
    // that ran beside the sinks taking it; then nothing more is consumed
    // until Redis takes them.
    let during = metrics.events.load(Ordering::Relaxed);
    assert!(
        (10_000..=12_000).contains(&during),
        "at most two cycles commit while Redis is down: {during}"
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
    if !persistent {
        // A partition that got no event after the restart is found at the
        // counters' next check of every fence (every 5 s).
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let gaps = counters.gaps().await.expect("gaps");
            if gaps.iter().map(|g| g.until - g.from).sum::<i64>() >= 10_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.cancel();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .unwrap()
        .unwrap()
        .expect("run");

    let totals = counters.totals(&id).await.expect("totals");
    let since = counters.counting_since(&id).await.expect("since");
    let gaps = counters.gaps().await.expect("gaps");
    (
        totals.total,
        totals.matched,
        killed_at,
        since,
        metrics.failed_cycles.load(Ordering::Relaxed),
        gaps,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_persistence_killed_and_restarted_keeps_counts_exact() {
    let (total, matched, killed_at, since, failed, gaps) = kill_and_restart_redis(true).await;
    assert_eq!(gaps, [], "nothing was lost");
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
    let (total, matched, killed_at, since, failed, gaps) = kill_and_restart_redis(false).await;
    assert!(failed > 0, "the outage was noticed and retried");
    // The first 10,000 were counted in the Redis that was lost; the 20,000 handled
    // after the restart (10,000 of them retried) are counted once.
    assert_eq!((total, matched), (20_000, 20_000));
    assert!(
        since.is_some_and(|s| s > killed_at),
        "`since` marks the fresh start: {since:?}"
    );
    let uncounted: i64 = gaps.iter().map(|g| g.until - g.from).sum();
    assert_eq!(
        uncounted, 10_000,
        "the lost counts are reported as gaps, exactly: {gaps:?}"
    );
}

/// The NameNode stopped with SIGSTOP for 40 s under load, with the default
/// timeouts: the pipeline keeps running (its transactions do not wait for the
/// archive), catches up after SIGCONT, and nothing is lost or doubled in the
/// outputs, the counters or the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namenode_stopped_for_40_s_stalls_the_archive_only_for_that_long() {
    use crate::archive::{PipelineSetup, archive_pipeline, check, copy_from_hdfs, read_back};

    // A NameNode and DataNode of the test's own, so stopping them stalls no other test.
    let hdfs = PrivateStack::start(&["namenode", "datanode"], 19_000);
    let hdfs_url = format!("hdfs://127.0.0.1:{}", 19_000 + hdfs.offset);
    let brokers = Service::Kafka.addr();
    let u = unique("stall");
    let first = 20_000i64;
    let PipelineSetup {
        registry,
        events_topic,
        dlq,
        out,
        mut expected,
        ..
    } = crate::archive::pipeline_setup(&brokers, &u, first).await;
    let counters = crate::counters::counters_of(&format!("weirtest-{u}"), &u).await;
    let root = format!("/weir-archive/{u}");
    let archive = weir::archive::ArchiveConfig {
        root: format!("{}{root}", hdfs_url.clone()),
        max_file_age_secs: 0,
        ..weir::archive::ArchiveConfig::default()
    };
    let sink = {
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || weir::archive::ArchiveSink::new(&archive, handle))
            .await
            .unwrap()
            .expect("archive on the private HDFS")
    };
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(CountersSink::new(
            counters.clone(),
            tokio::runtime::Handle::current(),
        )),
        Box::new(sink),
    ];
    let config = archive_pipeline(&brokers, &u, (&events_topic, &dlq), 1_000, 20);
    let mut running = crate::pipeline::Running::start(config, &registry, sinks).await;
    running.wait_for(5_000).await;

    hdfs.signal("namenode", "-STOP");
    let stopped = Instant::now();
    // More load while it is stopped.
    let ids = [format!("{u}-a"), format!("{u}-b")];
    expected.extend(
        crate::archive::produce_events(&brokers, &events_topic, &ids, first..2 * first).await,
    );
    let mut sampled = Vec::new();
    while stopped.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        sampled.push(running.metrics.events.load(Ordering::Relaxed));
        assert!(
            running.alive(),
            "the pipeline stopped while the NameNode was"
        );
    }
    hdfs.signal("namenode", "-CONT");
    let resumed = Instant::now();
    running.wait_for(2 * first as u64).await;
    println!(
        "events handled every 5 s while stopped: {sampled:?}; caught up {:?} after SIGCONT",
        resumed.elapsed()
    );
    let metrics = running.stop().await;
    assert_eq!(
        metrics.producer_recreations.load(Ordering::Relaxed),
        0,
        "no transaction was aborted by the broker"
    );

    let total = 2 * first as usize;
    let read = crate::pipeline::read_committed(&brokers, &[&out, &dlq], total);
    assert_eq!(read.len(), total, "each output once");
    let totals_a = counters.totals(&ids[0]).await.expect("totals");
    let totals_b = counters.totals(&ids[1]).await.expect("totals");
    assert_eq!(
        totals_a.total + totals_b.total,
        total as u64,
        "counted once each"
    );
    let client = hdfs_native::ClientBuilder::new()
        .with_url(hdfs_url.clone())
        .build()
        .expect("HDFS client");
    let (local, _) = copy_from_hdfs(&client, &root).await;
    let rows = tokio::task::spawn_blocking(move || read_back(&local))
        .await
        .expect("join");
    check(&rows, &expected, &events_topic);
}

/// What a rollback test sets up: a private Redis without AOF, a pipeline with
/// the counters on it and a journal topic of its own, and the events so far.
struct RollbackSetup {
    redis: PrivateRedis,
    brokers: String,
    u: String,
    events_topic: String,
    journal_topic: String,
    ids: [String; 2],
    counters: Counters,
    running: crate::pipeline::Running,
    expected: crate::archive::Expected,
}

impl RollbackSetup {
    async fn start(first: i64) -> Self {
        let redis = PrivateRedis::start(false);
        let brokers = Service::Kafka.addr();
        let u = unique("rollback");
        let crate::archive::PipelineSetup {
            registry,
            events_topic,
            dlq,
            expected,
            ..
        } = crate::archive::pipeline_setup(&brokers, &u, first).await;
        let counters = Counters::connect(
            &CountersConfig {
                url: redis.url(),
                success_ratio_group: u.clone(),
                ..CountersConfig::default()
            },
            &u,
        )
        .await
        .expect("counters");
        let journal_topic = format!("{u}-journal");
        let config = PipelineConfig {
            journal_topic: journal_topic.clone(),
            retry_backoff_ms: 50,
            ..crate::archive::archive_pipeline(&brokers, &u, (&events_topic, &dlq), 500, 20)
        };
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(CountersSink::new(
            counters.clone(),
            tokio::runtime::Handle::current(),
        ))];
        let running = crate::pipeline::Running::start(config, &registry, sinks).await;
        let ids = [format!("{u}-a"), format!("{u}-b")];
        let mut setup = Self {
            redis,
            brokers,
            u,
            events_topic,
            journal_topic,
            ids,
            counters,
            running,
            expected,
        };
        setup.settle().await;
        setup
    }

    /// Produces events `seqs`.
    async fn produce(&mut self, seqs: std::ops::Range<i64>) {
        let more =
            crate::archive::produce_events(&self.brokers, &self.events_topic, &self.ids, seqs)
                .await;
        self.expected.extend(more);
    }

    /// The counted total of both scenarios.
    async fn counted(&self) -> u64 {
        let mut total = 0;
        for id in &self.ids {
            total += self.counters.totals(id).await.map_or(0, |t| t.total);
        }
        total
    }

    /// Waits until every event produced was handled and the counters stopped moving.
    async fn settle(&mut self) {
        let total = self.expected.len() as u64;
        self.running.wait_for(total).await;
        let started = Instant::now();
        let mut last = (u64::MAX, Instant::now());
        loop {
            let now = self.counted().await;
            if now != last.0 {
                last = (now, Instant::now());
            } else if now >= total || last.1.elapsed() > Duration::from_secs(5) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the counters did not settle: {now} of {total}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each scenario's count, independently of the counters.
    fn independent(&self) -> Vec<u64> {
        self.ids
            .iter()
            .map(|id| self.expected.values().filter(|(s, _, _)| s == id).count() as u64)
            .collect()
    }

    async fn totals(&self) -> Vec<u64> {
        let mut totals = Vec::new();
        for id in &self.ids {
            totals.push(self.counters.totals(id).await.expect("totals").total);
        }
        totals
    }

    fn sink_count(&self, name: &str) -> u64 {
        self.running
            .metrics
            .sink_counts
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.value)
    }
}

/// Redis without AOF, killed with SIGKILL a few seconds after a snapshot while
/// events flow, restarts from the snapshot: counts and fences rolled back
/// together. The pipeline finds the fence below what it knows was counted,
/// recounts the lost range from the journal, and the counts end equal to an
/// independent count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_from_an_older_snapshot_is_recounted_from_the_journal() {
    let mut setup = RollbackSetup::start(5_000).await;
    // Load: 500 events every 100 ms until told to stop.
    let producing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (brokers, topic, ids, producing) = (
            setup.brokers.clone(),
            setup.events_topic.clone(),
            setup.ids.clone(),
            producing.clone(),
        );
        tokio::spawn(async move {
            let mut expected = crate::archive::Expected::new();
            let mut next = 5_000i64;
            while producing.load(Ordering::Relaxed) {
                expected.extend(
                    crate::archive::produce_events(&brokers, &topic, &ids, next..next + 500).await,
                );
                next += 500;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            expected
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    setup.redis.save();
    let at_snapshot = setup.counted().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    setup.redis.kill();
    let before_kill = setup.counted().await.max(at_snapshot);
    setup.redis.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    producing.store(false, Ordering::Relaxed);
    setup.expected.extend(load.await.expect("load"));
    setup.settle().await;

    let recounted = setup.running.metrics.recounted.load(Ordering::Relaxed);
    println!(
        "counted {at_snapshot} at the snapshot, more before the kill; {recounted} events recounted;          {} in all",
        setup.expected.len()
    );
    assert!(
        before_kill > at_snapshot || recounted > 0,
        "the kill came after counts moved on"
    );
    assert!(
        setup.sink_count("counters_rollbacks") > 0,
        "the rollback was found"
    );
    assert!(recounted > 0, "the lost range was recounted");
    assert_eq!(
        setup.totals().await,
        setup.independent(),
        "every event counted once"
    );
    assert_eq!(setup.counters.gaps().await.expect("gaps"), []);
    let metrics = setup.running.stop().await;
    assert_eq!(metrics.replay_missing.load(Ordering::Relaxed), 0);
    let _ = &setup.u;
}

/// The same rollback after the journal lost the range (its records deleted, as
/// retention would): the counts miss exactly that range, and it is reported as a
/// gap (stats API, metric) of exactly its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_the_journal_cannot_repair_is_reported_exactly() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let mut setup = RollbackSetup::start(5_000).await;
    setup.redis.save();
    setup.produce(5_000..10_000).await;
    setup.settle().await;
    assert_eq!(setup.counted().await, 10_000);
    setup.redis.kill();

    // The journal loses everything it holds.
    let admin: AdminClient<DefaultClientContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .create()
        .expect("admin");
    let probe: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .create()
        .expect("consumer");
    let metadata = probe
        .fetch_metadata(Some(&setup.journal_topic), Duration::from_secs(10))
        .expect("journal metadata");
    let mut cut = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        let (_, high) = probe
            .fetch_watermarks(
                &setup.journal_topic,
                partition.id(),
                Duration::from_secs(10),
            )
            .expect("watermarks");
        cut.add_partition_offset(
            &setup.journal_topic,
            partition.id(),
            rdkafka::Offset::Offset(high),
        )
        .unwrap();
    }
    admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .expect("delete the journal's records");

    setup.redis.spawn();
    setup.produce(10_000..12_000).await;
    setup.settle().await;
    let gaps = setup.counters.gaps().await.expect("gaps");
    let uncounted: i64 = gaps.iter().map(|g| g.until - g.from).sum();
    println!("gaps: {gaps:?}");
    assert_eq!(
        setup.counted().await,
        7_000,
        "the snapshot's 5,000 and the last 2,000"
    );
    assert_eq!(uncounted, 5_000, "the lost range, exactly");
    assert_eq!(setup.sink_count("counters_uncounted_offsets"), 5_000);
    // Each gap is the part of its partition counted after the snapshot.
    for gap in &gaps {
        let in_gap = setup
            .expected
            .keys()
            .filter(|(p, o)| *p == gap.partition && (gap.from..gap.until).contains(o))
            .count() as i64;
        assert_eq!(
            in_gap,
            gap.until - gap.from,
            "{gap:?} holds only real events"
        );
    }
    setup.running.stop().await;
}
