//! `weir report` over an archive in a directory, on HDFS and on S3: the figures
//! equal what the batches held (known here) and what DuckDB computes over the
//! same files (`tests/report_check.py`); a replayed batch counts once; a rerun
//! prints the same and writes the same daily files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use weir::archive::{ArchiveConfig, ArchiveSink, OUTCOMES_DIR, S3Store, Store};
use weir::pipeline::sink::{EventMeta, PartitionBatch, ScenarioBatch, Sink};
use weir::runtime::{BatchResult, EventError, FailureKind, Status};
use weir_integration::{Service, unique};

use crate::archive::{copy_from_hdfs, weir_binary};

/// 2026-11-30T22:00:00Z: the events run past midnight, so each scenario has two days.
const START_MS: i64 = 1_796_076_000_000;
const MINUTE_MS: i64 = 60_000;

/// What the report must say of one scenario and day.
#[derive(Debug, Default, Clone, PartialEq)]
struct Figures {
    events: u64,
    matched: u64,
    dead_letters: u64,
    pages: BTreeMap<String, u64>,
}

/// The event at `offset` of a partition: its scenario, time, and what its
/// plugin did with it. Every tenth is dropped, two in ten fail; the rest emit a
/// record (two for offsets ending in 0), matched on every third offset.
fn outcome(offset: i64) -> (Status, bool, usize) {
    match offset % 10 {
        7 | 9 => (Status::Failed, false, 0),
        8 => (Status::Dropped, false, 0),
        0 => (Status::Emitted, offset % 3 == 0, 2),
        _ => (Status::Emitted, offset % 3 == 0, 1),
    }
}

fn time(partition: i32, offset: i64) -> i64 {
    START_MS + offset * MINUTE_MS + i64::from(partition) * 7 * MINUTE_MS
}

fn page(offset: i64, record: usize) -> String {
    format!("/p{}", (offset + record as i64) % 4)
}

/// The pipeline's batch of `offsets` of `partition` for scenarios `ids`
/// (offset `o` goes to `ids[o % 2]`).
fn batch(
    topic: &str,
    partition: i32,
    ids: &[String; 2],
    offsets: std::ops::Range<i64>,
) -> PartitionBatch {
    let scenarios = ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let mut result = BatchResult::default();
            let mut events = Vec::new();
            for offset in offsets.clone().filter(|o| o % 2 == index as i64) {
                let (status, matched, n) = outcome(offset);
                let records: Vec<Vec<u8>> = (0..n)
                    .map(|r| {
                        json!({"page": page(offset, r), "n": offset})
                            .to_string()
                            .into_bytes()
                    })
                    .collect();
                let error = (status == Status::Failed).then(|| EventError {
                    kind: if offset % 10 == 7 {
                        FailureKind::Plugin
                    } else {
                        FailureKind::CpuLimit
                    },
                    message: format!("event {offset} refused"),
                });
                result.push_outcome(status, matched, error, records.iter().map(Vec::as_slice));
                events.push(EventMeta {
                    offset,
                    timestamp_ms: Some(time(partition, offset)),
                });
            }
            ScenarioBatch {
                scenario: id.clone(),
                plugin: "scenario@1".into(),
                events,
                result,
            }
        })
        .collect();
    PartitionBatch {
        topic: topic.to_owned(),
        partition,
        first_offset: offsets.start,
        last_offset: offsets.end - 1,
        processed_ms: chrono::Utc::now().timestamp_millis(),
        scenarios,
        ..PartitionBatch::default()
    }
}

const EVENTS: i64 = 900;

/// Archives offsets `0..EVENTS` of two partitions through `sink`, in cycles of
/// 100, with a replay of cycles already archived (other boundaries); returns
/// what the report must say, by `scenario|day`.
fn fill(sink: &mut ArchiveSink, topic: &str, ids: &[String; 2]) -> BTreeMap<String, Figures> {
    for partition in 0..2 {
        for start in (0..EVENTS).step_by(100) {
            sink.write(&[batch(topic, partition, ids, start..start + 100)])
                .expect("archive write");
            if start == 300 {
                sink.write(&[batch(topic, partition, ids, 150..400)])
                    .expect("replayed write");
            }
        }
    }
    sink.flush().expect("flush");
    let mut expected: BTreeMap<String, Figures> = BTreeMap::new();
    for partition in 0..2 {
        for offset in 0..EVENTS {
            let day = chrono::DateTime::from_timestamp_millis(time(partition, offset))
                .unwrap()
                .format("%Y-%m-%d");
            let figures = expected
                .entry(format!("{}|{day}", ids[(offset % 2) as usize]))
                .or_default();
            let (status, matched, n) = outcome(offset);
            figures.events += 1;
            figures.matched += u64::from(matched);
            figures.dead_letters += u64::from(status == Status::Failed);
            for r in 0..n {
                *figures.pages.entry(page(offset, r)).or_default() += 1;
            }
        }
    }
    assert_eq!(
        expected.len(),
        4,
        "two scenarios over two days: {expected:?}"
    );
    expected
}

