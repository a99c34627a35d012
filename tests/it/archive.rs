//! The Parquet archive against real HDFS and a local directory, read back by pyarrow
//! (`tests/archive_reader.py`), a reader that shares no code with weir: every row once,
//! offsets contiguous per partition, replays and restarts adding no second copy, and
//! temporary files never left behind nor visible under final names.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdfs_native::{Client, ClientBuilder, WriteOptions};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use weir::archive::{ArchiveConfig, ArchiveError, ArchiveSink, LocalStore, Store, TMP_DIR};
use weir::pipeline::PipelineConfig;
use weir::pipeline::catalog::Route;
use weir::pipeline::sink::{EventMeta, PartitionBatch, ScenarioBatch, Sink};
use weir::registry::{MakeCurrent, PutMode, Registry};
use weir::runtime::{Batch, EventInput, Instance, Runtime, RuntimeConfig};
use weir_integration::{Service, unique};

const HOUR_MS: i64 = 3_600_000;
/// 2026-11-26T08:00:00Z.
const BASE_MS: i64 = 1_795_680_000_000;

/// What one archived row must be: its scenario, its `seq` field and its event time.
pub(crate) type Expected = BTreeMap<(i32, i64), (String, i64, i64)>;

fn log_format() -> Value {
    json!({"memberId": 1, "age": 1, "gender": 1, "h": 1, "seq": 1})
}

fn filters() -> Value {
    json!([{"left": "age", "operator": ">", "right": 20}])
}

fn event(scenario: &str, seq: i64) -> Value {
    json!({
        "scenario_id": scenario,
        "memberId": format!("m{}", seq % 50),
        "age": 15 + seq % 30,
        "gender": if seq % 2 == 0 { "MALE" } else { "FEMALE" },
        "h": seq % 24,
        "seq": seq,
        "url": format!("/goods/{}", seq % 100),
    })
}

/// Runs `tests/archive_reader.py` on a local copy of an archive.
pub(crate) fn read_back(root: &Path) -> Value {
    run_reader(
        concat!(env!("CARGO_MANIFEST_DIR"), "/archive_reader.py"),
        root,
        &[],
    )
}

/// Runs the Python reader `script` on `root` with `args` (see `tests/stack install`)
/// and parses the JSON it prints.
pub(crate) fn run_reader(script: &str, root: &Path, args: &[&str]) -> Value {
    let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_PYTHON is not set: install pyarrow and duckdb with `tests/stack install` \
             and load the variables with `eval \"$(tests/stack env)\"`, or run every test with \
             `tests/run`"
        )
    });
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(root)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python} {script}: {e}"));
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("reader output is JSON")
}

/// Checks what pyarrow read against `expected`: every row once, in the right file and
/// hour directory, files named by the offsets they hold, zstd with statistics.
pub(crate) fn check(read: &Value, expected: &Expected, topic: &str) {
    check_named(read, expected, topic, weir::archive::Naming::Range);
}

/// [`check`] for an archive whose files are named as `naming` says: by the offsets
/// they hold, or by their place in their directory's chain, which must then run
/// from 0 with no gap and no overlap.
pub(crate) fn check_named(
    read: &Value,
    expected: &Expected,
    topic: &str,
    naming: weir::archive::Naming,
) {
    let mut seen: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for file in read["files"].as_array().expect("files") {
        let path = file["path"].as_str().unwrap();
        assert_eq!(file["codecs"], json!(["ZSTD"]), "{path}");
        assert_eq!(file["statistics"], json!(true), "{path}");
        assert_eq!(file["columns"]["offset"], json!("int64"), "{path}");
        assert_eq!(
            file["columns"]["event_time"],
            json!("timestamp[ms, tz=UTC]"),
            "{path}"
        );
        assert!(
            path.ends_with(".parquet"),
            "only final files are visible: {path}"
        );
    }
    let rows = read["rows"].as_array().expect("rows");
    let mut offsets_by_file: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for row in rows {
        let (partition, offset) = (
            row["partition"].as_i64().unwrap() as i32,
            row["offset"].as_i64().unwrap(),
        );
        *seen.entry((partition, offset)).or_default() += 1;
        let (scenario, seq, time) = expected
            .get(&(partition, offset))
            .unwrap_or_else(|| panic!("row for an offset never archived: {row}"));
        assert_eq!(
            row["scenario_id"].as_str(),
            Some(scenario.as_str()),
            "{row}"
        );
        assert_eq!(row["seq"].as_i64(), Some(*seq), "{row}");
        assert_eq!(row["event_time"].as_i64(), Some(*time), "{row}");
        assert_eq!(row["topic"].as_str(), Some(topic), "{row}");
        let age = 15 + seq % 30;
        assert_eq!(row["success"].as_i64(), Some(i64::from(age > 20)), "{row}");
        let file = row["file"].as_str().unwrap();
        let hour = chrono::DateTime::from_timestamp_millis(*time)
            .unwrap()
            .format("year=%Y/month=%m/day=%d/hour=%H")
            .to_string();
        assert!(
            file.starts_with(&format!(
                "scenario_id={scenario}/{hour}/{topic}-{partition}-"
            )),
            "{row} is in the wrong file"
        );
        offsets_by_file.entry(file).or_default().push(offset);
    }
    if naming == weir::archive::Naming::Position {
        // Per directory and partition: (from, lowest, highest) of each file.
        type Chain = Vec<(i64, i64, i64)>;
        let mut chains: BTreeMap<(&str, i32), Chain> = BTreeMap::new();
        for (file, offsets) in &offsets_by_file {
            let (dir, name) = file.rsplit_once('/').unwrap();
            let (t, partition, from) =
                weir::archive::parse_position_name(name).expect("a file name by position");
            assert_eq!(t, topic, "{file}");
            let (low, high) = (
                *offsets.iter().min().unwrap(),
                *offsets.iter().max().unwrap(),
            );
            chains
                .entry((dir, partition))
                .or_default()
                .push((from, low, high));
        }
        for ((dir, partition), mut chain) in chains {
            chain.sort();
            let mut next = 0;
            for (from, low, high) in chain {
                assert_eq!(
                    from, next,
                    "{dir} partition {partition}: a file at {from} where the chain goes on at {next}"
                );
                assert!(low >= from, "{dir}: rows below the file's place");
                next = high + 1;
            }
        }
    }
    for (file, offsets) in &offsets_by_file {
        if naming == weir::archive::Naming::Position {
            break;
        }
        let name = file.rsplit('/').next().unwrap();
        let (_, _, first, last) = weir::archive::parse_file_name(name).expect("file name");
        assert_eq!(
            (first, last),
            (
                *offsets.iter().min().unwrap(),
                *offsets.iter().max().unwrap()
            ),
            "{file} is named by the offsets it holds"
        );
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "offsets archived twice: {:?}",
        &doubled[..doubled.len().min(10)]
    );
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(k)).collect();
    assert!(
        missing.is_empty(),
        "{} offsets missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(rows.len(), expected.len());
    assert_eq!(read["dataset_rows"].as_u64(), Some(expected.len() as u64));
}

/// Copies the tree under `dir` on HDFS to a fresh local directory; returns it and the
/// relative paths of every file found (temporary ones included).
pub(crate) async fn copy_from_hdfs(client: &Client, dir: &str) -> (PathBuf, Vec<String>) {
    let local = std::env::temp_dir().join(unique("weir-archive-copy"));
    let mut paths = Vec::new();
    for status in client.list_status(dir, true).await.expect("list archive") {
        if status.isdir {
            continue;
        }
        let relative = status.path.strip_prefix(&format!("{dir}/")).unwrap();
        let mut reader = client.read(&status.path).await.expect("open");
        let bytes = reader.read_bytes(reader.file_length()).await.expect("read");
        let target = local.join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &bytes).unwrap();
        paths.push(relative.to_owned());
    }
    (local, paths)
}

/// Scenarios run through the real `scenario` plugin, to build partition batches the
/// way the pipeline does.
struct Scenarios {
    topic: String,
    routes: Vec<(Arc<Route>, Instance)>,
}

impl Scenarios {
    fn new(topic: &str, ids: &[&str]) -> Self {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("plugin artifact");
        let plugin = runtime.load(&bytes).expect("load the scenario plugin");
        let routes = ids
            .iter()
            .map(|id| {
                let config = json!({"scenario_id": id, "log_format": log_format(),
                                    "filters": filters()})
                .to_string();
                let instance = plugin.instantiate(&config).expect("configure");
                let route = Route {
                    id: (*id).to_owned(),
                    plugin_version: plugin.info().version.clone(),
                    plugin: plugin.clone(),
                    plugin_label: "scenario@1".into(),
                    config,
                    sources: Vec::new(),
                    output_topic: "unused".into(),
                    enrich_by: None,
                    shadow: None,
                    canary: None,
                };
                (Arc::new(route), instance)
            })
            .collect();
        Self {
            topic: topic.to_owned(),
            routes,
        }
    }

