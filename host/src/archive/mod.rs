//! The Parquet archive: every output record of every scenario, exactly once, as Parquet
//! files on HDFS or in a local directory, partitioned by event time.
//!
//! **In**: the pipeline hands each batch cycle to [`ArchiveSink`] through the
//! [`Sink`] seam, after the outputs were produced and before the Kafka offsets are
//! committed. **Out**: one Parquet file per (scenario, event-time hour, topic, partition)
//! per cycle, visible only once complete, at
//!
//! ```text
//! {root}/scenario_id={id}/year=YYYY/month=MM/day=DD/hour=HH/{topic}-{partition}-{first}-{last}.parquet
//! ```
//!
//! Hive-style directories, so Spark, Trino, DuckDB and pyarrow discover the partitions;
//! `first`/`last` are the lowest and highest source offsets of the rows in the file.
//! The event time is the Kafka record timestamp, or the processing time for a record
//! without one. Columns are described in [`schema`](self::schema); the schema is typed
//! per file from the records in it, so every file describes itself and files of one
//! scenario may differ: a field appears when a plugin starts writing it, and a field
//! typed int64 in one file may be utf8 in another when its values were mixed there.
//! Readers merge by column name (pyarrow: `pa.unify_schemas`; Spark: `mergeSchema`;
//! DuckDB: `union_by_name`). `scenario_id` is both a directory key and a utf8 column, so
//! readers must take the key as a string, not infer it (a numeric id would become an
//! integer and clash): pyarrow `ds.partitioning(pa.schema([("scenario_id",
//! pa.string()), ...]), flavor="hive")`, Spark
//! `spark.sql.sources.partitionColumnTypeInference.enabled=false`, DuckDB
//! `hive_types={'scenario_id': 'VARCHAR'}`. `tests/archive_reader.py` is a worked
//! pyarrow example.
//!
//! # Exactly once
//! [`ArchiveSink::write`] returns only when the cycle's files are durable: each is
//! encoded in memory, written to `{root}/_tmp/` (which readers skip: a leading `_`),
//! closed, and renamed to its final name. The pipeline commits offsets only after that,
//! so nothing committed is missing from the archive. Replays (a failed cycle, a restart
//! from the last committed offsets, possibly with other batch boundaries) must not add a
//! second copy: per (scenario, hour directory, topic, partition) the sink knows the
//! highest archived offset and skips events at or below it. That mark is read from the
//! final file names in the directory the first time the sink needs it, and read again
//! whenever a partition's batches stop following one another closely (a restart, a
//! retried cycle, a partition that moved between replicas, a pause of a second).
//! Keeping the mark per hour directory keeps it right when a crash fell between the
//! renames of one cycle's files. On start the sink deletes whatever is left in `_tmp/`.
//!
//! Cost: on HDFS most of a file's time is `close`, which waits until the NameNode has
//! heard of the block from the DataNode (hundreds of milliseconds); the sink writes all
//! files of a cycle at once (up to 16 in flight), so a cycle costs about one close.
//!
//! Limits, on purpose for this version: a record without a Kafka timestamp is placed by
//! processing time, so a replay in another hour may archive it again; files are as large
//! as one cycle's share of a partition (keep `pipeline.batch_max_events` large); merging
//! small files into larger ones (compaction) is left to a later job.

pub mod schema;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::Deserialize;

use crate::pipeline::sink::{PartitionBatch, Sink, SinkError};
use crate::runtime::Status;
use schema::Row;
pub use store::{HdfsStore, LocalStore, Store, StoreFile};

/// Directory, under the root, of files being written.
pub const TMP_DIR: &str = "_tmp";
const HOUR_MS: i64 = 3_600_000;
/// More cached offset marks than this and the cache starts over (it is re-read on demand).
const MAX_MARKS: usize = 100_000;
/// Cached marks of a partition not written for this long are read again: a partition
/// that went to another replica and came back at the offset this sink stopped at may
/// have files that replica wrote but did not commit. Moving a partition away and back
/// takes two consumer-group rebalances, each much longer than this.
const MARK_TTL_MS: i64 = 1_000;

/// Parquet page compression.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// zstd at `zstd_level`.
    Zstd,
    /// No compression.
    None,
}

/// Where and how the archive writes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// `hdfs://host:port/path` for HDFS, else a local directory (created when missing).
    pub root: String,
    /// Page compression: `zstd` or `none`.
    pub compression: Codec,
    /// zstd level, 1 (fast) to 22 (small).
    pub zstd_level: i32,
    /// Most rows in one row group; a file of one cycle normally has a single group.
    pub max_row_group_rows: usize,
    /// Longest wait for one HDFS call, seconds; past it the cycle fails and is retried.
    pub hdfs_timeout_secs: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            root: "weir-archive".into(),
            compression: Codec::Zstd,
            zstd_level: 3,
            max_row_group_rows: 128 * 1024,
            hdfs_timeout_secs: 60,
        }
    }
}

