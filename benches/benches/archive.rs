//! Archive throughput: realistic partition batches (tracking events run through the
//! `scenario` plugin beforehand, not timed) written by the archive sink to a local
//! directory, and to HDFS when `WEIR_TEST_HDFS` is set (`eval "$(tests/stack env)"`).
//!
//! One line per store, stable and parseable:
//!
//! ```text
//! archive store=local files=rolling events=.. batch=.. partitions=.. secs=.. events_per_s=.. parquet_mb_per_s=.. records_mb_per_s=.. files=.. parquet_bytes=..
//! ```
//!
//! Each store runs twice: `files=per-cycle` closes every file at the end of its cycle
//! (`max_file_age_secs = 0`), `files=rolling` keeps files open across cycles (the
//! defaults) and flushes at the end; the ratio of the two is the gain of rolling.
//!
//! `records_mb_per_s` counts the JSON output records handed to the archive;
//! `parquet_mb_per_s` the Parquet bytes written. `WEIR_BENCH_ARCHIVE_EVENTS` sets the number of events (default
//! 200000), `WEIR_BENCH_ARCHIVE_PARTITIONS` how many partitions share a cycle of 4096
//! events (default 4), as a pipeline consuming that many partitions would.

mod common;

use std::time::Instant;

use common::{BATCH, cycles};
use weir::archive::{ArchiveConfig, ArchiveSink};
use weir::pipeline::sink::{PartitionBatch, Sink};

fn run(
    store: &str,
    rolling: bool,
    root: String,
    cycles: &[Vec<PartitionBatch>],
    events: usize,
    record_bytes: usize,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = ArchiveConfig {
        root,
        max_file_age_secs: if rolling { 300 } else { 0 },
        ..ArchiveConfig::default()
    };
    let mut sink = ArchiveSink::new(&config, runtime.handle().clone()).expect("archive sink");
    let started = Instant::now();
    for cycle in cycles {
        sink.write(cycle).expect("write");
    }
    sink.flush().expect("flush");
    let secs = started.elapsed().as_secs_f64();
    let stats = sink.stats();
    println!(
        "archive store={store} files={} events={events} batch={BATCH} partitions={} secs={secs:.3} events_per_s={:.0} \
         parquet_mb_per_s={:.2} records_mb_per_s={:.2} files={} parquet_bytes={}",
        if rolling { "rolling" } else { "per-cycle" },
        cycles.first().map_or(0, Vec::len),
        events as f64 / secs,
        stats.bytes as f64 / secs / 1e6,
        record_bytes as f64 / secs / 1e6,
        stats.files,
        stats.bytes,
    );
}

fn main() {
    let events = std::env::var("WEIR_BENCH_ARCHIVE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let partitions = std::env::var("WEIR_BENCH_ARCHIVE_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let (cycles, record_bytes) = cycles(events, partitions, 10);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    for rolling in [false, true] {
        let local = std::env::temp_dir().join(format!("weir-archive-bench-{nanos}-{rolling}"));
        let root = local.display().to_string();
        run("local", rolling, root, &cycles, events, record_bytes);
        std::fs::remove_dir_all(&local).ok();
    }
    match std::env::var("WEIR_TEST_HDFS") {
        Ok(url) => {
            for rolling in [false, true] {
                let root = format!(
                    "{}/weir-archive-bench/{nanos}-{rolling}",
                    url.trim_end_matches('/')
                );
                run("hdfs", rolling, root, &cycles, events, record_bytes);
            }
        }
        Err(_) => println!("archive store=hdfs skipped=WEIR_TEST_HDFS-unset"),
    }
}