    /// Offset `o` goes to scenario `o % n` with `seq = o`; its time is `time(o)`.
    fn batch(&mut self, offsets: Range<i64>, time: impl Fn(i64) -> i64) -> PartitionBatch {
        let n = self.routes.len() as i64;
        let mut scenarios = Vec::new();
        for (index, (route, instance)) in self.routes.iter_mut().enumerate() {
            let mut batch = Batch::new(&route.id, &self.topic, 0);
            let mut events = Vec::new();
            for offset in offsets.clone().filter(|o| o % n == index as i64) {
                let value = serde_json::to_vec(&event(&route.id, offset)).unwrap();
                batch
                    .push_event(EventInput {
                        offset,
                        value: &value,
                        timestamp_ms: Some(time(offset)),
                        ..EventInput::default()
                    })
                    .unwrap();
                events.push(EventMeta {
                    offset,
                    timestamp_ms: Some(time(offset)),
                });
            }
            let result = instance.process(&batch).expect("process");
            scenarios.push(ScenarioBatch {
                scenario: route.id.clone(),
                plugin: route.plugin_label.clone(),
                events,
                result,
            });
        }
        PartitionBatch {
            topic: self.topic.clone(),
            partition: 0,
            first_offset: offsets.start,
            last_offset: offsets.end - 1,
            processed_ms: chrono::Utc::now().timestamp_millis(),
            scenarios,
            ..PartitionBatch::default()
        }
    }

    fn expected(&self, offsets: Range<i64>, time: impl Fn(i64) -> i64) -> Expected {
        let n = self.routes.len() as i64;
        offsets
            .map(|o| {
                let id = self.routes[(o % n) as usize].0.id.clone();
                ((0, o), (id, o, time(o)))
            })
            .collect()
    }
}

