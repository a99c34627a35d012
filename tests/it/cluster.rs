//! The cluster profile (`tests/stack up cluster`): three Kafka brokers (replication
//! factor 3, `min.insync.replicas` 2) and a Redis Cluster of three masters with a
//! replica each. Under load, a partition's leader broker is killed with SIGKILL and
//! restarted, or the broker coordinating the consumer group is, or the Redis master
//! holding the counters is killed and its replica promoted: outputs, dead letters,
//! counters and archive end with every event once.
//!
//! The tests share the cluster and kill parts of it, so they take turns.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use weir::aggregate::{Counters, CountersConfig, CountersSink};
use weir::archive::{ArchiveConfig, ArchiveSink};
use weir::pipeline::sink::Sink;
use weir_integration::{Service, unique};

use crate::archive::{
    Expected, PipelineSetup, archive_pipeline, assert_no_overlaps, check_hdfs_archive, committed,
    pipeline_setup, produce_events,
};

/// One cluster test at a time: each kills a part of the shared cluster.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The stack directory and script, from `tests/stack env`.
fn stack() -> (PathBuf, String) {
    let dir = std::env::var("WEIR_TEST_STACK_DIR").expect(
        "WEIR_TEST_STACK_DIR is not set: load the test environment with \
         `eval \"$(tests/stack env)\"`, or run every test with `tests/run`",
    );
    let script = std::env::var("WEIR_TEST_STACK").expect("WEIR_TEST_STACK is not set");
    (PathBuf::from(dir), script)
}

/// SIGKILLs the stack's service `svc` (a cluster node).
fn kill(svc: &str) {
    let (dir, _) = stack();
    let pid = std::fs::read_to_string(dir.join(svc).join("pid"))
        .unwrap_or_else(|e| panic!("{svc} has no pid file: {e}"));
    let status = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {svc}");
}

/// Starts the stack's service `svc` again and waits until it is ready.
fn restart(svc: &str) {
    let (_, script) = stack();
    let status = Command::new(script)
        .args(["up", svc])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("tests/stack up");
    assert!(status.success(), "tests/stack up {svc}");
}

/// What both tests run: the pipeline on the cluster, with counters on the Redis
/// Cluster and the archive on HDFS, under a steady load, and a fault in the middle.
struct Loaded {
    brokers: String,
    u: String,
    setup: PipelineSetup,
    counters: Counters,
    running: crate::pipeline::Running,
    root: String,
    producing: Arc<AtomicBool>,
    load: tokio::task::JoinHandle<Expected>,
}

impl Loaded {
    async fn start() -> Self {
        let brokers = Service::KafkaCluster.addr();
        let redis = Service::RedisCluster.addr();
        let hdfs = Service::Hdfs.addr();
        let u = unique("cluster");
        let setup = pipeline_setup(&brokers, &u, 0).await;
        let counters = Counters::connect(
            &CountersConfig {
                url: redis,
                cluster: true,
                key_prefix: "weirtest".into(),
                success_ratio_group: u.clone(),
                ..CountersConfig::default()
            },
            &u,
        )
        .await
        .expect("counters on the Redis Cluster");
        let root = format!("/weir-archive/{u}");
        let archive = ArchiveConfig {
            root: format!("{hdfs}{root}"),
            max_file_age_secs: 3,
            idle_secs: 2,
            ..ArchiveConfig::default()
        };
        let handle = tokio::runtime::Handle::current();
        let archive = tokio::task::spawn_blocking(move || ArchiveSink::new(&archive, handle))
            .await
            .unwrap()
            .expect("archive");
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(CountersSink::new(
                counters.clone(),
                tokio::runtime::Handle::current(),
            )),
            Box::new(archive),
        ];
        let config = weir::pipeline::PipelineConfig {
            retry_backoff_ms: 100,
            ..archive_pipeline(&brokers, &u, (&setup.events_topic, &setup.dlq), 500, 20)
        };
        let running = crate::pipeline::Running::start(config, &setup.registry, sinks).await;
        // Load: 300 events every 100 ms until told to stop.
        let producing = Arc::new(AtomicBool::new(true));
        let load = {
            let (brokers, topic, producing) = (
                brokers.clone(),
                setup.events_topic.clone(),
                producing.clone(),
            );
            let ids = [format!("{u}-a"), format!("{u}-b")];
            tokio::spawn(async move {
                let mut expected = Expected::new();
                let mut next = 0i64;
                while producing.load(Ordering::Relaxed) {
                    expected.extend(produce_events(&brokers, &topic, &ids, next..next + 300).await);
                    next += 300;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                expected
            })
        };
        Self {
            brokers,
            u,
            setup,
            counters,
            running,
            root,
            producing,
            load,
        }
    }