impl ArchiveConfig {
    /// Every problem with the configuration, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.root.trim().is_empty() {
            problems
                .push("archive.root: empty; give a directory or hdfs://host:port/path".to_owned());
        }
        if !(1..=22).contains(&self.zstd_level) {
            problems.push(format!(
                "archive.zstd_level: {} is out of range; use 1 to 22",
                self.zstd_level
            ));
        }
        if self.max_row_group_rows == 0 {
            problems.push("archive.max_row_group_rows: use at least 1".to_owned());
        }
        if self.hdfs_timeout_secs == 0 {
            problems.push("archive.hdfs_timeout_secs: use at least 1".to_owned());
        }
        problems
    }

    fn writer_properties(&self) -> Result<WriterProperties, ArchiveError> {
        let compression = match self.compression {
            Codec::Zstd => Compression::ZSTD(
                ZstdLevel::try_new(self.zstd_level)
                    .map_err(|e| ArchiveError::Config(format!("archive.zstd_level: {e}")))?,
            ),
            Codec::None => Compression::UNCOMPRESSED,
        };
        Ok(WriterProperties::builder()
            .set_compression(compression)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.max_row_group_rows))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build())
    }
}

/// Errors of the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The configuration cannot be used.
    #[error("archive configuration: {0}")]
    Config(String),
    /// The store refused or failed an operation.
    #[error("archive store: {op} `{path}`: {reason}")]
    Store {
        /// What the store was doing.
        op: &'static str,
        /// Which path, relative to the root.
        path: String,
        /// The store's error.
        reason: String,
    },
    /// Rows could not be encoded as Parquet.
    #[error("archive encode: scenario {scenario}: {reason}")]
    Encode {
        /// Which scenario's rows.
        scenario: String,
        /// The Arrow or Parquet error.
        reason: String,
    },
}

/// What the sink did since it was built.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Files made visible.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Parquet bytes in them.
    pub bytes: u64,
    /// Rows left out because their offset was already archived.
    pub skipped_rows: u64,
    /// Leftover temporary files deleted at start.
    pub removed_temporaries: u64,
}

/// Key of an offset mark: scenario, hour directory, topic, partition.
type MarkKey = (String, String, String, i32);

/// A file of the current cycle, encoded, not yet stored.
#[derive(Debug)]
struct Pending {
    file: StoreFile,
    key: MarkKey,
    last: i64,
    rows: usize,
}

/// The archive as a pipeline sink. See the module doc for the layout and the protocol.
pub struct ArchiveSink {
    store: Box<dyn Store>,
    properties: WriterProperties,
    /// Highest archived offset (`None`: nothing archived) per key, as far as known.
    marks: HashMap<MarkKey, Option<i64>>,
    /// Last offset of the previous batch per (topic, partition), and when it was written.
    last_offsets: HashMap<(String, i32), (i64, i64)>,
    clock: Box<dyn Fn() -> i64 + Send>,
    tmp_prefix: String,
    tmp_counter: u64,
    stats: ArchiveStats,
}