/// Two hours, interleaved in runs of three offsets: most cycles span both.
fn two_hours(offset: i64) -> i64 {
    BASE_MS + ((offset / 3) % 2) * HOUR_MS + offset
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn write(sink: &mut ArchiveSink, batch: PartitionBatch) {
    sink.write(&[batch]).expect("archive write");
}

/// Replays with the same and other boundaries, restarts, and a crash that fell between
/// the renames of one cycle's files: each offset stays archived once. Run against `root`.
fn replay_adds_no_second_copy(
    root: &str,
    runtime: &tokio::runtime::Runtime,
    scenarios: &mut Scenarios,
    delete: &mut dyn FnMut(&str),
) {
    let config = ArchiveConfig {
        root: root.to_owned(),
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let mut sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("sink");
    write(&mut sink, scenarios.batch(0..100, two_hours));
    write(&mut sink, scenarios.batch(100..200, two_hours));
    let files = sink.stats().files;
    assert_eq!(files, 8, "2 cycles x 2 scenarios x 2 hours");

    // A retried cycle with other boundaries, then one that covers everything so far.
    write(&mut sink, scenarios.batch(50..150, two_hours));
    write(&mut sink, scenarios.batch(0..200, two_hours));
    assert_eq!(sink.stats().files, files, "a replay writes nothing");
    assert_eq!(sink.stats().skipped_rows, 300);
    write(&mut sink, scenarios.batch(0..250, two_hours));
    assert_eq!(sink.stats().rows, 250, "only 200..250 was new");
    drop(sink);

    // A restart: marks come back from the file names.
    let mut sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("sink");
    write(&mut sink, scenarios.batch(150..300, two_hours));
    assert_eq!(sink.stats().rows, 50);
    assert_eq!(sink.stats().skipped_rows, 100);
    drop(sink);

    // A crash after some of a cycle's renames: the others are missing, the offset
    // marks of the renamed ones are ahead. The replay fills exactly the gap.
    let hour = chrono::DateTime::from_timestamp_millis(BASE_MS + HOUR_MS)
        .unwrap()
        .format("year=%Y/month=%m/day=%d/hour=%H");
    let id = &scenarios.routes[1].0.id;
    let topic = scenarios.topic.clone();
    // Scenario 1 (odd offsets) in the second hour, cycle 250..300: offsets 251..=299.
    delete(&format!(
        "scenario_id={id}/{hour}/{topic}-0-251-299.parquet"
    ));
    let mut sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("sink");
    write(&mut sink, scenarios.batch(250..300, two_hours));
    assert_eq!(
        sink.stats().files,
        1,
        "only the missing file is written again"
    );
    assert_eq!(sink.stats().rows, 17);
}

#[test]
fn replays_and_restarts_add_no_second_copy_on_hdfs() {
    let url = Service::Hdfs.addr();
    let runtime = tokio_runtime();
    let dir = format!("/weir-archive/{}", unique("replay"));
    let client = ClientBuilder::new()
        .with_url(&url)
        .build()
        .expect("HDFS client");
    let topic = unique("events");
    let mut scenarios = Scenarios::new(&topic, &["a", "b"]);
    replay_adds_no_second_copy(
        &format!("{url}{dir}"),
        &runtime,
        &mut scenarios,
        &mut |path| {
            let deleted = runtime
                .block_on(client.delete(&format!("{dir}/{path}"), false))
                .expect("delete");
            assert!(deleted, "{path} was there");
        },
    );
    runtime.block_on(check_hdfs_archive(
        &client,
        &dir,
        &scenarios.expected(0..300, two_hours),
        &topic,
    ));
    runtime
        .block_on(client.delete(&dir, true))
        .expect("clean up");
}

#[test]
fn replays_and_restarts_add_no_second_copy_in_a_local_directory() {
    let root = std::env::temp_dir().join(unique("weir-archive-local"));
    let runtime = tokio_runtime();
    let topic = unique("events");
    // Numeric ids, which readers that infer partition types would take for integers.
    let mut scenarios = Scenarios::new(&topic, &["5", "7"]);
    replay_adds_no_second_copy(
        root.to_str().unwrap(),
        &runtime,
        &mut scenarios,
        &mut |path| std::fs::remove_file(root.join(path)).expect("delete"),
    );
    check(
        &read_back(&root),
        &scenarios.expected(0..300, two_hours),
        &topic,
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Record timestamps no clock gives (negative, nanoseconds written as
/// milliseconds, far in the future) are filed under the processing hour and
/// flagged, not under 1970 or year 50,000; every row is archived once, and
/// the sane ones keep their own hours.
#[test]
fn insane_event_times_are_archived_under_the_processing_hour_and_flagged() {
    let root = std::env::temp_dir().join(unique("weir-archive-times"));
    let runtime = tokio_runtime();
    let topic = unique("events");
    let mut scenarios = Scenarios::new(&topic, &["5"]);
    let config = ArchiveConfig {
        root: root.to_str().unwrap().to_owned(),
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let insane = |offset: i64| match offset % 4 {
        0 => two_hours(offset),
        1 => -5 - offset,
        2 => BASE_MS * 1_000_000 + offset,
        _ => i64::MAX - offset,
    };
    let before = chrono::Utc::now().timestamp_millis();
    let mut sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("sink");
    write(&mut sink, scenarios.batch(0..100, insane));
    write(&mut sink, scenarios.batch(100..200, insane));
    drop(sink);
    let after = chrono::Utc::now().timestamp_millis();

    let read = read_back(&root);
    let rows = read["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 200, "every row once");
    let hour_of = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("year=%Y/month=%m/day=%d/hour=%H")
            .to_string()
    };
    for row in rows {
        let offset = row["offset"].as_i64().unwrap();
        let time = row["event_time"].as_i64().unwrap();
        let file = row["file"].as_str().unwrap();
        if offset % 4 == 0 {
            assert_eq!(time, two_hours(offset), "{row}");
            assert_eq!(row["event_time_valid"], json!(true), "{row}");
            assert!(file.contains(&hour_of(time)), "{row}");
        } else {
            assert!((before..=after).contains(&time), "{row}");
            assert_eq!(row["event_time_valid"], json!(false), "{row}");
            assert!(
                file.contains(&hour_of(before)) || file.contains(&hour_of(after)),
                "{row}"
            );
        }
    }
    // Within each file, rows are in offset order.
    let mut by_file: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for row in rows {
        by_file
            .entry(row["file"].as_str().unwrap())
            .or_default()
            .push(row["offset"].as_i64().unwrap());
    }
    for (file, offsets) in by_file {
        assert!(offsets.is_sorted(), "{file}: {offsets:?}");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn leftover_temporary_files_are_removed_at_start_on_hdfs() {
    let url = Service::Hdfs.addr();
    let runtime = tokio_runtime();
    let dir = format!("/weir-archive/{}", unique("tmp"));
    let client = ClientBuilder::new()
        .with_url(&url)
        .build()
        .expect("HDFS client");
    runtime.block_on(async {
        for i in 0..3 {
            let mut writer = client
                .create(
                    &format!("{dir}/{TMP_DIR}/crashed-{i}.parquet.tmp"),
                    WriteOptions::default().create_parent(true),
                )
                .await
                .expect("create");
            writer
                .write_bytes(Bytes::from_static(b"PAR1 half a file"))
                .await
                .expect("write");
            if i < 2 {
                writer.close().await.expect("close");
            }
            // The third is left open, as by a process killed while writing it.
        }
    });
    let config = ArchiveConfig {
        root: format!("{url}{dir}"),
        ..ArchiveConfig::default()
    };
    let sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("sink");
    assert_eq!(sink.stats().removed_temporaries, 3);
    let left = runtime
        .block_on(client.list_status(&format!("{dir}/{TMP_DIR}"), false))
        .expect("list");
    assert!(left.is_empty(), "left: {left:?}");
    runtime
        .block_on(client.delete(&dir, true))
        .expect("clean up");
}

/// A store whose `put` can be made to stop after the temporary file, as a process
/// killed between write and rename would.
#[derive(Debug)]
struct CrashingStore {
    inner: LocalStore,
    root: PathBuf,
    crash: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for CrashingStore {
    fn put(&mut self, path: &str, tmp: &str, bytes: &[u8]) -> Result<bool, ArchiveError> {
        if self.crash.load(Ordering::Relaxed) {
            let tmp_path = self.root.join(tmp);
            std::fs::create_dir_all(tmp_path.parent().unwrap()).unwrap();
            std::fs::write(tmp_path, &bytes[..bytes.len() / 2]).unwrap();
            return Err(ArchiveError::Store {
                op: "rename",
                path: path.to_owned(),
                reason: "killed".into(),
            });
        }
        self.inner.put(path, tmp, bytes)
    }
    fn list(&mut self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        self.inner.list(dir)
    }
    fn delete(&mut self, path: &str) -> Result<(), ArchiveError> {
        if self.crash.load(Ordering::Relaxed) {
            return Err(ArchiveError::Store {
                op: "delete",
                path: path.to_owned(),
                reason: "killed".into(),
            });
        }
        self.inner.delete(path)
    }
    fn delete_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
        self.inner.delete_dir(dir)
    }
    fn make_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
        self.inner.make_dir(dir)
    }
    fn is_dir(&mut self, dir: &str) -> Result<bool, ArchiveError> {
        self.inner.is_dir(dir)
    }
    fn root(&self) -> String {
        self.inner.root()
    }
}

#[test]
fn a_write_cut_before_its_rename_is_never_visible_and_is_redone() {
    let root = std::env::temp_dir().join(unique("weir-archive-crash"));
    let crash = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = || CrashingStore {
        inner: LocalStore::new(&root).unwrap(),
        root: root.clone(),
        crash: crash.clone(),
    };
    let topic = unique("events");
    let mut scenarios = Scenarios::new(&topic, &["a", "b"]);
    let config = ArchiveConfig {
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let mut sink = ArchiveSink::with_store(&config, Box::new(store())).unwrap();
    write(&mut sink, scenarios.batch(0..100, two_hours));
    crash.store(true, Ordering::Relaxed);
    let failed = sink.write(&[scenarios.batch(100..200, two_hours)]);
    assert!(
        failed.is_err(),
        "the cycle fails, so its offsets are not committed"
    );
    let read = read_back(&root);
    assert_eq!(
        read["rows"].as_array().unwrap().len(),
        100,
        "nothing partial"
    );
    // One temporary file per scenario and hour, none renamed, in the writer's
    // directory for the partition.
    let partition_tmp = root.join(TMP_DIR).join(format!("{topic}-0"));
    let temporaries = |dir: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flat_map(|writer| std::fs::read_dir(writer.unwrap().path()).unwrap())
            .map(|f| f.unwrap().path())
            .collect()
    };
    assert_eq!(temporaries(&partition_tmp).len(), 4);

    crash.store(false, Ordering::Relaxed);
    let mut sink = ArchiveSink::with_store(&config, Box::new(store())).unwrap();
    write(&mut sink, scenarios.batch(100..200, two_hours));
    assert_eq!(
        temporaries(&partition_tmp),
        Vec::<PathBuf>::new(),
        "the next writer's fence removed them"
    );
    assert_eq!(sink.stats().fences, 1);
    check(
        &read_back(&root),
        &scenarios.expected(0..200, two_hours),
        &topic,
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Produces events `seqs` to `topic`, alternating between the scenarios `ids`
/// (see [`event`]): what each archived row must then be, by (partition, offset).
pub(crate) async fn produce_events(
    brokers: &str,
    topic: &str,
    ids: &[String],
    seqs: Range<i64>,
) -> Expected {
    // 108 ms of event time apart (100,000 events span three hours), keyed by member.
    // Idempotent: a broker that fails while the events go out (the cluster tests)
    // does not make the retries write an event twice.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("message.timeout.ms", "60000")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let sends = seqs.map(|seq| {
        let producer = producer.clone();
        let topic = topic.to_owned();
        let id = ids[(seq as usize) % ids.len()].clone();
        async move {
            let value = serde_json::to_vec(&event(&id, seq)).unwrap();
            let key = format!("m{}", seq % 50);
            let time = BASE_MS + seq * 108;
            let delivery = producer
                .send(
                    FutureRecord::to(&topic)
                        .payload(&value)
                        .key(&key)
                        .timestamp(time),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
            ((delivery.partition, delivery.offset), (id, seq, time))
        }
    });
    futures::future::join_all(sends).await.into_iter().collect()
}

/// What [`pipeline_setup`] made: the registry, the topics, what to expect.
pub(crate) struct PipelineSetup {
    pub(crate) registry: Registry,
    pub(crate) registry_url: String,
    pub(crate) events_topic: String,
    pub(crate) dlq: String,
    pub(crate) out: String,
    pub(crate) expected: Expected,
}

/// Topics, a registry (SQLite) with two scenarios, and `events` events produced.
pub(crate) async fn pipeline_setup(brokers: &str, u: &str, events: i64) -> PipelineSetup {
    let (events_topic, dlq, out) = (
        format!("{u}-events"),
        format!("{u}-dlq"),
        format!("{u}-out"),
    );
    // Three partitions each (the events topic's three are what the tests count on).
    crate::pipeline::create_topics(brokers, &[&events_topic, &dlq, &out]).await;

    let dir = std::env::temp_dir().join(unique("weir-archive-registry"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let registry_url = format!("sqlite://{}", dir.join("registry.db").display());
    let registry = Registry::connect(
        &registry_url,
        Runtime::new(RuntimeConfig::default()).expect("runtime"),
    )
    .await
    .expect("registry");
    let plugin = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("plugin artifact");
    registry
        .upload_plugin(plugin, Some("scenario"), "test", MakeCurrent::IfNew)
        .await
        .expect("upload");
    let ids = [format!("{u}-a"), format!("{u}-b")];
    for id in &ids {
        let doc = json!({"scenario_id": id, "title": "adults", "manager": "test",
                         "log_format": log_format(), "filters": filters(),
                         "output_topic": out, "enabled": true});
        registry
            .put_scenario(doc, None, PutMode::Create, "test")
            .await
            .expect("scenario");
    }

    let expected = produce_events(brokers, &events_topic, &ids, 0..events).await;
    for partition in 0..3 {
        let offsets: Vec<i64> = expected
            .keys()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {partition} holds contiguous offsets"
        );
    }

    PipelineSetup {
        registry,
        registry_url,
        events_topic,
        dlq,
        out,
        expected,
    }
}

/// An archive sink for `config`, made off the runtime's threads (it blocks on HDFS).
async fn archive_sink(config: ArchiveConfig) -> ArchiveSink {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || ArchiveSink::new(&config, handle))
        .await
        .expect("join")
        .expect("archive sink")
}

/// The pipeline of [`pipeline_setup`]'s topics in group `group`, with small batches.
pub(crate) fn archive_pipeline(
    brokers: &str,
    group: &str,
    setup: (&str, &str),
    batch_max_events: usize,
    batch_linger_ms: u64,
) -> PipelineConfig {
    let (events_topic, dlq) = setup;
    PipelineConfig {
        brokers: brokers.to_owned(),
        group_id: group.to_owned(),
        topics: vec![events_topic.to_owned()],
        dlq_topic: dlq.to_owned(),
        batch_max_events,
        batch_linger_ms,
        registry_poll_ms: 100,
        ..PipelineConfig::default()
    }
}

/// Reads the archive under `root` on HDFS back with pyarrow and checks it against
/// `expected`: no temporary file left, every row once. Returns the relative paths.
pub(crate) async fn check_hdfs_archive(
    client: &Client,
    root: &str,
    expected: &Expected,
    topic: &str,
) -> Vec<String> {
    let (local, paths) = copy_from_hdfs(client, root).await;
    assert!(
        paths.iter().all(|p| !p.starts_with(TMP_DIR)),
        "no temporary files left: {paths:?}"
    );
    let read = tokio::task::spawn_blocking(move || read_back(&local))
        .await
        .expect("join");
    check(&read, expected, topic);
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_through_the_pipeline_are_archived_once_on_hdfs() {
    let brokers = Service::Kafka.addr();
    let hdfs = Service::Hdfs.addr();
    let u = unique("arch");
    let PipelineSetup {
        registry,
        events_topic,
        dlq,
        expected,
        ..
    } = pipeline_setup(&brokers, &u, 100_000).await;

    let root = format!("/weir-archive/{u}");
    let sink = archive_sink(ArchiveConfig {
        root: format!("{hdfs}{root}"),
        ..ArchiveConfig::default()
    })
    .await;
    let config = archive_pipeline(&brokers, &u, (&events_topic, &dlq), 4096, 50);
    crate::pipeline::run_until(config, &registry, vec![Box::new(sink)], 100_000).await;

    let client = ClientBuilder::new()
        .with_url(&hdfs)
        .build()
        .expect("HDFS client");
    let paths = check_hdfs_archive(&client, &root, &expected, &events_topic).await;
    let hours: BTreeSet<&str> = paths
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    assert_eq!(
        hours.len(),
        2 * 3,
        "two scenarios over three hours: {hours:?}"
    );
    client.delete(&root, true).await.expect("clean up");
}

/// Files stay open across cycles and roll on age, idleness, the open-file limit and
/// the memory limit, or at a flush; while open, they hold the partition's committed
/// offset back (`pending_from`). Every row ends in exactly one file.
#[test]
fn open_files_roll_by_time_and_limits_and_hold_commits_back() {
    let root = std::env::temp_dir().join(unique("weir-archive-rolling"));
    let topic = unique("events");
    let mut scenarios = Scenarios::new(&topic, &["a", "b"]);
    let runtime = tokio_runtime();
    let clock = Arc::new(std::sync::atomic::AtomicI64::new(BASE_MS));
    let sink = |config: ArchiveConfig| {
        let clock = clock.clone();
        ArchiveSink::new(&config, runtime.handle().clone())
            .expect("sink")
            .with_clock(move || clock.load(Ordering::Relaxed))
    };
    let advance = |secs: i64| clock.fetch_add(secs * 1000, Ordering::Relaxed);
    let one_hour = |offset: i64| BASE_MS + offset;
    let config = ArchiveConfig {
        root: root.display().to_string(),
        max_file_age_secs: 90,
        idle_secs: 60,
        ..ArchiveConfig::default()
    };
    let mut archive = sink(config.clone());

    write(&mut archive, scenarios.batch(0..100, one_hour));
    assert_eq!(archive.stats().files, 0, "files stay open");
    assert_eq!(archive.stats().open_files, 2, "one per scenario");
    assert_eq!(archive.stats().held_rows, 100);
    assert_eq!(archive.pending_from(&topic, 0), Some(0));
    assert_eq!(archive.pending_from(&topic, 1), None, "another partition");
    advance(30);
    write(&mut archive, scenarios.batch(100..200, one_hour));
    advance(59);
    archive.tick().expect("tick");
    assert_eq!(archive.stats().files, 0, "not idle for 60 s, not 90 s old");
    advance(1);
    archive.tick().expect("tick");
    assert_eq!(archive.stats().files, 2, "90 s old: closed");
    assert_eq!(archive.stats().rows, 200);
    assert_eq!(archive.pending_from(&topic, 0), None, "nothing held");

    write(&mut archive, scenarios.batch(200..300, one_hour));
    assert_eq!(archive.pending_from(&topic, 0), Some(200));
    advance(59);
    archive.tick().expect("tick");
    assert_eq!(archive.stats().files, 2);
    advance(1);
    archive.tick().expect("tick");
    assert_eq!(archive.stats().files, 4, "idle for 60 s: closed");

    write(&mut archive, scenarios.batch(300..400, one_hour));
    archive.flush().expect("flush");
    assert_eq!(archive.stats().files, 6, "a flush closes every file");
    assert_eq!(archive.stats().open_files, 0);
    drop(archive);

    // One open file at most: the other scenario's closes at once.
    let mut archive = sink(ArchiveConfig {
        max_open_files: 1,
        ..config.clone()
    });
    write(&mut archive, scenarios.batch(400..500, one_hour));
    assert_eq!(archive.stats().files, 1);
    assert_eq!(archive.stats().open_files, 1);
    archive.flush().expect("flush");
    // Memory: 1 MiB of held records is over the limit; the largest file closes.
    let mut archive = sink(ArchiveConfig {
        max_buffered_mb: 1,
        ..config
    });
    write(&mut archive, scenarios.batch(500..12_000, one_hour));
    let stats = archive.stats();
    assert!(stats.files >= 1, "{stats:?}");
    assert_eq!(stats.rows + stats.held_rows, 11_500, "{stats:?}");
    archive.flush().expect("flush");

    let read = read_back(&root);
    check(&read, &scenarios.expected(0..12_000, one_hour), &topic);
    let _ = std::fs::remove_dir_all(&root);
}

/// The archive, except that it loses its open files when the pipeline stops, as a
/// crash would.
#[derive(Debug)]
struct LosesOpenFiles(ArchiveSink);

impl Sink for LosesOpenFiles {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn write(&mut self, batches: &[PartitionBatch]) -> Result<(), weir::pipeline::sink::SinkError> {
        self.0.write(batches)
    }
    fn pending_from(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.pending_from(topic, partition)
    }
    fn tick(&mut self) -> Result<(), weir::pipeline::sink::SinkError> {
        self.0.tick()
    }
    fn revoked(&mut self, partitions: &[(String, i32)]) {
        self.0.revoked(partitions);
    }
}

/// Committed offset and produced mark of each partition of `topic`, for `group`.
pub(crate) fn committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i64, i64)> {
    committed_if_any(brokers, group, topic, partitions)
        .into_iter()
        .enumerate()
        .map(|(p, at)| at.unwrap_or_else(|| panic!("partition {p} has no committed offset")))
        .collect()
}

/// Like [`committed`], `None` for a partition without a committed offset yet.
pub(crate) fn committed_if_any(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<(i64, i64)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    // A broker busy with a restarted pipeline's fencing and rebalance (and, on
    // two cores, with the tests beside it) can miss a metadata deadline now and
    // then; that is not what the tests check.
    let mut attempts = 0;
    let list = loop {
        match consumer.committed_offsets(list.clone(), Duration::from_secs(30)) {
            Ok(list) => break list,
            Err(e)
                if attempts < 5
                    && e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::OperationTimedOut) =>
            {
                attempts += 1;
            }
            Err(e) => panic!("committed offsets: {e}"),
        }
    };
    list.elements()
        .iter()
        .map(|e| {
            let rdkafka::Offset::Offset(committed) = e.offset() else {
                return None;
            };
            let produced = e
                .metadata()
                .strip_prefix(weir::pipeline::PRODUCED_METADATA)
                .and_then(|n| n.split(';').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no produced mark in {:?}", e.metadata()));
            Some((committed, produced))
        })
        .collect()
}

/// Files stay open across cycles; while they do, the committed offset stays behind
/// them. A crash loses the open files; the restarted pipeline consumes from the
/// committed offset, replays to the archive only what was produced before (no output
/// record twice), and the archive ends with every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_open_files_replays_them_to_the_archive_only() {
    let brokers = Service::Kafka.addr();
    let u = unique("roll");
    let total = 20_000i64;
    let PipelineSetup {
        registry,
        events_topic,
        dlq,
        out,
        expected,
        ..
    } = pipeline_setup(&brokers, &u, total).await;
    let root = std::env::temp_dir().join(unique("weir-archive-roll"));
    // Nothing closes by time; the open-file limit closes some files along the way.
    let config = ArchiveConfig {
        root: root.display().to_string(),
        max_file_age_secs: 3_600,
        idle_secs: 3_600,
        max_open_files: 3,
        ..ArchiveConfig::default()
    };
    let pipeline = archive_pipeline(&brokers, &u, (&events_topic, &dlq), 2_000, 50);

    let sink = archive_sink(config.clone()).await;
    let first = crate::pipeline::run_until(
        pipeline.clone(),
        &registry,
        vec![Box::new(LosesOpenFiles(sink))],
        total as u64,
    )
    .await;
    assert_eq!(first.outputs.load(Ordering::Relaxed), total as u64);
    let ends: Vec<i64> = (0..3)
        .map(|p| expected.keys().filter(|(q, _)| *q == p).count() as i64)
        .collect();
    let positions = committed(&brokers, &u, &events_topic, 3);
    let mut held = 0;
    for ((committed, produced), end) in positions.iter().zip(&ends) {
        assert_eq!(
            *produced, *end,
            "outputs are produced to the end: {positions:?}"
        );
        assert!(committed <= produced, "{positions:?}");
        held += produced - committed;
    }
    assert!(
        held > 0,
        "open files hold the committed offsets back: {positions:?}"
    );

    // The restart reads the held range's results back from the journal and
    // gives them to the archive alone; its stop closes the files and commits.
    let sink = archive_sink(config.clone()).await;
    let mut second =
        crate::pipeline::Running::start(pipeline.clone(), &registry, vec![Box::new(sink)]).await;
    second
        .wait_until("the held range replayed", |m| {
            m.replayed.load(Ordering::Relaxed) >= held as u64
        })
        .await;
    let second = second.stop().await;
    assert_eq!(
        second.replayed.load(Ordering::Relaxed),
        held as u64,
        "each held event replayed once"
    );
    assert_eq!(
        second.outputs.load(Ordering::Relaxed),
        0,
        "nothing produced again"
    );
    assert_eq!(second.dead_letters.load(Ordering::Relaxed), 0);
    assert_eq!(second.replay_missing.load(Ordering::Relaxed), 0);
    let positions = committed(&brokers, &u, &events_topic, 3);
    let want: Vec<(i64, i64)> = ends.iter().map(|&end| (end, end)).collect();
    assert_eq!(positions, want, "everything committed after the stop");

    let outputs = crate::pipeline::read_committed(&brokers, &[&out], total as usize);
    assert_eq!(outputs.len(), total as usize, "each output once");
    let local = root.clone();
    let read = tokio::task::spawn_blocking(move || read_back(&local))
        .await
        .expect("join");
    check(&read, &expected, &events_topic);
    let _ = std::fs::remove_dir_all(&root);
}

/// The `weir` binary `cargo test --workspace` built next to this test binary.
pub(crate) fn weir_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("weir"))
        .expect("target directory");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it with `cargo build -p weir` (`cargo test --workspace` does)",
                binary.display()
            )
        });
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src");
    let newest = newest_change(&sources);
    assert!(
        newest <= built,
        "{} is older than {}: rebuild it with `cargo build -p weir` (`cargo test --workspace` does)",
        binary.display(),
        sources.display()
    );
    binary
}

/// The latest modification time of any file under `dir`.
fn newest_change(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).expect("read sources").flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_change(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(newest)
        };
        newest = newest.max(time);
    }
    newest
}

