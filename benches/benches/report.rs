//! `weir report` against DuckDB on the same archive: tracking events run
//! through the `scenario` plugin (not timed), archived to a local directory by
//! the archive sink over `WEIR_BENCH_REPORT_DAYS` days (default 7), then
//! reported by day with the top values of a field, by weir's engine
//! (DataFusion, in this process) and by DuckDB (`WEIR_TEST_PYTHON`, set by
//! `tests/stack env`) running `tests/report_check.py`'s queries over the same
//! files. One line each, stable and parseable:
//!
//! ```text
//! report engine=weir events=.. files=.. parquet_bytes=.. secs=.. events_per_s=..
//! report engine=duckdb events=.. secs=.. weir_over_duckdb=..
//! ```
//!
//! Each engine runs three times; the best run counts (the files are in the page
//! cache after the first). `WEIR_BENCH_REPORT_EVENTS` sets the number of
//! events (default 1,000,000). The two agree on every figure, or the bench fails.

use std::time::Instant;

use weir::archive::{ArchiveConfig, ArchiveSink};
use weir::pipeline::sink::Sink;
use weir::report::{Archive, Period, ReportOptions};
mod common;

const RUNS: usize = 3;

fn main() {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let events = var("WEIR_BENCH_REPORT_EVENTS", 1_000_000);
    let days = var("WEIR_BENCH_REPORT_DAYS", 7);
    // Events evenly over `days` days ending now, in each of 4 partitions.
    let partitions = 4;
    let spacing_ms = (days * 86_400_000 * partitions / events.max(1)) as i64;
    let (cycles, _) = common::cycles(events, partitions, spacing_ms);
    let root = std::env::temp_dir().join(format!("weir-report-bench-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = ArchiveConfig {
        root: root.display().to_string(),
        ..ArchiveConfig::default()
    };
    let mut sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("archive sink");
    for cycle in &cycles {
        sink.write(cycle).expect("write");
    }
    sink.flush().expect("flush");
    let stats = sink.stats();
    drop(sink);

    let options = ReportOptions {
        by: Period::Day,
        top: vec!["gender".into()],
        top_n: 5,
        ..ReportOptions::default()
    };
    let mut best = f64::MAX;
    let mut rows = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        rows = runtime.block_on(async {
            let archive = Archive::open(&config).expect("open");
            let report = archive.report(&options, &mut |_| {}).await.expect("report");
            assert!(report.failed.is_empty(), "{:?}", report.failed);
            report.rows
        });
        best = best.min(started.elapsed().as_secs_f64());
    }
    let counted: u64 = rows.iter().map(|r| r.events).sum();
    assert_eq!(counted, events as u64, "the report counts every event once");
    println!(
        "report engine=weir events={events} days={days} rows={} files={} parquet_bytes={} secs={best:.3} events_per_s={:.0}",
        rows.len(),
        stats.files,
        stats.bytes,
        events as f64 / best
    );

    match std::env::var("WEIR_TEST_PYTHON") {
        Ok(python) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/report_check.py");
            let mut duck = f64::MAX;
            let mut output = Vec::new();
            for _ in 0..RUNS {
                let run = std::process::Command::new(&python)
                    .arg(script)
                    .arg(&root)
                    .arg("gender")
                    .output()
                    .expect("run DuckDB");
                let stderr = String::from_utf8_lossy(&run.stderr);
                assert!(run.status.success(), "{stderr}");
                // The queries' own time, as the script measures it: Python's
                // start and DuckDB's import are not the engine's.
                let secs: f64 = stderr
                    .lines()
                    .find_map(|l| l.strip_prefix("duckdb_secs="))
                    .and_then(|v| v.parse().ok())
                    .expect("the script prints its queries' time");
                duck = duck.min(secs);
                output = run.stdout;
            }
            let read: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&output).expect("JSON");
            for row in &rows {
                let theirs = &read[&format!("{}|{}", row.scenario_id, row.period)];
                assert_eq!(theirs["events"], row.events, "{}", row.period);
                assert_eq!(theirs["matched"], row.matched, "{}", row.period);
            }
            println!(
                "report engine=duckdb events={events} secs={duck:.3} weir_over_duckdb={:.2}",
                best / duck
            );
        }
        Err(_) => println!("report engine=duckdb skipped=WEIR_TEST_PYTHON-unset"),
    }
    std::fs::remove_dir_all(&root).ok();
}