impl std::fmt::Debug for ArchiveSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSink")
            .field("store", &self.store)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ArchiveSink {
    /// A sink for `config.root`, running HDFS calls on `runtime`. Deletes leftover
    /// temporary files before returning. Like [`Sink::write`], it blocks on `runtime`,
    /// so call it off the runtime's threads (`spawn_blocking`, the pipeline thread).
    pub fn new(
        config: &ArchiveConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, ArchiveError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ArchiveError::Config(problems.join("; ")));
        }
        let store: Box<dyn Store> = if config.root.starts_with("hdfs://") {
            Box::new(HdfsStore::new(
                &config.root,
                runtime,
                Duration::from_secs(config.hdfs_timeout_secs),
            )?)
        } else {
            Box::new(LocalStore::new(
                config.root.strip_prefix("file://").unwrap_or(&config.root),
            )?)
        };
        Self::with_store(config, store)
    }

    /// A sink writing to `store` (any [`Store`]). Deletes leftover temporary files.
    pub fn with_store(config: &ArchiveConfig, store: Box<dyn Store>) -> Result<Self, ArchiveError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut sink = Self {
            store,
            properties: config.writer_properties()?,
            marks: HashMap::new(),
            last_offsets: HashMap::new(),
            clock: Box::new(|| chrono::Utc::now().timestamp_millis()),
            tmp_prefix: format!("{}-{nanos}", std::process::id()),
            tmp_counter: 0,
            stats: ArchiveStats::default(),
        };
        sink.remove_temporaries()?;
        Ok(sink)
    }

    /// Uses `clock` (milliseconds since the epoch) as the processing time of records
    /// without a timestamp.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// What the sink did so far.
    pub fn stats(&self) -> ArchiveStats {
        self.stats
    }

    /// Deletes every file in `_tmp/`: writes a crashed process left unfinished. With
    /// several replicas on one root this may also hit a write in flight on another
    /// replica; its rename then fails and that cycle is retried.
    fn remove_temporaries(&mut self) -> Result<(), ArchiveError> {
        let leftovers = self.store.list(TMP_DIR)?;
        for name in &leftovers {
            self.store.delete(&format!("{TMP_DIR}/{name}"))?;
        }
        if !leftovers.is_empty() {
            tracing::info!(
                root = %self.store.root(),
                removed = leftovers.len(),
                "archive: removed leftover temporary files"
            );
        }
        self.stats.removed_temporaries += leftovers.len() as u64;
        Ok(())
    }

    /// The highest archived offset for `key`, read from the directory when unknown.
    fn mark(&mut self, key: &MarkKey) -> Result<Option<i64>, ArchiveError> {
        if let Some(mark) = self.marks.get(key) {
            return Ok(*mark);
        }
        let (_, dir, topic, partition) = key;
        let mark = self
            .store
            .list(dir)?
            .iter()
            .filter_map(|name| parse_file_name(name))
            .filter(|(t, p, _, _)| t == topic && p == partition)
            .map(|(_, _, _, last)| last)
            .max();
        if self.marks.len() >= MAX_MARKS {
            self.marks.clear();
        }
        self.marks.insert(key.clone(), mark);
        Ok(mark)
    }

    /// Encodes the partition batch's new rows into `files`, one per scenario and hour.
    fn prepare(
        &mut self,
        batch: &PartitionBatch,
        files: &mut Vec<Pending>,
    ) -> Result<(), ArchiveError> {
        let tp = (batch.topic.clone(), batch.partition);
        let now = (self.clock)();
        let follows = self.last_offsets.get(&tp).is_some_and(|&(last, at)| {
            last == batch.first_offset - 1 && now.saturating_sub(at) < MARK_TTL_MS
        });
        if !follows {
            // Not the recent continuation of what this sink wrote last: the directories
            // may hold files this sink has not seen (or not noted). Read them again.
            self.marks
                .retain(|(_, _, t, p), _| !(t == &batch.topic && *p == batch.partition));
        }
        for scenario in &batch.scenarios {
            let id = &scenario.route.id;
            let mut hours: BTreeMap<i64, Vec<Row<'_>>> = BTreeMap::new();
            for (event, outcome) in scenario.events.iter().zip(scenario.result.outcomes()) {
                if outcome.status != Status::Emitted {
                    continue;
                }
                let time = event.timestamp_ms.unwrap_or(now);
                let rows = hours.entry(time.div_euclid(HOUR_MS)).or_default();
                for record in scenario.result.records(outcome) {
                    rows.push(Row {
                        offset: event.offset,
                        event_time_ms: time,
                        success: outcome.matched,
                        record,
                    });
                }
            }
            for (hour, mut rows) in hours {
                let dir = hour_dir(id, hour);
                let key = (id.clone(), dir, batch.topic.clone(), batch.partition);
                if let Some(mark) = self.mark(&key)? {
                    let before = rows.len();
                    rows.retain(|row| row.offset > mark);
                    self.stats.skipped_rows += (before - rows.len()) as u64;
                }
                let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                    continue;
                };
                let (first, last) = (first.offset, last.offset);
                let bytes = self.encode(id, &batch.topic, batch.partition, &rows)?;
                let path = format!(
                    "{}/{}-{}-{first}-{last}.parquet",
                    key.1, batch.topic, batch.partition
                );
                self.tmp_counter += 1;
                let tmp = format!(
                    "{TMP_DIR}/{}-{}.parquet.tmp",
                    self.tmp_prefix, self.tmp_counter
                );
                files.push(Pending {
                    file: StoreFile { path, tmp, bytes },
                    key,
                    last,
                    rows: rows.len(),
                });
            }
        }
        Ok(())
    }

    /// Makes the prepared files visible, all at once where the store can, then notes
    /// the new marks of those that made it.
    fn put(&mut self, files: Vec<Pending>) -> Result<(), ArchiveError> {
        let (stored, notes): (Vec<StoreFile>, Vec<_>) = files
            .into_iter()
            .map(|p| (p.file, (p.key, p.last, p.rows)))
            .unzip();
        let results = self.store.put_all(&stored);
        let mut first_error = None;
        for ((file, (key, last, rows)), result) in stored.iter().zip(notes).zip(results) {
            match result {
                Ok(true) => {
                    self.stats.files += 1;
                    self.stats.rows += rows as u64;
                    self.stats.bytes += file.bytes.len() as u64;
                    self.marks.insert(key, Some(last));
                }
                Ok(false) => {
                    tracing::warn!(path = %file.path, "archive: file already there, kept the existing one");
                    self.marks.insert(key, Some(last));
                }
                Err(e) => {
                    // Best effort: what is left is removed at the next start anyway.
                    let _ = self.store.delete(&file.tmp);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn encode(
        &self,
        scenario: &str,
        topic: &str,
        partition: i32,
        rows: &[Row<'_>],
    ) -> Result<Vec<u8>, ArchiveError> {
        let encode_error = |reason: String| ArchiveError::Encode {
            scenario: scenario.to_owned(),
            reason,
        };
        let batch = schema::record_batch(scenario, topic, partition, rows)
            .map_err(|e| encode_error(e.to_string()))?;
        let mut out = Vec::with_capacity(rows.len() * 64);
        let mut writer =
            ArrowWriter::try_new(&mut out, batch.schema(), Some(self.properties.clone()))
                .map_err(|e| encode_error(e.to_string()))?;
        writer
            .write(&batch)
            .map_err(|e| encode_error(e.to_string()))?;
        writer.close().map_err(|e| encode_error(e.to_string()))?;
        Ok(out)
    }
}

impl Sink for ArchiveSink {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn write(&mut self, batches: &[PartitionBatch]) -> Result<(), SinkError> {
        let mut files = Vec::new();
        let mut result = batches
            .iter()
            .try_for_each(|batch| self.prepare(batch, &mut files));
        if result.is_ok() {
            result = self.put(files);
        }
        let now = (self.clock)();
        for batch in batches {
            let tp = (batch.topic.clone(), batch.partition);
            if result.is_ok() {
                self.last_offsets.insert(tp, (batch.last_offset, now));
            } else {
                // What this cycle renamed before the failure may not be noted: forget
                // the partition's marks so the retry reads them from the directory.
                self.last_offsets.remove(&tp);
            }
        }
        result.map_err(|e| SinkError {
            sink: "archive",
            reason: e.to_string(),
        })
    }
}

/// `scenario_id={id}/year=YYYY/month=MM/day=DD/hour=HH` for an hour since the epoch.
pub fn hour_dir(scenario_id: &str, hour: i64) -> String {
    let time = chrono::DateTime::from_timestamp_millis(hour * HOUR_MS).unwrap_or_default();
    format!(
        "scenario_id={}/{}",
        escape(scenario_id),
        time.format("year=%Y/month=%m/day=%d/hour=%H")
    )
}

/// Escapes a partition value the way Hive does: `%XX` for anything but letters,
/// digits, `.`, `_` and `-`.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `(topic, partition, first, last)` out of `{topic}-{partition}-{first}-{last}.parquet`.
pub fn parse_file_name(name: &str) -> Option<(String, i32, i64, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let mut parts = stem.rsplitn(4, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?;
    (!topic.is_empty()).then(|| (topic.to_owned(), partition, first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_with_dashes_in_topics() {
        assert_eq!(
            parse_file_name("my-events-3-100-199.parquet"),
            Some(("my-events".to_owned(), 3, 100, 199))
        );
        assert_eq!(parse_file_name("x-1-2.parquet"), None);
        assert_eq!(parse_file_name("a-0-1-2.parquet.tmp"), None);
    }

    #[test]
    fn hour_directories_are_hive_partitions_in_utc() {
        // 2026-11-26T13:00:00Z
        let hour = 1_795_698_000_000 / HOUR_MS;
        assert_eq!(
            hour_dir("buy after 9/x", hour),
            "scenario_id=buy%20after%209%2Fx/year=2026/month=11/day=26/hour=13"
        );
    }

    #[test]
    fn a_bad_configuration_names_every_problem() {
        let config = ArchiveConfig {
            root: " ".into(),
            zstd_level: 0,
            max_row_group_rows: 0,
            ..ArchiveConfig::default()
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        let parsed: Result<ArchiveConfig, _> = toml::from_str("rooot = \"x\"");
        assert!(parsed.is_err(), "unknown fields are refused");
    }
}