/// `weir serve --config <config>`, its log in `log`.
pub(crate) fn serve(config: &Path, log: &Path) -> std::process::Child {
    serve_with(config, log, &[])
}

/// [`serve`] with the variables `vars` set besides.
pub(crate) fn serve_with(config: &Path, log: &Path, vars: &[(&str, &str)]) -> std::process::Child {
    let log = std::fs::File::create(log).expect("log file");
    std::process::Command::new(weir_binary())
        .envs(vars.iter().copied())
        .arg("serve")
        .arg("--config")
        .arg(config)
        // The collector on a free port: tests run side by side.
        .env("WEIR_COLLECT__LISTEN", "127.0.0.1:0")
        .env_remove("WEIR_KAFKA")
        .env_remove("WEIR_REDIS")
        .env_remove("WEIR_DATABASE")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start weir serve")
}

/// Fails the test when `child` (a `weir serve` logging to `log`) has exited, or
/// when 180 s have passed since `started` without what it waits for (`waiting`).
pub(crate) fn still_serving(
    child: &mut std::process::Child,
    started: Instant,
    log: &std::path::Path,
    waiting: &str,
) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "weir serve exited; log: {}",
        log.display()
    );
    assert!(
        started.elapsed() < Duration::from_secs(180),
        "{waiting} in 180 s; log: {}",
        log.display()
    );
}