    /// Stops the load, waits until every event is committed and counted, and checks
    /// every sink: each event once in the outputs, the counters and the archive.
    async fn finish(self) {
        self.producing.store(false, Ordering::Relaxed);
        let expected = self.load.await.expect("load");
        let total = expected.len();
        let ends: Vec<i64> = (0..3)
            .map(|p| expected.keys().filter(|(q, _)| *q == p).count() as i64)
            .collect();
        let want: Vec<(i64, i64)> = ends.iter().map(|&end| (end, end)).collect();
        let mut running = self.running;
        running
            .wait_until("every event handled", |m| {
                m.events.load(Ordering::Relaxed) >= total as u64
            })
            .await;
        let started = Instant::now();
        while committed(&self.brokers, &self.u, &self.setup.events_topic, 3) != want {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "not everything committed: {:?} of {want:?}",
                committed(&self.brokers, &self.u, &self.setup.events_topic, 3)
            );
            assert!(running.alive(), "the pipeline stopped");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let metrics = running.stop().await;
        assert_eq!(
            metrics.events.load(Ordering::Relaxed),
            total as u64,
            "each event handled once"
        );
        let read = crate::pipeline::read_committed(
            &self.brokers,
            &[&self.setup.out, &self.setup.dlq],
            total,
        );
        assert_eq!(read.len(), total, "each output once, no dead letters");
        let ids = [format!("{}-a", self.u), format!("{}-b", self.u)];
        for id in &ids {
            let want = expected.values().filter(|(s, _, _)| s == id).count() as u64;
            let got = self.counters.totals(id).await.expect("totals").total;
            assert_eq!(got, want, "{id} counted once each");
        }
        assert_eq!(self.counters.gaps().await.expect("gaps"), []);
        let client = hdfs_native::ClientBuilder::new()
            .with_url(Service::Hdfs.addr())
            .build()
            .expect("HDFS client");
        let paths =
            check_hdfs_archive(&client, &self.root, &expected, &self.setup.events_topic).await;
        assert_no_overlaps(&paths);
        println!(
            "{total} events; {} cycles failed and were retried; {} recounted; the producer \
             was made again {} times",
            metrics.failed_cycles.load(Ordering::Relaxed),
            metrics.recounted.load(Ordering::Relaxed),
            metrics.producer_recreations.load(Ordering::Relaxed)
        );
        client.delete(&self.root, true).await.expect("clean up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_leader_killed_and_restarted_under_load_loses_and_doubles_nothing() {
    let _turn = TURN.lock().await;
    let loaded = Loaded::start().await;
    loaded.running_for(Duration::from_secs(6)).await;
    let probe: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &loaded.brokers)
        .create()
        .expect("consumer");
    let metadata = probe
        .fetch_metadata(Some(&loaded.setup.events_topic), Duration::from_secs(10))
        .expect("metadata");
    let leader = metadata.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == 0)
        .expect("partition 0")
        .leader();
    let svc = format!("kafka{leader}");
    println!("killing {svc}, the leader of partition 0");
    kill(&svc);
    tokio::time::sleep(Duration::from_secs(10)).await;
    restart(&svc);
    loaded.running_for(Duration::from_secs(6)).await;
    loaded.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_master_killed_and_its_replica_promoted_under_load_loses_and_doubles_nothing() {
    let _turn = TURN.lock().await;
    let loaded = Loaded::start().await;
    loaded.running_for(Duration::from_secs(6)).await;
    // The master of the slot that holds the group's counters.
    let nodes: Vec<String> = Service::RedisCluster
        .addr()
        .split(',')
        .map(str::to_owned)
        .collect();
    let client = redis::Client::open(nodes[0].as_str()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let key = format!("weirtest:{{weirtest:{}}}:fence", loaded.u);
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query(&mut conn)
        .expect("KEYSLOT");
    let table: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut conn)
        .expect("CLUSTER NODES");
    let master = table
        .lines()
        .find(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2).is_some_and(|f| f.contains("master"))
                && fields.iter().skip(8).any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    matches!((from.parse::<i64>(), to.parse::<i64>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                })
        })
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|addr| addr.split('@').next())
        .expect("the slot's master")
        .to_owned();
    let index = nodes
        .iter()
        .position(|url| url.contains(&master))
        .expect("a node of the stack");
    let svc = format!("rcluster{}", index + 1);
    println!("killing {svc} ({master}), the master of slot {slot}");
    kill(&svc);
    // The replica takes over after the node timeout (2 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    restart(&svc);
    loaded.running_for(Duration::from_secs(6)).await;
    loaded.finish().await;
}

/// The broker that coordinates consumer group `group`: the leader of the
/// group's `__consumer_offsets` partition, which Kafka picks as
/// `Utils.abs(group.hashCode()) % partitions`.
fn group_coordinator(brokers: &str, group: &str) -> i32 {
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let probe: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let metadata = probe
        .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions();
    assert!(!partitions.is_empty(), "no __consumer_offsets partitions");
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    let index = positive % partitions.len() as i32;
    partitions
        .iter()
        .find(|p| p.id() == index)
        .expect("the group's partition")
        .leader()
}

/// The broker coordinating the pipeline's group is killed for long enough to
/// leave the cluster's metadata (KRaft fences it), then restarted. librdkafka's
/// `send_offsets_to_transaction` can wait for ever on a coordinator gone that
/// way; the pipeline's bounded calls make the producer again, and nothing is
/// lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_coordinator_killed_under_load_stalls_nothing_for_good_and_loses_nothing() {
    let _turn = TURN.lock().await;
    let loaded = Loaded::start().await;
    loaded.running_for(Duration::from_secs(6)).await;
    let coordinator = group_coordinator(&loaded.brokers, &loaded.u);
    let svc = format!("kafka{coordinator}");
    println!("killing {svc}, the coordinator of group {}", loaded.u);
    kill(&svc);
    // Longer than the controller's broker session (9 s): the broker leaves
    // the metadata, as a crashed machine would.
    tokio::time::sleep(Duration::from_secs(20)).await;
    restart(&svc);
    loaded.running_for(Duration::from_secs(6)).await;
    loaded.finish().await;
}

impl Loaded {
    /// Lets the load and the pipeline run for `time`, failing if the pipeline stops.
    async fn running_for(&self, time: Duration) {
        let started = Instant::now();
        while started.elapsed() < time {
            assert!(self.running.alive(), "the pipeline stopped");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