/// Archives [`fill`]'s events for scenarios `{u}-a` and `{u}-b` to `root` (a
/// directory or HDFS), one file per cycle; returns what the report must say.
async fn archive_at(root: String, u: &str) -> BTreeMap<String, Figures> {
    let ids = [format!("{u}-a"), format!("{u}-b")];
    let config = ArchiveConfig {
        root,
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut sink = ArchiveSink::new(&config, handle).expect("sink");
        fill(&mut sink, "events", &ids)
    })
    .await
    .expect("join")
}

/// Runs `weir report` with `args` and `vars`; returns its standard output.
fn report(args: &[&str], vars: &[(&str, &str)]) -> (String, String) {
    let output = Command::new(weir_binary())
        .arg("report")
        .args(args)
        .envs(vars.iter().copied())
        .env(
            "WEIR_DATA_DIR",
            std::env::temp_dir().join(unique("weir-report-data")),
        )
        .output()
        .expect("run weir report");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "weir report failed: {stderr}");
    (String::from_utf8(output.stdout).expect("UTF-8"), stderr)
}

/// The report's JSON rows by `scenario|day`.
fn figures_of(json_rows: &str) -> BTreeMap<String, Figures> {
    let rows: Vec<Value> = serde_json::from_str(json_rows).expect("the report is JSON");
    rows.iter()
        .map(|row| {
            let events = row["events"].as_u64().unwrap();
            let matched = row["matched"].as_u64().unwrap();
            let ratio = row["success_ratio"].as_f64().unwrap();
            assert_eq!(
                ratio,
                (matched as f64 / events as f64 * 10_000.0).round() / 10_000.0,
                "{row}"
            );
            let pages = row["top"]["page"]
                .as_array()
                .map(|values| {
                    values
                        .iter()
                        .map(|v| {
                            (
                                v["value"].as_str().unwrap().to_owned(),
                                v["count"].as_u64().unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                format!(
                    "{}|{}",
                    row["scenario_id"].as_str().unwrap(),
                    row["day"].as_str().unwrap()
                ),
                Figures {
                    events,
                    matched,
                    dead_letters: row["dead_letters"].as_u64().unwrap(),
                    pages,
                },
            )
        })
        .collect()
}

/// What DuckDB computes over the local copy of an archive.
fn duckdb_figures(root: &Path) -> BTreeMap<String, Figures> {
    let read = crate::archive::run_reader(
        concat!(env!("CARGO_MANIFEST_DIR"), "/report_check.py"),
        root,
        &["page"],
    );
    read.as_object()
        .expect("the check prints an object")
        .iter()
        .map(|(key, v)| {
            let pages = v["top"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect();
            (
                key.clone(),
                Figures {
                    events: v["events"].as_u64().unwrap(),
                    matched: v["matched"].as_u64().unwrap(),
                    dead_letters: v["dead_letters"].as_u64().unwrap(),
                    pages,
                },
            )
        })
        .collect()
}

/// Every file under `dir` (relative path → bytes).
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// Reports the archive at `root` twice and checks both runs against what was
/// archived and against DuckDB over the copy `copy` makes of the archive.
async fn check_reports<F, Fut>(
    root: &str,
    vars: &[(&str, &str)],
    expected: &BTreeMap<String, Figures>,
    copy: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = PathBuf>,
{
    let args = [
        "--archive",
        root,
        "--format",
        "json",
        "--top",
        "page",
        "--top-n",
        "10",
    ];
    let (first, _) = report(&args, vars);
    assert_eq!(
        &figures_of(&first),
        expected,
        "the report says what was archived"
    );

    let local = copy().await;
    assert!(
        local.join(OUTCOMES_DIR).is_dir(),
        "dropped and failed events are archived as outcomes"
    );
    assert_eq!(
        &duckdb_figures(&local),
        expected,
        "DuckDB over the same files agrees"
    );
    let daily = files_under(&local.join("reports/daily"));
    assert_eq!(
        daily.len(),
        4,
        "a daily file per scenario and day: {:?}",
        daily.keys()
    );

    let (second, stderr) = report(&args, vars);
    assert_eq!(first, second, "a rerun prints the same report");
    assert!(stderr.contains("4 daily report(s) written"), "{stderr}");
    let again = copy().await;
    assert_eq!(
        files_under(&again.join("reports/daily")),
        daily,
        "a rerun replaces each daily file with the same bytes"
    );

    // One scenario, one day, as a table and as CSV.
    let (scenario, day) = expected.keys().next().unwrap().split_once('|').unwrap();
    let (csv, _) = report(
        &[
            "--archive",
            root,
            "--format",
            "csv",
            "--scenario",
            scenario,
            "--from",
            day,
            "--to",
            day,
            "--no-write",
        ],
        vars,
    );
    let figures = &expected[&format!("{scenario}|{day}")];
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "scenario_id,day,events,matched,success_ratio,dead_letters"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[1].starts_with(&format!(
            "{scenario},{day},{},{},",
            figures.events, figures.matched
        )),
        "{csv}"
    );
    let _ = std::fs::remove_dir_all(&local);
    let _ = std::fs::remove_dir_all(&again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_a_local_archive_equals_duckdb_and_a_rerun_changes_nothing() {
    let u = unique("report");
    let root = std::env::temp_dir().join(&u);
    let expected = archive_at(root.display().to_string(), &u).await;
    let root_text = root.display().to_string();
    let copied = root.clone();
    check_reports(&root_text, &[], &expected, || {
        let copied = copied.clone();
        async move {
            let to = std::env::temp_dir().join(unique("weir-report-copy"));
            for (path, bytes) in files_under(&copied) {
                let target = to.join(path);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(target, bytes).unwrap();
            }
            to
        }
    })
    .await;

    // A scenario whose records have fields named like the hour directory's
    // keys, read through a `file://` root as `weir serve` takes it.
    let clash = format!("{u}-c");
    let config = ArchiveConfig {
        root: root.display().to_string(),
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let handle = tokio::runtime::Handle::current();
    let batch_clash = clash.clone();
    tokio::task::spawn_blocking(move || {
        let mut sink = ArchiveSink::new(&config, handle).expect("sink");
        let mut result = BatchResult::default();
        let record = json!({"day": "monday", "hour": 25, "page": "/x"}).to_string();
        let mut events = Vec::new();
        for offset in 0..10 {
            result.push_outcome(Status::Emitted, offset < 4, None, [record.as_bytes()]);
            events.push(EventMeta {
                offset,
                timestamp_ms: Some(START_MS),
            });
        }
        sink.write(&[PartitionBatch {
            topic: "other".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 9,
            processed_ms: START_MS,
            scenarios: vec![ScenarioBatch {
                scenario: batch_clash,
                plugin: "scenario@1".into(),
                events,
                result,
            }],
            ..PartitionBatch::default()
        }])
        .expect("archive write");
        sink.flush().expect("flush");
    })
    .await
    .expect("join");
    let file_root = format!("file://{}", root.display());
    let (json_rows, stderr) = report(
        &[
            "--archive",
            &file_root,
            "--scenario",
            &clash,
            "--format",
            "json",
            "--top",
            "page,nothing",
            "--no-write",
        ],
        &[],
    );
    let figures = figures_of(&json_rows);
    let day = chrono::DateTime::from_timestamp_millis(START_MS)
        .unwrap()
        .format("%Y-%m-%d");
    assert_eq!(
        figures[&format!("{clash}|{day}")],
        Figures {
            events: 10,
            matched: 4,
            dead_letters: 0,
            pages: BTreeMap::from([("/x".to_owned(), 10)]),
        },
        "{json_rows}"
    );
    assert!(
        stderr.contains(&format!("scenario {clash} has no column nothing")),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_hdfs_equals_duckdb_and_a_rerun_changes_nothing() {
    let hdfs = Service::Hdfs.addr();
    let u = unique("report");
    let dir = format!("/weir-report/{u}");
    let root = format!("{hdfs}{dir}");
    let expected = archive_at(root.clone(), &u).await;
    let client = hdfs_native::ClientBuilder::new()
        .with_url(&hdfs)
        .build()
        .expect("HDFS client");
    check_reports(&root, &[], &expected, || async {
        copy_from_hdfs(&client, &dir).await.0
    })
    .await;
    client.delete(&dir, true).await.expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_s3_equals_duckdb_and_a_rerun_changes_nothing() {
    let server = crate::s3::Server::shared();
    let u = unique("report");
    let prefix = format!("report/{u}");
    let ids = [format!("{u}-a"), format!("{u}-b")];
    let config = ArchiveConfig {
        max_file_age_secs: 0,
        ..ArchiveConfig::default()
    };
    let settings = server.settings(&prefix, 32);
    let handle = tokio::runtime::Handle::current();
    let expected = tokio::task::spawn_blocking(move || {
        let timeout = std::time::Duration::from_secs(config.store_timeout_secs);
        let store = S3Store::new(&settings, handle, timeout).expect("S3 store");
        let mut sink =
            ArchiveSink::with_store(&config, Box::new(store) as Box<dyn Store>).expect("sink");
        fill(&mut sink, "events", &ids)
    })
    .await
    .expect("join");
    let root = format!("s3://{}/{prefix}", server.bucket);
    let mut vars = server.vars().to_vec();
    vars.push(("WEIR_ARCHIVE__S3_ENDPOINT", server.endpoint.as_str()));
    let client = server.client();
    check_reports(&root, &vars, &expected, || async {
        crate::s3::copy_from_s3(&client, &prefix).await.0
    })
    .await;
    crate::s3::clean_up(&client, &prefix).await;
}