/// `weir serve` killed with SIGKILL while archive files are open and being stored,
/// then started again: every event is archived exactly once, no temporary file is
/// left, and the output topic holds each output once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_serve_killed_while_files_are_open_restarts_exactly_once() {
    let brokers = Service::Kafka.addr();
    let hdfs = Service::Hdfs.addr();
    let u = unique("kill");
    let total = 30_000i64;
    let PipelineSetup {
        registry,
        registry_url,
        events_topic,
        dlq,
        out,
        expected,
    } = pipeline_setup(&brokers, &u, total).await;
    drop(registry);
    let data = std::env::temp_dir().join(unique("weir-kill"));
    std::fs::create_dir_all(&data).expect("data dir");
    let root = format!("/weir-archive/{u}");
    let head = kill_test_config(&data, &registry_url, &brokers, &u, &events_topic, &dlq);
    let config = |archive: &str| format!("{head}[archive]\nroot = \"{hdfs}{root}\"\n{archive}\n");
    // Many files, each open for a while, two at a time: the kill finds files open,
    // some being stored, some stored.
    let first = data.join("first.toml");
    std::fs::write(
        &first,
        config("max_file_age_secs = 3600\nidle_secs = 3600\nmax_open_files = 2"),
    )
    .unwrap();
    let client = ClientBuilder::new()
        .with_url(&hdfs)
        .build()
        .expect("HDFS client");
    let mut child = serve(&first, &data.join("first.log"));
    let started = Instant::now();
    loop {
        let stored = client
            .list_status(&root, true)
            .await
            .map(|files| {
                files
                    .iter()
                    .filter(|f| f.path.ends_with(".parquet"))
                    .count()
            })
            .unwrap_or(0);
        if stored >= 10 {
            break;
        }
        still_serving(
            &mut child,
            started,
            &data.join("first.log"),
            "fewer than 10 files stored",
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let log = restart_after_kill(
        &brokers,
        &u,
        &events_topic,
        &expected,
        &config("max_file_age_secs = 2\nidle_secs = 1"),
        &data,
        &[],
    )
    .await;
    assert!(
        log.contains("replayed to the sinks from the journal")
            || log.contains("removed leftover temporary files"),
        "the restart found work left by the kill; log:\n{log}"
    );

    check_hdfs_archive(&client, &root, &expected, &events_topic).await;
    let outputs = crate::pipeline::read_committed(&brokers, &[&out, &dlq], total as usize);
    assert_eq!(
        outputs.len(),
        total as usize,
        "each output once, no dead letters"
    );
    client.delete(&root, true).await.expect("clean up");
    let _ = std::fs::remove_dir_all(&data);
}

/// The configuration of a kill test's `weir serve`, up to its `[archive]` table.
pub(crate) fn kill_test_config(
    data: &Path,
    registry_url: &str,
    brokers: &str,
    group: &str,
    topic: &str,
    dlq: &str,
) -> String {
    format!(
        "data_dir = {data:?}\ndatabase = {registry_url:?}\nlisten = \"127.0.0.1:0\"\n\
         [pipeline]\nbrokers = {brokers:?}\ngroup_id = {group:?}\ntopics = [{topic:?}]\n\
         dlq_topic = {dlq:?}\nbatch_max_events = 1000\nbatch_linger_ms = 20\n\
         instance = \"kill-test\"\n\
         [pipeline.kafka]\n\"session.timeout.ms\" = \"6000\"\n",
        data = data.display().to_string(),
    )
}

/// After a kill test's `weir serve` was killed: checks that it was before the end,
/// starts it again in `data` with `config` (and `vars`), waits until every offset of
/// `topic` is committed, stops it with SIGTERM and returns its log.
pub(crate) async fn restart_after_kill(
    brokers: &str,
    group: &str,
    topic: &str,
    expected: &Expected,
    config: &str,
    data: &Path,
    vars: &[(&str, &str)],
) -> String {
    let positions = committed(brokers, group, topic, 3);
    let ends: Vec<i64> = (0..3)
        .map(|p| expected.keys().filter(|(q, _)| *q == p).count() as i64)
        .collect();
    assert!(
        positions.iter().zip(&ends).any(|((c, _), end)| c < end),
        "killed before the end: {positions:?}"
    );
    let (second, log) = (data.join("second.toml"), data.join("second.log"));
    std::fs::write(&second, config).unwrap();
    let mut child = serve_with(&second, &log, vars);
    let want: Vec<(i64, i64)> = ends.iter().map(|&end| (end, end)).collect();
    let started = Instant::now();
    while committed(brokers, group, topic, 3) != want {
        still_serving(
            &mut child,
            started,
            &log,
            &format!(
                "not everything committed: {:?}",
                committed(brokers, group, topic, 3)
            ),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status} after SIGTERM");
    std::fs::read_to_string(&log).unwrap_or_default()
}

/// The DataNode stops mid-stream: the pipeline fails its cycles, keeps consumption
/// paused and commits nothing past the files it could not store; when the DataNode is
/// back it catches up, and the archive holds every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datanode_restarted_mid_stream_loses_nothing_and_doubles_nothing() {
    let brokers = Service::Kafka.addr();
    // A NameNode and DataNode of the test's own, so restarting its DataNode
    // leaves the shared one alone.
    let hdfs = tokio::task::spawn_blocking(|| {
        weir_integration::PrivateStack::start(&["namenode", "datanode"], 19_000)
    })
    .await
    .expect("join");
    let hdfs_url = format!("hdfs://127.0.0.1:{}", 19_000 + hdfs.offset);
    let u = unique("dn");
    let total = 40_000i64;
    let PipelineSetup {
        registry,
        events_topic,
        dlq,
        expected,
        ..
    } = pipeline_setup(&brokers, &u, total).await;
    let root = format!("/weir-archive/{u}");
    let sink = archive_sink(ArchiveConfig {
        root: format!("{}{root}", hdfs_url.clone()),
        max_file_age_secs: 1,
        idle_secs: 1,
        store_timeout_secs: 5,
        ..ArchiveConfig::default()
    })
    .await;
    let config = archive_pipeline(&brokers, &u, (&events_topic, &dlq), 500, 20);
    through_an_outage(
        config,
        registry,
        Box::new(sink),
        total,
        "DataNode",
        || hdfs.must(&["down", "datanode"]),
        || hdfs.must(&["up", "datanode"]),
    )
    .await;

    let client = ClientBuilder::new()
        .with_url(hdfs_url.clone())
        .build()
        .expect("HDFS client");
    check_hdfs_archive(&client, &root, &expected, &events_topic).await;
    tokio::task::spawn_blocking(move || drop(hdfs))
        .await
        .expect("join");
}

/// Runs `config`'s pipeline with `sink` until `total` events: after 5,000, `stop`
/// (the store goes away), then checks that cycles fail and consumption pauses, then
/// `restart`, and waits for every event.
pub(crate) async fn through_an_outage(
    config: PipelineConfig,
    registry: Registry,
    sink: Box<dyn Sink>,
    total: i64,
    what: &str,
    stop_store: impl Fn(),
    restart: impl Fn(),
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let pipeline = weir::pipeline::Pipeline::new(
        config,
        registry,
        vec![sink],
        weir::telemetry::Telemetry::new(),
        stop.clone(),
    )
    .await
    .expect("pipeline");
    let metrics = pipeline.metrics();
    let thread = std::thread::spawn(move || pipeline.run());
    let wait_for = |what: &'static str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "{what} did not happen within 180 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let events = || metrics.events.load(Ordering::Relaxed);
    let failed = || metrics.failed_cycles.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        wait_for("5,000 events", &|| events() >= 5_000);
        stop_store();
        let stopped_at = events();
        wait_for("a failed cycle", &|| failed() >= 1);
        let during = events();
        eprintln!("{what} stopped after {stopped_at} events; first failure after {during}");
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            events() <= during + 500,
            "consumption is paused while files cannot be stored: {during} then {}",
            events()
        );
        restart();
        wait_for("every event", &|| events() >= total as u64);
    });
    stop.cancel();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("pipeline thread")
        .expect("pipeline run");
}

/// A TCP proxy in front of the NameNode that can be cut and restored, on one port.
struct CutProxy {
    port: u16,
    target: String,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CutProxy {
    async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut proxy = Self {
            port: listener.local_addr().unwrap().port(),
            target: target.to_owned(),
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (target, tasks) = (self.target.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let copy = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(copy);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes the listener and every connection through it.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the same port again");
        self.serve(listener);
    }
}

#[test]
fn hdfs_unreachable_fails_the_cycle_in_bounded_time_and_the_retry_completes_it() {
    let url = Service::Hdfs.addr();
    let namenode = url.trim_start_matches("hdfs://").trim_end_matches('/');
    let runtime = tokio_runtime();
    let mut proxy = runtime.block_on(CutProxy::start(namenode));
    let dir = format!("/weir-archive/{}", unique("cut"));
    let config = ArchiveConfig {
        root: format!("hdfs://127.0.0.1:{}{dir}", proxy.port),
        store_timeout_secs: 5,
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let topic = unique("events");
    let mut scenarios = Scenarios::new(&topic, &["a", "b"]);
    let mut sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("sink");
    write(&mut sink, scenarios.batch(0..100, two_hours));

    proxy.cut();
    let started = Instant::now();
    let failed = sink.write(&[scenarios.batch(100..200, two_hours)]);
    assert!(failed.is_err(), "the cycle fails while HDFS is unreachable");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a failing cycle is bounded by the timeouts, took {:?}",
        started.elapsed()
    );

    runtime.block_on(proxy.restore());
    // The pipeline retries the same events, here with other boundaries.
    let retried = Instant::now();
    loop {
        match sink.write(&[scenarios.batch(50..200, two_hours)]) {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    retried.elapsed() < Duration::from_secs(60),
                    "still failing after HDFS came back: {e}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    write(&mut sink, scenarios.batch(200..300, two_hours));

    let client = ClientBuilder::new()
        .with_url(&url)
        .build()
        .expect("HDFS client");
    runtime.block_on(check_hdfs_archive(
        &client,
        &dir,
        &scenarios.expected(0..300, two_hours),
        &topic,
    ));
    runtime
        .block_on(client.delete(&dir, true))
        .expect("clean up");
}

#[test]
fn a_partition_back_from_another_replica_is_not_archived_twice() {
    let root = std::env::temp_dir().join(unique("weir-archive-replicas"));
    let config = ArchiveConfig {
        root: root.display().to_string(),
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let runtime = tokio_runtime();
    let clock = Arc::new(std::sync::atomic::AtomicI64::new(BASE_MS));
    let sink = |clock: &Arc<std::sync::atomic::AtomicI64>| {
        let clock = clock.clone();
        ArchiveSink::new(&config, runtime.handle().clone())
            .expect("sink")
            .with_clock(move || clock.load(Ordering::Relaxed))
    };
    let topic = unique("events");
    let mut scenarios = Scenarios::new(&topic, &["a", "b"]);
    let (mut one, mut other) = (sink(&clock), sink(&clock));
    write(&mut one, scenarios.batch(0..100, two_hours));
    // The partition moves to the other replica, which archives 100..200 but dies before
    // committing; it comes back to the first at offset 100, seconds later.
    one.revoked(&[(topic.clone(), 0)]);
    write(&mut other, scenarios.batch(100..200, two_hours));
    clock.fetch_add(10_000, Ordering::Relaxed);
    write(&mut one, scenarios.batch(100..150, two_hours));
    assert_eq!(one.stats().files, 4, "nothing written again");
    assert_eq!(one.stats().skipped_rows, 50);
    write(&mut one, scenarios.batch(150..250, two_hours));
    check(
        &read_back(&root),
        &scenarios.expected(0..250, two_hours),
        &topic,
    );
    std::fs::remove_dir_all(&root).ok();
}

/// The archive, except that the first tick after it took rows fails: a store
/// whose first put fails.
#[derive(Debug)]
struct FailsFirstTick(ArchiveSink, Option<bool>);

impl Sink for FailsFirstTick {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn write(&mut self, batches: &[PartitionBatch]) -> Result<(), weir::pipeline::sink::SinkError> {
        self.1.get_or_insert(false);
        self.0.write(batches)
    }
    fn pending_from(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.pending_from(topic, partition)
    }
    fn tick(&mut self) -> Result<(), weir::pipeline::sink::SinkError> {
        if self.1 == Some(false) {
            self.1 = Some(true);
            return Err(weir::pipeline::sink::SinkError::new(
                "archive",
                "the first put fails (test)",
            ));
        }
        self.0.tick()
    }
    fn flush(&mut self) -> Result<(), weir::pipeline::sink::SinkError> {
        self.0.flush()
    }
    fn revoked(&mut self, partitions: &[(String, i32)]) {
        self.0.revoked(partitions);
    }
}

/// The case where sinks used to keep a first attempt and Kafka the last: one
/// event spins to the CPU limit, which sets its scenario aside, while the
/// archive's first put fails; then a crash with files open, after which the
/// members are imported again and the scenario is disabled. Outputs and dead
/// letters (read_committed), the counters and the archive, joined by
/// (partition, offset), agree on every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_agrees_through_a_quarantine_a_failed_put_and_a_crash() {
    use weir::aggregate::CountersSink;
    use weir::registry::Member;

    let brokers = Service::Kafka.addr();
    let u = unique("agree");
    let (events_topic, dlq, out) = (
        format!("{u}-events"),
        format!("{u}-dlq"),
        format!("{u}-out"),
    );
    crate::pipeline::create_topics(&brokers, &[&events_topic, &dlq, &out]).await;
    let dir = std::env::temp_dir().join(unique("weir-agree-registry"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let registry = Registry::connect(
        &format!("sqlite://{}", dir.join("registry.db").display()),
        Runtime::new(RuntimeConfig::default()).expect("runtime"),
    )
    .await
    .expect("registry");
    let plugin = std::fs::read(weir_artifacts::FIXTURE_TRAP_AT).expect("artifact");
    registry
        .upload_plugin(plugin, Some("trap-at"), "test", MakeCurrent::IfNew)
        .await
        .expect("upload");
    let id = format!("{u}-s");
    let doc = json!({"scenario_id": id, "plugin": "trap-at", "output_topic": out,
                     "enrich": {"by": "memberId"}});
    registry
        .put_scenario(doc.clone(), None, PutMode::Create, "test")
        .await
        .expect("scenario");
    let members = |tag: &str| -> Vec<Member> {
        (0..20)
            .map(|i| Member {
                member_id: format!("m{i}"),
                attributes: json!({"tag": tag}).as_object().unwrap().clone(),
            })
            .collect()
    };
    registry
        .import_members(&members("first"))
        .await
        .expect("members");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "10")
        .create()
        .expect("producer");
    let wave = |from: i64, count: i64| {
        let producer = producer.clone();
        let topic = events_topic.clone();
        let id = id.clone();
        async move {
            let sends = (from..from + count).map(|n| {
                let mut value =
                    json!({"scenario_id": id, "n": n, "memberId": format!("m{}", n % 20)});
                if n == 1_500 {
                    value["loop"] = json!(true);
                }
                let producer = producer.clone();
                let topic = topic.clone();
                // Keyed by member: every partition gets events all through the
                // wave, so events follow the spin in its partition.
                let key = format!("m{}", n % 20);
                async move {
                    let value = serde_json::to_vec(&value).unwrap();
                    producer
                        .send(
                            FutureRecord::to(&topic).payload(&value).key(&key),
                            Duration::from_secs(30),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .expect("produce");
                }
            });
            futures::future::join_all(sends).await;
        }
    };
    let counters = crate::counters::counters_of(&format!("weirtest-{u}"), &u).await;
    let counters_sink = || -> Box<dyn Sink> {
        Box::new(CountersSink::new(
            counters.clone(),
            tokio::runtime::Handle::current(),
        ))
    };
    let root = std::env::temp_dir().join(unique("weir-agree-archive"));
    let archive = |max_file_age_secs| ArchiveConfig {
        root: root.display().to_string(),
        max_file_age_secs,
        idle_secs: max_file_age_secs.max(1),
        ..ArchiveConfig::default()
    };
    let pipeline = PipelineConfig {
        batch_max_events: 500,
        retry_backoff_ms: 50,
        ..archive_pipeline(&brokers, &u, (&events_topic, &dlq), 500, 50)
    };

    // 1. The spin sets the scenario aside for 30 s, so most of what follows
    //    it is dead-lettered; the archive's first put fails meanwhile.
    wave(0, 3_000).await;
    let sink = archive_sink(archive(0)).await;
    let mut first = crate::pipeline::Running::start(
        pipeline.clone(),
        &registry,
        vec![counters_sink(), Box::new(FailsFirstTick(sink, None))],
    )
    .await;
    first.wait_for(3_000).await;
    let first = first.stop().await;
    assert!(first.quarantines.load(Ordering::Relaxed) >= 1, "set aside");
    assert!(
        first.sink_failures.load(Ordering::Relaxed) >= 1,
        "a put failed"
    );

    // 2. Files held open, then lost as in a crash: the commit stays behind them.
    wave(3_000, 1_000).await;
    let sink = archive_sink(archive(3_600)).await;
    crate::pipeline::run_until(
        pipeline.clone(),
        &registry,
        vec![counters_sink(), Box::new(LosesOpenFiles(sink))],
        1_000,
    )
    .await;
    let held: i64 = committed(&brokers, &u, &events_topic, 3)
        .iter()
        .map(|(committed, produced)| produced - committed)
        .sum();
    assert!(held > 0, "open files held the commit back");

    // 3. Meanwhile the members change and the scenario is disabled: running
    //    the plugins again could not reproduce what was produced.
    registry
        .import_members(&members("second"))
        .await
        .expect("members");
    let mut disabled = doc.clone();
    disabled["enabled"] = json!(false);
    registry
        .put_scenario(disabled, None, PutMode::Upsert, "test")
        .await
        .expect("disable");
    let sink = archive_sink(archive(0)).await;
    let mut third = crate::pipeline::Running::start(
        pipeline.clone(),
        &registry,
        vec![counters_sink(), Box::new(sink)],
    )
    .await;
    third
        .wait_until("the held range replayed", |m| {
            m.replayed.load(Ordering::Relaxed) >= held as u64
        })
        .await;
    let third = third.stop().await;
    assert_eq!(
        third.outputs.load(Ordering::Relaxed),
        0,
        "nothing produced again"
    );
    assert_eq!(third.replay_missing.load(Ordering::Relaxed), 0);

    // Join the four by (partition, offset).
    let total = 4_000usize;
    let read = crate::pipeline::read_committed(&brokers, &[&out, &dlq], total);
    let mut outputs: BTreeSet<(i32, i64)> = BTreeSet::new();
    let mut dead: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for record in &read {
        let h = &record.headers;
        match h.get("weir-reason") {
            Some(reason) => {
                let at = (
                    h["weir-source-partition"].parse().unwrap(),
                    h["weir-source-offset"].parse().unwrap(),
                );
                assert!(
                    dead.insert(at, reason.clone()).is_none(),
                    "two dead letters for {at:?}"
                );
            }
            None => {
                let (p, o) = h["weir-source-offset"].split_once(':').unwrap();
                let at = (p.parse().unwrap(), o.parse().unwrap());
                assert!(outputs.insert(at), "two outputs for {at:?}");
            }
        }
    }
    assert!(
        outputs.is_disjoint(&dead.keys().copied().collect()),
        "no event both output and dead-lettered"
    );
    assert_eq!(
        outputs.len() + dead.len(),
        total,
        "every event once in Kafka"
    );
    let quarantined = dead.values().filter(|r| *r == "plugin_quarantined").count();
    assert!(quarantined > 0, "the scenario was set aside: {dead:?}");
    assert!(dead.values().any(|r| r == "cpu_limit"), "{dead:?}");

    let local = root.clone();
    let rows = tokio::task::spawn_blocking(move || read_back(&local))
        .await
        .expect("join");
    let mut archived: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for row in rows["rows"].as_array().expect("rows") {
        let at = (
            row["partition"].as_i64().unwrap() as i32,
            row["offset"].as_i64().unwrap(),
        );
        *archived.entry(at).or_default() += 1;
        assert_eq!(
            row["tag"],
            json!("first"),
            "enriched as when produced: {row}"
        );
    }
    assert!(archived.values().all(|&n| n == 1), "every row once");
    let archived: BTreeSet<(i32, i64)> = archived.into_keys().collect();
    assert_eq!(archived, outputs, "the archive holds exactly the outputs");

    let totals = counters.totals(&id).await.expect("totals");
    assert_eq!(totals.total, total as u64, "counted once each: {totals:?}");
    assert_eq!(totals.errors, dead.len() as u64, "{totals:?}");
    assert_eq!(
        totals.total - totals.errors - totals.dropped,
        outputs.len() as u64,
        "{totals:?}"
    );
    println!(
        "outputs {}, dead letters {} ({quarantined} quarantined), replayed {held}",
        outputs.len(),
        dead.len()
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A replica stopped and started again every 15 s for 90 s beside a steady
/// one, under steady load: the committed offsets advance across every
/// restart, and the outputs, the counters and the archive end with every event
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_every_15_s_beside_a_steady_one_keeps_every_sink_exact() {
    use weir::aggregate::CountersSink;

    let brokers = Service::Kafka.addr();
    let u = unique("flaky");
    let PipelineSetup {
        registry,
        events_topic,
        dlq,
        out,
        ..
    } = pipeline_setup(&brokers, &u, 0).await;
    let ids = [format!("{u}-a"), format!("{u}-b")];
    let counters = crate::counters::counters_of(&format!("weirtest-{u}"), &u).await;
    let root = std::env::temp_dir().join(unique("weir-flaky-archive"));
    let sinks = || {
        let counters = counters.clone();
        let root = root.clone();
        async move {
            let archive = archive_sink(ArchiveConfig {
                root: root.display().to_string(),
                max_file_age_secs: 3,
                idle_secs: 2,
                ..ArchiveConfig::default()
            })
            .await;
            let sinks: Vec<Box<dyn Sink>> = vec![
                Box::new(CountersSink::new(
                    counters,
                    tokio::runtime::Handle::current(),
                )),
                Box::new(archive),
            ];
            sinks
        }
    };
    let config = |instance: &str| PipelineConfig {
        instance: Some(instance.into()),
        kafka: [("session.timeout.ms".to_owned(), "6000".to_owned())].into(),
        ..archive_pipeline(&brokers, &u, (&events_topic, &dlq), 1_000, 20)
    };

    // Load: 1,000 events every 2 s until told to stop.
    let producing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (brokers, topic, ids, producing) = (
            brokers.clone(),
            events_topic.clone(),
            ids.clone(),
            producing.clone(),
        );
        tokio::spawn(async move {
            let mut expected = Expected::new();
            let mut next = 0i64;
            while producing.load(Ordering::Relaxed) {
                expected.extend(produce_events(&brokers, &topic, &ids, next..next + 1_000).await);
                next += 1_000;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            expected
        })
    };

    let steady = crate::pipeline::Running::start(config("steady"), &registry, sinks().await).await;
    let mut flaky_events = 0u64;
    let mut committed_sums = Vec::new();
    for _ in 0..6 {
        let flaky =
            crate::pipeline::Running::start(config("flaky"), &registry, sinks().await).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(steady.alive(), "the steady replica kept running");
        flaky_events += flaky.stop().await.events.load(Ordering::Relaxed);
        let sum: i64 = committed_if_any(&brokers, &u, &events_topic, 3)
            .into_iter()
            .map(|at| at.map_or(0, |(committed, _)| committed))
            .sum();
        committed_sums.push(sum);
    }
    producing.store(false, Ordering::Relaxed);
    let expected = load.await.expect("load");
    let total = expected.len() as u64;
    println!("committed after each restart: {committed_sums:?}; {total} events");
    assert!(
        committed_sums.windows(2).all(|w| w[1] > w[0]),
        "the committed offsets advance across every restart: {committed_sums:?}"
    );
    assert!(flaky_events > 0, "the restarted replica took a share");

    let mut steady = steady;
    steady
        .wait_until("every event handled", |m| {
            m.events.load(Ordering::Relaxed) + flaky_events >= total
        })
        .await;
    let steady = steady.stop().await;
    assert_eq!(
        steady.events.load(Ordering::Relaxed) + flaky_events,
        total,
        "the replicas' committed counts add up exactly"
    );
    let read = crate::pipeline::read_committed(&brokers, &[&out, &dlq], total as usize);
    assert_eq!(read.len() as u64, total, "each output once");
    let mut counted = 0;
    for id in &ids {
        counted += counters.totals(id).await.expect("totals").total;
    }
    assert_eq!(counted, total, "counted once each");
    let local = root.clone();
    let rows = tokio::task::spawn_blocking(move || read_back(&local))
        .await
        .expect("join");
    check(&rows, &expected, &events_topic);
    let _ = std::fs::remove_dir_all(&root);
}

/// The final files of every key under `paths` (relative archive paths): no two
/// of one (scenario, hour, topic, partition) overlap in offsets.
pub(crate) fn assert_no_overlaps(paths: &[String]) {
    let mut by_key: BTreeMap<(String, String, i32), Vec<(i64, i64)>> = BTreeMap::new();
    for path in paths.iter().filter(|p| !p.starts_with(TMP_DIR)) {
        let (dir, name) = path.rsplit_once('/').expect("a file in an hour directory");
        let (topic, partition, first, last) =
            weir::archive::parse_file_name(name).expect("an archive file name");
        by_key
            .entry((dir.to_owned(), topic, partition))
            .or_default()
            .push((first, last));
    }
    for (key, mut ranges) in by_key {
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "files of {key:?} overlap: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`) to `child`.
pub(crate) fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal}");
}

/// Two `weir serve` replicas share a group and an HDFS archive with files held open.
/// Replica A is stopped (SIGSTOP) past its session timeout while B takes its
/// partitions over and archives them, then A goes on (SIGCONT) with its open files
/// and in-flight writes: no two files overlap and every row is archived once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_past_its_session_timeout_renames_nothing_over_its_successor() {
    let brokers = Service::Kafka.addr();
    let hdfs = Service::Hdfs.addr();
    let u = unique("zombie");
    let PipelineSetup {
        registry,
        registry_url,
        events_topic,
        dlq,
        out,
        ..
    } = pipeline_setup(&brokers, &u, 0).await;
    drop(registry);
    let ids = [format!("{u}-a"), format!("{u}-b")];
    let data = std::env::temp_dir().join(unique("weir-zombie"));
    std::fs::create_dir_all(&data).expect("data dir");
    let root = format!("/weir-archive/{u}");
    let config = |instance: &str| {
        let path = data.join(format!("{instance}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = {dir:?}\ndatabase = {registry_url:?}\nlisten = \"127.0.0.1:0\"\n\
                 [pipeline]\nbrokers = {brokers:?}\ngroup_id = {u:?}\ntopics = [{events_topic:?}]\n\
                 dlq_topic = {dlq:?}\nbatch_max_events = 500\nbatch_linger_ms = 20\n\
                 instance = {instance:?}\n\
                 [pipeline.kafka]\n\"session.timeout.ms\" = \"6000\"\n\
                 \"heartbeat.interval.ms\" = \"1000\"\n\
                 [archive]\nroot = \"{hdfs}{root}\"\nmax_file_age_secs = 60\nidle_secs = 10\n",
                dir = data.join(instance).display().to_string(),
            ),
        )
        .unwrap();
        path
    };
    let (a_config, b_config) = (config("a"), config("b"));
    let (a_log, b_log) = (data.join("a.log"), data.join("b.log"));
    let mut a = serve(&a_config, &a_log);
    let mut b = serve(&b_config, &b_log);
    let started = Instant::now();
    let mut expected = produce_events(&brokers, &events_topic, &ids, 0..3_000).await;
    // Both replicas handle some of it, with files open (idle_secs 10).
    loop {
        let handled = committed_if_any(&brokers, &u, &events_topic, 3)
            .into_iter()
            .flatten()
            .map(|(_, produced)| produced)
            .sum::<i64>();
        if handled >= 3_000 {
            break;
        }
        still_serving(&mut a, started, &a_log, "the first events not handled");
        still_serving(&mut b, started, &b_log, "the first events not handled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&a, "STOP");
    // B takes A's partitions over once A's session times out (6 s) and archives
    // what A held open, and more.
    expected.extend(produce_events(&brokers, &events_topic, &ids, 3_000..5_000).await);
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal(&a, "CONT");
    expected.extend(produce_events(&brokers, &events_topic, &ids, 5_000..6_000).await);
    let ends: Vec<i64> = (0..3)
        .map(|p| expected.keys().filter(|(q, _)| *q == p).count() as i64)
        .collect();
    let want: Vec<(i64, i64)> = ends.iter().map(|&end| (end, end)).collect();
    let waiting = Instant::now();
    while committed(&brokers, &u, &events_topic, 3) != want {
        still_serving(&mut a, waiting, &a_log, "not everything committed");
        still_serving(&mut b, waiting, &b_log, "not everything committed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for child in [&mut a, &mut b] {
        signal(child, "TERM");
        let status = child.wait().expect("wait");
        assert!(status.success(), "exit {status} after SIGTERM");
    }
    let logs = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    println!(
        "A fenced out of a partition {} times; B fenced {} partitions",
        logs(&a_log)
            .matches("another replica fenced this partition")
            .count(),
        logs(&b_log).matches("partition fenced").count()
    );

    let client = ClientBuilder::new()
        .with_url(&hdfs)
        .build()
        .expect("HDFS client");
    let paths = check_hdfs_archive(&client, &root, &expected, &events_topic).await;
    assert_no_overlaps(&paths);
    let total = expected.len();
    let outputs = crate::pipeline::read_committed(&brokers, &[&out, &dlq], total);
    assert_eq!(outputs.len(), total, "each output once, no dead letters");
    client.delete(&root, true).await.expect("clean up");
    let _ = std::fs::remove_dir_all(&data);
}

/// Two scenarios whose fields change type between batches, archived by two sinks one
/// after the other (a restart, with fresh caches) that keep their column types in the
/// registry: `x` is 1.5 first and 2^53 + 1 later, `v` drifts from integers to
/// strings. Every file types a column alike, so pyarrow (unified schemas) and DuckDB
/// (`union_by_name`) read each scenario's directory as one table, and every value
/// comes back exactly, from its column or from `extra`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenarios_columns_keep_one_type_across_files_and_read_as_one_table() {
    use weir::archive::columns::RegistryColumns;

    let root = std::env::temp_dir().join(unique("weir-columns"));
    let registry = Registry::connect(
        &format!("sqlite://{}", root.with_extension("db").display()),
        Runtime::new(RuntimeConfig::default()).expect("runtime"),
    )
    .await
    .expect("registry");
    let (float_id, drift_id, declared_id) = (unique("float"), unique("drift"), unique("declared"));
    // The third scenario declares its field's type ahead of the first records.
    let bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("plugin artifact");
    registry
        .upload_plugin(bytes, Some("scenario"), "test", MakeCurrent::IfNew)
        .await
        .expect("plugin");
    registry
        .put_scenario(
            json!({"scenario_id": declared_id, "archive_columns": {"n": "float64"}}),
            None,
            PutMode::Create,
            "test",
        )
        .await
        .expect("scenario");
    let records = |offset: i64| -> (Value, Value) {
        let float = match offset {
            0..10 => json!({"x": 1.5 + offset as f64, "y": offset}),
            10..15 => json!({"x": 9_007_199_254_740_993i64 + offset, "y": "late"}),
            _ => json!({"x": offset, "y": offset, "z": [offset]}),
        };
        let drift = if offset < 10 {
            json!({"v": offset})
        } else {
            json!({"v": format!("v{offset}")})
        };
        (float, drift)
    };
    let batch = |offsets: Range<i64>| {
        let mut scenarios = Vec::new();
        for (id, pick) in [(&float_id, 0), (&drift_id, 1), (&declared_id, 2)] {
            let mut result = weir::runtime::BatchResult::default();
            let mut events = Vec::new();
            for offset in offsets.clone() {
                let (float, drift) = records(offset);
                let record = match pick {
                    0 => float,
                    1 => drift,
                    _ => json!({"n": offset}),
                }
                .to_string();
                result.push_outcome(
                    weir::runtime::Status::Emitted,
                    true,
                    None,
                    [record.as_bytes()],
                );
                events.push(EventMeta {
                    offset,
                    timestamp_ms: Some(BASE_MS + offset),
                });
            }
            scenarios.push(ScenarioBatch {
                scenario: id.clone(),
                plugin: "p@1".into(),
                events,
                result,
            });
        }
        PartitionBatch {
            topic: "events".into(),
            partition: 0,
            first_offset: offsets.start,
            last_offset: offsets.end - 1,
            processed_ms: BASE_MS,
            scenarios,
            ..PartitionBatch::default()
        }
    };
    let config = ArchiveConfig {
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let sink = || {
        let (registry, root, config) = (registry.clone(), root.clone(), config.clone());
        let handle = tokio::runtime::Handle::current();
        async move {
            tokio::task::spawn_blocking(move || {
                ArchiveSink::with_store(&config, Box::new(LocalStore::new(&root).unwrap()))
                    .unwrap()
                    .with_columns(RegistryColumns::new(registry, handle))
            })
            .await
            .unwrap()
        }
    };
    let write_all = |mut sink: ArchiveSink, batches: Vec<PartitionBatch>| async move {
        tokio::task::spawn_blocking(move || {
            for b in &batches {
                sink.write(std::slice::from_ref(b)).expect("archive write");
            }
            sink.flush().expect("flush");
        })
        .await
        .unwrap()
    };
    write_all(sink().await, vec![batch(0..5), batch(5..10)]).await;
    // A restart: the next sink knows nothing but what the registry kept.
    write_all(sink().await, vec![batch(10..15), batch(15..20)]).await;

    let learned = registry.archive_columns(&float_id).await.expect("columns");
    assert_eq!(
        learned.into_iter().collect::<Vec<_>>(),
        [
            ("x".to_owned(), "float64".to_owned()),
            ("y".to_owned(), "int64".to_owned())
        ],
        "learned once, from the first batch; z is nested and has none"
    );
    let files = read_back(&root);
    for file in files["files"].as_array().unwrap() {
        let columns = &file["columns"];
        let path = file["path"].as_str().unwrap();
        if path.contains(&float_id) {
            assert_eq!(columns["x"], "double", "{path}");
            assert_eq!(columns["y"], "int64", "{path}");
        } else if path.contains(&declared_id) {
            assert_eq!(columns["n"], "double", "declared, not learned: {path}");
        } else {
            assert_eq!(columns["v"], "int64", "{path}");
        }
    }
    assert!(
        files["files"].as_array().unwrap().len() >= 8,
        "one file per cycle and scenario"
    );

    for (id, pick) in [(&float_id, 0), (&drift_id, 1)] {
        let dir = root.join(format!("scenario_id={id}"));
        let tables = run_reader(
            concat!(env!("CARGO_MANIFEST_DIR"), "/archive_tables.py"),
            &dir,
            &[],
        );
        for reader in ["pyarrow", "duckdb"] {
            let rows = tables[reader].as_array().unwrap();
            assert_eq!(
                rows.len(),
                20,
                "{reader} read every file of {id} as one table"
            );
            for row in rows {
                let offset = row["offset"].as_i64().unwrap();
                let (float, drift) = records(offset);
                let want = if pick == 0 { float } else { drift };
                assert_same(
                    &row["fields"],
                    &want,
                    &format!("{reader} {id} offset {offset}"),
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Whether a value read back is the value written: the same JSON, where a number
/// may come back as a float of the same value (a float64 column), but an integer
/// over 2^53 only as that exact integer.
fn assert_same(got: &Value, want: &Value, what: &str) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            assert_eq!(
                g.keys().collect::<BTreeSet<_>>(),
                w.keys().collect::<BTreeSet<_>>(),
                "{what}: fields"
            );
            for (name, value) in w {
                assert_same(&g[name], value, &format!("{what}.{name}"));
            }
        }
        (Value::Number(g), Value::Number(w)) => match w.as_i64() {
            Some(i) if i.unsigned_abs() > 1 << 53 => {
                assert_eq!(g.as_i64(), Some(i), "{what}: exact integer")
            }
            _ => assert_eq!(g.as_f64(), w.as_f64(), "{what}"),
        },
        _ => assert_eq!(got, want, "{what}"),
    }
}
