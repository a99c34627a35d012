//! The Parquet archive: every output record of every scenario, exactly once, as Parquet
//! files on HDFS, S3 or in a local directory, partitioned by event time.
//!
//! **In**: the pipeline hands each batch cycle to [`ArchiveSink`] through the
//! [`Sink`] seam, after the outputs were produced and before the Kafka offsets are
//! committed. **Out**: Parquet files, one per (scenario, event-time hour, topic,
//! partition) at a time, visible only once complete, at
//!
//! ```text
//! {root}/scenario_id={id}/year=YYYY/month=MM/day=DD/hour=HH/{topic}-{partition}-{first}-{last}.parquet
//! ```
//!
//! Hive-style directories, so Spark, Trino, DuckDB and pyarrow discover the partitions;
//! `first`/`last` are the lowest and highest source offsets of the rows in the file.
//! The event time is the Kafka record timestamp, or the processing time for a record
//! without one. Columns are described in [`schema`]; each field of a scenario's
//! records gets one type, learned the first time it comes and kept in the registry
//! ([`columns`]), so every file of a scenario types a column alike and readers that
//! merge files by column name take them as one table; a value its column's type does
//! not hold exactly stays, as written, in the row's `extra` JSON column.
//! Readers merge by column name (pyarrow: `pa.unify_schemas`; Spark: `mergeSchema`;
//! DuckDB: `union_by_name`). `scenario_id` is both a directory key and a utf8 column, so
//! readers must take the key as a string, not infer it (a numeric id would become an
//! integer and clash): pyarrow `ds.partitioning(pa.schema([("scenario_id",
//! pa.string()), ...]), flavor="hive")`, Spark
//! `spark.sql.sources.partitionColumnTypeInference.enabled=false`, DuckDB
//! `hive_types={'scenario_id': 'VARCHAR'}`. `tests/archive_reader.py` is a worked
//! pyarrow example.
//!
//! # Rolling
//! A file stays open across cycles and closes when it holds `max_file_mb` of Parquet,
//! `max_file_age_secs` after it opened, or `idle_secs` after its last row (a quiet
//! partition, an hour that has passed): the pipeline asks between cycles and while no
//! events arrive, so a quiet partition's file closes on time. At most
//! `max_open_files` are open and they hold at most `max_buffered_mb` in memory; past
//! either, the least recently written or the largest closes early. Rows are encoded
//! (zstd by default) into the file's row group in progress a few thousand at a time,
//! as cycles bring them, and a row group closes at `max_row_group_rows` or 16 MiB
//! encoded, so memory per open file is its compressed row groups plus the one in
//! progress. `max_file_age_secs = 0`
//! closes every file at the end of its cycle instead.
//!
//! # Exactly once
//! A closing file is encoded in memory, written to `{root}/_tmp/` (which readers skip:
//! a leading `_`), closed, and renamed to its final name. Rows in open files are not
//! durable: [`Sink::pending_from`] gives the pipeline the first offset of a partition
//! still held, and the pipeline commits no offset past it (while it goes on producing
//! outputs and committing how far it produced them). After a crash, a restart or a
//! rebalance, the partition is consumed again from there and its events replayed to
//! the sinks only; the archive takes the rows it lacks. Replays (a failed cycle, a
//! restart, possibly with other batch boundaries) must not add a second copy: per
//! (scenario, hour directory, topic, partition) the sink knows the highest offset
//! archived (or held in an open file) and skips events at or below it. That mark is
//! read from the final file names in the directory the first time the sink needs it,
//! and read again whenever a partition's batches stop following one another closely
//! (a restart, a retried cycle, a partition that moved between replicas, a pause of a
//! second). Keeping the mark per hour directory keeps it right when a crash fell
//! between the renames of files closed together. A file that failed to store is
//! kept and stored again first.
//!
//! # Fencing
//! Marks read from the directory are right only if nobody renames into it behind
//! the reader's back: a replica cut off from Kafka but not from HDFS, one whose
//! cycle outlived its group membership, or a rename that timed out on the client
//! and that the NameNode carries out later. Each of them would make two files of one
//! key overlap (`...-100-150` beside `...-100-420`). So every rename's source lies in
//! a temporary directory of its writer and partition,
//! `_tmp/{topic}-{partition}/{writer}/`, and a sink takes a partition over (the
//! first batch it is handed after an assignment, a restart or a revocation) by
//! *fencing* it: it deletes `_tmp/{topic}-{partition}/` with everything in it, makes
//! its own directory there, and only then reads the partition's marks. It never
//! creates a temporary file's directory on the way (HDFS `create` without
//! `createParent`) and a rename never replaces a file. Why that is safe: the
//! NameNode applies operations one at a time, so any rename of an earlier writer
//! either came before the fence's delete, and the marks read after the fence see its
//! file, or comes after it, and fails because its source is gone; an earlier writer
//! cannot start a new temporary file either, because its directory is gone. The same
//! holds on a local directory (a rename there is a hard link, which never replaces).
//! A writer that finds its directory gone after a failed put was fenced: it drops
//! what it holds of the partition, logs it, and takes none of its rows until the
//! partition is revoked from it (`weir_archive_fenced_out_total`); its offset
//! commits stay below those rows meanwhile, and its other partitions go on. The
//! replica that fenced last archives them. That is the partition's owner unless a
//! replica that lost the partition hands its first batch of it to the archive
//! after the new owner fenced (it was stopped between its Kafka commit and the
//! archive): then the owner is the one fenced out, archives nothing of the
//! partition until it moves or restarts, and its commits stay below, so nothing
//! is lost or doubled, but that partition's archive waits. One archive root per
//! consumer group: two groups on one root would fence each other.
//!
//! S3 has no rename: there, files are named by their place in their key's chain
//! (one past the previous file's last offset) and written only if the name is free,
//! so writers that disagree race for one name and the loser is fenced out the same
//! way ([`Naming::Position`], [`s3`]).
//!
//! Cost: on HDFS most of a file's time is `close`, which waits until the NameNode has
//! heard of the block from the DataNode (hundreds of milliseconds); files that close
//! together are written at once (up to 16 in flight), and with rolling that cost is
//! paid per file, not per cycle.
//!
//! Limits, on purpose for this version: a record without a Kafka timestamp is placed by
//! processing time, so a replay in another hour may archive it again; the Kafka
//! consumer group's committed offset trails by up to `max_file_age_secs` (its lag
//! metric shows it), and a restart replays that much to the plugins; merging small
//! files into larger ones (compaction) is left to a later job.

pub mod columns;
pub mod s3;
pub mod schema;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::Deserialize;

use crate::pipeline::route::DeadLetterReason;
use crate::pipeline::sink::{PartitionBatch, Sink, SinkCount, SinkError};
use crate::runtime::Status;
use columns::{ColumnCatalog, Columns, MemoryColumns};
pub use s3::{S3Settings, S3Store};
use schema::Row;
pub use store::{HdfsStore, LocalStore, Naming, Store, StoreFile, split_hdfs_url};

/// Directory, under the root, of files being written.
pub const TMP_DIR: &str = "_tmp";
/// Directory, under the root, of the events that left no record: a row per
/// event a scenario's plugin dropped or failed (dead-lettered), with the same
/// fixed columns and directories as the records, and `plugin`, `status`
/// (`dropped` or `failed`), `reason` (the failure's kind, as in the dead letter's
/// `weir-reason` header) and `message` (its details). Readers of the records
/// skip it (a leading `_`); `weir report` counts events from both.
pub const OUTCOMES_DIR: &str = "_outcomes";
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
    /// `hdfs://host:port/path` for HDFS, `s3://bucket/prefix` for S3, else a local
    /// directory (created when missing). `weir serve` uses `<data_dir>/archive` when
    /// it is empty.
    pub root: String,
    /// With an `s3://` root: the server's URL (`http://127.0.0.1:9000` for an
    /// S3-compatible server); empty for AWS or `AWS_ENDPOINT_URL`.
    pub s3_endpoint: String,
    /// With an `s3://` root: the region; empty for `AWS_REGION`, the AWS config file,
    /// else `us-east-1`.
    pub s3_region: String,
    /// With an `s3://` root: `bucket.host` addressing instead of path-style `host/bucket`.
    pub s3_virtual_hosted: bool,
    /// With an `s3://` root: files larger than this many MiB go up as multipart
    /// uploads; 0 sends every file so.
    pub s3_multipart_mb: u64,
    /// Page compression: `zstd` or `none`.
    pub compression: Codec,
    /// zstd level, 1 (fast) to 22 (small).
    pub zstd_level: i32,
    /// Most rows in one row group (a group also closes at 16 MiB encoded, or
    /// when the file closes).
    pub max_row_group_rows: usize,
    /// Longest wait for one HDFS or S3 call, seconds; past it the cycle fails and is
    /// retried. (`hdfs_timeout_secs` is its former name.)
    #[serde(alias = "hdfs_timeout_secs")]
    pub store_timeout_secs: u64,
    /// A file closes once it holds this many MiB of Parquet.
    pub max_file_mb: u64,
    /// A file closes this many seconds after it opened. `0`: every file closes at the
    /// end of the cycle that opened it (rows visible within a cycle, many small files).
    pub max_file_age_secs: u64,
    /// A file closes when no row joined it for this many seconds (its partition went
    /// quiet, or its hour has passed). Checked by a timer, also when no events arrive.
    pub idle_secs: u64,
    /// Most files open at once; one more closes the least recently written.
    pub max_open_files: usize,
    /// Most MiB the open files may hold in memory (encoded row groups and rows waiting
    /// for the next one); over it, the largest closes.
    pub max_buffered_mb: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            root: String::new(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_virtual_hosted: false,
            s3_multipart_mb: 32,
            compression: Codec::Zstd,
            zstd_level: 3,
            max_row_group_rows: 128 * 1024,
            store_timeout_secs: 60,
            max_file_mb: 128,
            max_file_age_secs: 300,
            idle_secs: 60,
            max_open_files: 64,
            max_buffered_mb: 512,
        }
    }
}

impl ArchiveConfig {
    /// Where an `s3://` root is and how to reach it; credentials from the
    /// environment and the shared files.
    pub fn s3_settings(&self) -> S3Settings {
        S3Settings {
            url: self.root.clone(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            virtual_hosted: self.s3_virtual_hosted,
            multipart_mb: self.s3_multipart_mb,
            credentials: None,
        }
    }

    /// Every problem with the configuration, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.root.trim().is_empty() {
            problems
                .push("archive.root: empty; give a directory, hdfs://host:port/path or s3://bucket/prefix".to_owned());
        } else if let Some((scheme, rest)) = self.root.split_once("://") {
            let authority = rest.split('/').next().unwrap_or_default();
            match scheme {
                "file" => {}
                "s3" if !authority.is_empty() => {}
                "s3" => problems.push(format!(
                    "archive.root = {:?}: expected s3://BUCKET/prefix",
                    self.root
                )),
                "hdfs" if authority.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                }) => {}
                "hdfs" => problems.push(format!(
                    "archive.root = {:?}: expected hdfs://HOST:PORT/path (the NameNode's RPC address)",
                    self.root
                )),
                _ => problems.push(format!(
                    "archive.root = {:?}: unknown scheme `{scheme}`; use hdfs://HOST:PORT/path, \
                     s3://BUCKET/prefix, file:///path or a directory",
                    self.root
                )),
            }
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
        if self.store_timeout_secs == 0 {
            problems.push("archive.store_timeout_secs: use at least 1".to_owned());
        }
        for (name, value) in [
            ("max_file_mb", self.max_file_mb),
            ("idle_secs", self.idle_secs),
            ("max_open_files", self.max_open_files as u64),
            ("max_buffered_mb", self.max_buffered_mb),
        ] {
            if value == 0 {
                problems.push(format!("archive.{name}: use at least 1"));
            }
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
    /// A put found its temporary file or directory gone: another writer fenced
    /// the partition (see the module doc).
    #[error("archive store: {op} `{path}`: the temporary file or its directory is gone: {reason}")]
    Gone {
        /// What the store was doing.
        op: &'static str,
        /// Which path, relative to the root.
        path: String,
        /// The store's error.
        reason: String,
    },
    /// The scenario's column types could not be read or kept.
    #[error("archive columns: scenario {scenario}: {reason}")]
    Columns {
        /// Which scenario.
        scenario: String,
        /// What went wrong.
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
    /// A partition lost held rows (to an encoding failure, or because another
    /// replica took it over) and takes no more until it moves or the process restarts.
    #[error(
        "archive: rows of {topic} partition {partition} from offset {from} were dropped \
         ({why}); its commits stay below them until the partition moves or weir restarts"
    )]
    Broken {
        /// What took the rows.
        why: &'static str,
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// First offset whose rows may be lost.
        from: i64,
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
    /// Partitions this sink fenced (took over as their archive writer).
    pub fences: u64,
    /// Partitions another replica fenced while this sink held rows of them.
    pub fenced_out: u64,
    /// Files open now.
    pub open_files: u64,
    /// Rows in the open files, not yet visible.
    pub held_rows: u64,
}

/// Key of an open file and of an offset mark: scenario, hour directory, topic, partition.
type MarkKey = (String, String, String, i32);

/// A file's row group closes once its encoded data in memory reaches this
/// many bytes (or `max_row_group_rows` rows).
const ROW_GROUP_BYTES: usize = 16 << 20;

/// Held rows are encoded into the file's row group in progress once there are
/// this many, or [`ENCODE_BYTES`] of them: a cycle's rows are encoded as they
/// come, so each cycle pays its share, rather than one cycle in many paying
/// for a whole row group.
const ENCODE_ROWS: usize = 4_096;
const ENCODE_BYTES: usize = 1 << 20;

/// A row held in memory until its row group is encoded.
#[derive(Debug)]
struct Held {
    offset: i64,
    event_time_ms: i64,
    event_time_valid: bool,
    success: bool,
    record: Vec<u8>,
}

/// The encoded row groups of an open file.
struct Encoded {
    writer: ArrowWriter<Vec<u8>>,
    columns: Columns,
    /// Its place in its key's chain, for [`Naming::Position`]: one past the
    /// previous file's last offset, 0 for the first.
    from: i64,
    first: i64,
    last: i64,
    rows: usize,
}

/// A file being filled: encoded row groups, then rows waiting for the next one.
struct OpenFile {
    /// The chain position of the next [`Encoded`] this file starts.
    from: i64,
    encoded: Option<Encoded>,
    held: Vec<Held>,
    held_bytes: usize,
    opened_ms: i64,
    written_ms: i64,
}

impl OpenFile {
    fn first(&self) -> Option<i64> {
        self.encoded
            .as_ref()
            .map(|e| e.first)
            .or_else(|| self.held.first().map(|h| h.offset))
    }

    fn last(&self) -> Option<i64> {
        self.held
            .last()
            .map(|h| h.offset)
            .or_else(|| self.encoded.as_ref().map(|e| e.last))
    }

    /// Parquet bytes so far (the held rows are not counted until encoded).
    fn size(&self) -> usize {
        self.encoded.as_ref().map_or(0, |e| {
            e.writer.bytes_written() + e.writer.in_progress_size()
        })
    }

    /// Bytes of memory the file holds.
    fn memory(&self) -> usize {
        self.held_bytes
            + self
                .encoded
                .as_ref()
                .map_or(0, |e| e.writer.bytes_written() + e.writer.memory_size())
    }
}

/// A complete file on its way to the store (again, after a failed attempt).
#[derive(Debug)]
struct Closed {
    file: StoreFile,
    key: MarkKey,
    first: i64,
    last: i64,
    rows: usize,
}

/// When files roll; see [`ArchiveConfig`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_cycle: bool,
    file_bytes: usize,
    age_ms: i64,
    idle_ms: i64,
    open_files: usize,
    buffered_bytes: usize,
    row_group_rows: usize,
}

/// The archive as a pipeline sink. See the module doc for the layout and the protocol.
pub struct ArchiveSink {
    store: Box<dyn Store>,
    properties: WriterProperties,
    limits: Limits,
    /// Files being filled.
    files: BTreeMap<MarkKey, OpenFile>,
    /// Complete files not yet stored (a store failure; retried first at every call).
    closed: Vec<Closed>,
    /// Partitions whose rows from an offset on were dropped, and why.
    broken: HashMap<(String, i32), (i64, &'static str)>,
    /// The temporary directory of each partition this sink fenced, and so owns.
    owned: HashMap<(String, i32), String>,
    /// Fences made, to name each temporary directory once.
    fences: u64,
    /// Where each scenario's column types are kept.
    catalog: Box<dyn ColumnCatalog>,
    /// The column types known per scenario, as far as this sink knows them.
    columns: HashMap<String, Columns>,
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
            .field("open_files", &self.files.len())
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
        let timeout = Duration::from_secs(config.store_timeout_secs);
        let store: Box<dyn Store> = if config.root.starts_with("hdfs://") {
            Box::new(HdfsStore::new(&config.root, runtime, timeout)?)
        } else if config.root.starts_with("s3://") {
            Box::new(S3Store::new(&config.s3_settings(), runtime, timeout)?)
        } else {
            Box::new(LocalStore::new(
                config.root.strip_prefix("file://").unwrap_or(&config.root),
            )?)
        };
        Self::with_store(config, store)
    }

    /// A sink writing to `store` (any [`Store`]; `config.root` is not used). Deletes
    /// leftover temporary files.
    pub fn with_store(config: &ArchiveConfig, store: Box<dyn Store>) -> Result<Self, ArchiveError> {
        let problems: Vec<String> = config
            .problems()
            .into_iter()
            .filter(|p| !p.starts_with("archive.root"))
            .collect();
        if !problems.is_empty() {
            return Err(ArchiveError::Config(problems.join("; ")));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mib = |n: u64| usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut sink = Self {
            store,
            properties: config.writer_properties()?,
            limits: Limits {
                per_cycle: config.max_file_age_secs == 0,
                file_bytes: mib(config.max_file_mb),
                age_ms: ms(config.max_file_age_secs),
                idle_ms: ms(config.idle_secs),
                open_files: config.max_open_files,
                buffered_bytes: mib(config.max_buffered_mb),
                row_group_rows: config.max_row_group_rows,
            },
            files: BTreeMap::new(),
            closed: Vec::new(),
            broken: HashMap::new(),
            owned: HashMap::new(),
            fences: 0,
            catalog: Box::new(MemoryColumns::default()),
            columns: HashMap::new(),
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

    /// Keeps the scenarios' column types in `catalog` (the registry's, for every
    /// replica and restart) instead of in this sink alone.
    pub fn with_columns(mut self, catalog: impl ColumnCatalog + 'static) -> Self {
        self.catalog = Box::new(catalog);
        self.columns.clear();
        self
    }

    /// Uses `clock` (milliseconds since the epoch) as the processing time of records
    /// without a timestamp, and for the age and idleness of open files.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// What the sink did so far.
    pub fn stats(&self) -> ArchiveStats {
        ArchiveStats {
            open_files: self.files.len() as u64,
            held_rows: self
                .files
                .values()
                .map(|f| (f.held.len() + f.encoded.as_ref().map_or(0, |e| e.rows)) as u64)
                .sum(),
            ..self.stats
        }
    }

    /// Deletes the files directly in `_tmp/`, which versions before partition
    /// fencing left there. The temporary directories of partitions are deleted
    /// when a sink fences them ([`ArchiveSink::fence`]).
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
        let names = self.store.list(dir)?;
        let mark = match self.store.naming() {
            Naming::Range => names
                .iter()
                .filter_map(|name| parse_file_name(name))
                .filter(|(t, p, _, _)| t == topic && p == partition)
                .map(|(_, _, _, last)| last)
                .max(),
            // The chain's last file is the one furthest along; its footer says
            // where it ends.
            Naming::Position => match names
                .iter()
                .filter_map(|name| parse_position_name(name).map(|p| (p, name)))
                .filter(|((t, p, _), _)| t == topic && p == partition)
                .max_by_key(|((_, _, from), _)| *from)
            {
                Some((_, name)) => Some(self.store.last_offset(&format!("{dir}/{name}"))?),
                None => None,
            },
        };
        if self.marks.len() >= MAX_MARKS {
            self.marks.clear();
        }
        self.marks.insert(key.clone(), mark);
        Ok(mark)
    }

    /// The highest offset archived or held for `key`.
    fn have(&mut self, key: &MarkKey) -> Result<Option<i64>, ArchiveError> {
        // What this sink holds is newer than anything in the directory.
        let held = self
            .files
            .get(key)
            .and_then(OpenFile::last)
            .into_iter()
            .chain(self.closed.iter().filter(|c| &c.key == key).map(|c| c.last))
            .max();
        match held {
            Some(last) => Ok(Some(last)),
            None => self.mark(key),
        }
    }

    /// Adds the partition batch's new rows to the open files, one per scenario and hour.
    fn take(&mut self, batch: &PartitionBatch) -> Result<(), ArchiveError> {
        let tp = (batch.topic.clone(), batch.partition);
        if let Some(&(from, why)) = self.broken.get(&tp) {
            return Err(ArchiveError::Broken {
                why,
                topic: batch.topic.clone(),
                partition: batch.partition,
                from,
            });
        }
        if !self.owned.contains_key(&tp) {
            self.fence(&tp)?;
        }
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
        // A scenario with a canary has two parts, one per version
        // (`pipeline/canary.rs`): their rows go to the same files, in offset order.
        // Events that left no record (dropped, or dead-lettered) go to the
        // scenario's outcome files instead, one row each.
        let mut hours: BTreeMap<(&str, i64, bool), Vec<Held>> = BTreeMap::new();
        let mut parts: BTreeMap<&str, usize> = BTreeMap::new();
        for scenario in &batch.scenarios {
            let id = scenario.scenario.as_str();
            *parts.entry(id).or_default() += 1;
            for (event, outcome) in scenario.events.iter().zip(scenario.result.outcomes()) {
                let (time, own_time) = event.time(batch.processed_ms);
                let emitted = outcome.status == Status::Emitted;
                let rows = hours
                    .entry((id, time.div_euclid(HOUR_MS), !emitted))
                    .or_default();
                let held = |record: Vec<u8>| Held {
                    offset: event.offset,
                    event_time_ms: time,
                    event_time_valid: own_time,
                    success: outcome.matched,
                    record,
                };
                if emitted {
                    for record in scenario.result.records(outcome) {
                        rows.push(held(record.to_vec()));
                    }
                } else {
                    let record = serde_json::json!({
                        "plugin": scenario.plugin,
                        "status": outcome.status.as_str(),
                        "reason": outcome
                            .error
                            .as_ref()
                            .map(|e| DeadLetterReason::of_failure(e.kind).as_str()),
                        "message": outcome.error.as_ref().map(|e| e.message.as_str()),
                    });
                    rows.push(held(record.to_string().into_bytes()));
                }
            }
        }
        for ((id, hour, outcome), mut rows) in hours {
            if parts[id] > 1 {
                // Stable: an event's records keep their order.
                rows.sort_by_key(|row| row.offset);
            }
            let dir = if outcome {
                format!("{OUTCOMES_DIR}/{}", hour_dir(id, hour))
            } else {
                hour_dir(id, hour)
            };
            let key = (id.to_owned(), dir, batch.topic.clone(), batch.partition);
            self.hold(key, rows, now)?;
        }
        Ok(())
    }

    /// Adds `rows` (in offset order) to the open file at `key`, but those at or
    /// below what the key already has.
    fn hold(&mut self, key: MarkKey, mut rows: Vec<Held>, now: i64) -> Result<(), ArchiveError> {
        let have = self.have(&key)?;
        if let Some(have) = have {
            let before = rows.len();
            rows.retain(|row| row.offset > have);
            self.stats.skipped_rows += (before - rows.len()) as u64;
        }
        if rows.is_empty() {
            return Ok(());
        }
        let file = self.files.entry(key.clone()).or_insert_with(|| OpenFile {
            from: have.map_or(0, |have| have + 1),
            encoded: None,
            held: Vec::new(),
            held_bytes: 0,
            opened_ms: now,
            written_ms: now,
        });
        file.written_ms = now;
        file.held_bytes += rows.iter().map(|r| r.record.len() + 48).sum::<usize>();
        file.held.extend(rows);
        if file.held.len() >= ENCODE_ROWS.min(self.limits.row_group_rows)
            || file.held_bytes >= ENCODE_BYTES
        {
            self.encode(&key)?;
        }
        Ok(())
    }

    /// Encodes the rows held by the open file at `key` as a row group. Rows that do not
    /// fit the file's columns close it first and start the next file.
    ///
    /// A failure may have taken rows with it: the partition is then broken. Its commits
    /// stay before the file's first row, and it takes no more rows, so a restart (or the
    /// partition's next owner) replays from there.
    fn encode(&mut self, key: &MarkKey) -> Result<(), ArchiveError> {
        let first = self.files.get(key).and_then(OpenFile::first);
        let result = self.encode_rows(key);
        // The column types not at hand (the registry down): nothing was taken
        // from the file, and the cycle is retried.
        if let Err(ArchiveError::Columns { .. }) = &result {
            return result;
        }
        if let (Err(err), Some(first)) = (&result, first) {
            tracing::error!(
                topic = %key.2,
                partition = key.3,
                from = first,
                error = %err,
                "archive: rows could not be encoded; the partition's commits stop here until a restart replays it"
            );
            self.files.remove(key);
            self.break_partition(&(key.2.clone(), key.3), first, "an encoding failure");
        }
        result
    }

    /// Notes that the rows of `tp` from `from` on were dropped: its commits stay
    /// below them and it takes no more rows until it is revoked.
    fn break_partition(&mut self, tp: &(String, i32), from: i64, why: &'static str) {
        let entry = self.broken.entry(tp.clone()).or_insert((from, why));
        entry.0 = entry.0.min(from);
    }

    /// Takes `tp` over: deletes its temporary directory, with the files every
    /// earlier writer of the partition has in flight, makes a new one of this
    /// sink's own, and forgets what it knew of the partition's marks, so they are
    /// read after the fence. See the module doc for why no two files overlap.
    fn fence(&mut self, tp: &(String, i32)) -> Result<(), ArchiveError> {
        let partition_dir = format!("{TMP_DIR}/{}-{}", escape(&tp.0), tp.1);
        self.store.delete_dir(&partition_dir)?;
        self.fences += 1;
        let dir = format!("{partition_dir}/{}-{}", self.tmp_prefix, self.fences);
        self.store.make_dir(&dir)?;
        self.marks
            .retain(|(_, _, t, p), _| !(t == &tp.0 && *p == tp.1));
        self.last_offsets.remove(tp);
        tracing::info!(topic = %tp.0, partition = tp.1, dir = %dir, "archive: partition fenced");
        self.stats.fences += 1;
        self.owned.insert(tp.clone(), dir);
        Ok(())
    }

    /// After a put of a file of `tp` found its temporary file or directory gone:
    /// when this sink's temporary directory
    /// is gone, another replica fenced the partition, and what this sink holds of
    /// it must never be renamed. It is dropped, and the partition broken.
    /// True when it was.
    fn check_fence(&mut self, tp: &(String, i32)) -> bool {
        let Some(dir) = self.owned.get(tp).cloned() else {
            return false;
        };
        if !matches!(self.store.is_dir(&dir), Ok(false)) {
            return false;
        }
        self.fenced_out(tp);
        true
    }

    /// Drops what this sink holds of `tp`, which another replica took over, and
    /// breaks the partition.
    fn fenced_out(&mut self, tp: &(String, i32)) {
        let ours = |key: &MarkKey| key.2 == tp.0 && key.3 == tp.1;
        let from = self
            .files
            .iter()
            .filter(|(key, _)| ours(key))
            .filter_map(|(_, file)| file.first())
            .chain(self.closed.iter().filter(|c| ours(&c.key)).map(|c| c.first))
            .min();
        self.files.retain(|key, _| !ours(key));
        self.closed.retain(|c| !ours(&c.key));
        self.marks.retain(|key, _| !ours(key));
        self.owned.remove(tp);
        self.stats.fenced_out += 1;
        tracing::warn!(
            topic = %tp.0,
            partition = tp.1,
            from,
            "archive: another replica fenced this partition (it took it over); the rows held \
             for it here are dropped and will be archived by its owner"
        );
        if let Some(from) = from {
            self.break_partition(tp, from, "another replica fenced the partition");
        }
    }

    fn encode_rows(&mut self, key: &MarkKey) -> Result<(), ArchiveError> {
        let Some(file) = self.files.get_mut(key) else {
            return Ok(());
        };
        if file.held.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut file.held);
        let held_bytes = std::mem::take(&mut file.held_bytes);
        let records = schema::parse(held.iter().map(|h| h.record.as_slice()));
        let observed = schema::observe(&records);
        let (scenario, dir, topic, partition) = key;
        let known = if dir.starts_with(OUTCOMES_DIR) {
            Ok(outcome_columns())
        } else {
            self.scenario_columns(scenario, &observed)
        };
        let known = match known {
            Ok(known) => known,
            Err(err) => {
                // Nothing was taken from the file: its rows wait for the retry.
                drop(records);
                let file = self.files.get_mut(key).expect("open file");
                file.held = held;
                file.held_bytes = held_bytes;
                return Err(err);
            }
        };
        let file = self.files.get_mut(key).expect("open file");
        let encode_error = |reason: String| ArchiveError::Encode {
            scenario: scenario.clone(),
            reason,
        };
        let rows: Vec<Row> = held
            .iter()
            .map(|h| Row {
                offset: h.offset,
                event_time_ms: h.event_time_ms,
                event_time_valid: h.event_time_valid,
                success: h.success,
            })
            .collect();
        let reopen = match &file.encoded {
            Some(encoded) => schema::lacks(&encoded.columns, &known, &observed),
            None => true,
        };
        if reopen {
            if let Some(done) = file.encoded.take() {
                file.from = done.last + 1;
                let closed = self.finish(key, done)?;
                self.closed.push(closed);
            }
            let batch = schema::build(scenario, topic, *partition, &[], &[], &known)
                .map_err(|e| encode_error(e.to_string()))?;
            let writer =
                ArrowWriter::try_new(Vec::new(), batch.schema(), Some(self.properties.clone()))
                    .map_err(|e| encode_error(e.to_string()))?;
            let file = self.files.get_mut(key).expect("open file");
            file.encoded = Some(Encoded {
                writer,
                columns: known,
                from: file.from,
                first: rows[0].offset,
                last: rows[0].offset,
                rows: 0,
            });
        }
        let file = self.files.get_mut(key).expect("open file");
        let encoded = file.encoded.as_mut().expect("encoded");
        let batch = schema::build(
            scenario,
            topic,
            *partition,
            &rows,
            &records,
            &encoded.columns,
        )
        .map_err(|e| encode_error(e.to_string()))?;
        // The writer closes a row group at `max_row_group_rows`; past
        // ROW_GROUP_BYTES of encoded data, it is closed here.
        encoded
            .writer
            .write(&batch)
            .and_then(|()| {
                if encoded.writer.in_progress_size() >= ROW_GROUP_BYTES {
                    encoded.writer.flush()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| encode_error(e.to_string()))?;
        encoded.last = rows[rows.len() - 1].offset;
        encoded.rows += rows.len();
        Ok(())
    }

    /// The column types of `scenario`, having learned types for the fields
    /// `observed` that had none (from the catalog, where another writer may have
    /// learned them first).
    fn scenario_columns(
        &mut self,
        scenario: &str,
        observed: &schema::Kinds,
    ) -> Result<Columns, ArchiveError> {
        if !self.columns.contains_key(scenario) {
            let known = self.catalog.known(scenario)?;
            self.columns.insert(scenario.to_owned(), known);
        }
        let known = &self.columns[scenario];
        let proposed = schema::proposed(observed, known);
        if !proposed.is_empty() {
            let learned = self.catalog.learn(scenario, &proposed)?;
            for (name, column) in &proposed {
                if learned.get(name) != Some(column) {
                    tracing::info!(
                        scenario,
                        column = %name,
                        kept = learned.get(name).map(|c| c.name()),
                        "archive: another writer learned this column's type first; keeping its type"
                    );
                }
            }
            self.columns.insert(scenario.to_owned(), learned);
        }
        Ok(self.columns[scenario].clone())
    }

    /// Ends an encoded file: the Parquet footer, its final and temporary names.
    fn finish(&mut self, key: &MarkKey, mut encoded: Encoded) -> Result<Closed, ArchiveError> {
        let (scenario, dir, topic, partition) = key;
        self.tmp_counter += 1;
        let (first, last) = (encoded.first, encoded.last);
        let tmp_dir = self
            .owned
            .get(&(topic.clone(), *partition))
            .cloned()
            .unwrap_or_else(|| format!("{TMP_DIR}/{}-{partition}/unfenced", escape(topic)));
        let tmp = format!("{tmp_dir}/{}.parquet.tmp", self.tmp_counter);
        // The footer says what a name by position does not, and which attempt
        // wrote the file (a writer retrying a put tells its own file by it).
        for (k, v) in [
            (s3::LAST_OFFSET_KEY, last.to_string()),
            (s3::ATTEMPT_KEY, tmp.clone()),
        ] {
            encoded
                .writer
                .append_key_value_metadata(KeyValue::new(k.to_owned(), v));
        }
        let bytes = encoded
            .writer
            .into_inner()
            .map_err(|e| ArchiveError::Encode {
                scenario: scenario.clone(),
                reason: e.to_string(),
            })?;
        let path = match self.store.naming() {
            Naming::Range => format!("{dir}/{topic}-{partition}-{first}-{last}.parquet"),
            Naming::Position => format!("{dir}/{topic}-{partition}-{}.parquet", encoded.from),
        };
        Ok(Closed {
            file: StoreFile { path, tmp, bytes },
            key: key.clone(),
            first,
            last,
            rows: encoded.rows,
        })
    }

    /// Closes the open file at `key`: its held rows are encoded and it waits to be stored.
    fn close(&mut self, key: &MarkKey) -> Result<(), ArchiveError> {
        self.encode(key)?;
        if let Some(encoded) = self.files.remove(key).and_then(|f| f.encoded) {
            let closed = self.finish(key, encoded)?;
            self.closed.push(closed);
        }
        Ok(())
    }

    /// Closes the files `due` says must roll.
    fn close_where(&mut self, due: impl Fn(&OpenFile) -> bool) -> Result<(), ArchiveError> {
        let keys: Vec<MarkKey> = self
            .files
            .iter()
            .filter(|(_, file)| due(file))
            .map(|(key, _)| key.clone())
            .collect();
        keys.iter().try_for_each(|key| self.close(key))
    }

    /// Rolls files over the size limit, then the least recently written beyond the
    /// open-file limit, then the largest while over the memory limit.
    fn enforce_limits(&mut self) -> Result<(), ArchiveError> {
        let limits = self.limits;
        self.close_where(|file| file.size() >= limits.file_bytes)?;
        while self.files.len() > limits.open_files {
            let oldest = self
                .files
                .iter()
                .min_by_key(|(_, file)| file.written_ms)
                .map(|(key, _)| key.clone())
                .expect("a file");
            self.close(&oldest)?;
        }
        while self.files.values().map(OpenFile::memory).sum::<usize>() > limits.buffered_bytes {
            let largest = self
                .files
                .iter()
                .max_by_key(|(_, file)| file.memory())
                .map(|(key, _)| key.clone())
                .expect("a file");
            self.close(&largest)?;
        }
        Ok(())
    }

    /// Stores the closed files, all at once where the store can, then notes the new
    /// marks of those that made it. Those that failed stay for the next call. Files of
    /// one key go in offset order, one per wave, and none after a failure: a later
    /// file visible without an earlier one would raise the key's mark over rows that
    /// are not archived.
    fn put_closed(&mut self) -> Result<(), ArchiveError> {
        let mut waiting = std::mem::take(&mut self.closed);
        waiting.sort_by(|a, b| (&a.key, a.first).cmp(&(&b.key, b.first)));
        let mut first_error = None;
        while !waiting.is_empty() {
            let (mut wave, mut later) = (Vec::<Closed>::new(), Vec::<Closed>::new());
            for closed in waiting {
                let same_key = |other: Option<&Closed>| other.is_some_and(|o| o.key == closed.key);
                if same_key(wave.last()) || same_key(later.last()) {
                    later.push(closed);
                } else {
                    wave.push(closed);
                }
            }
            let (files, notes): (Vec<StoreFile>, Vec<_>) = wave
                .into_iter()
                .map(|c| (c.file, (c.key, c.first, c.last, c.rows)))
                .unzip();
            let results = self.store.put_all(&files);
            let mut failed_keys: Vec<MarkKey> = Vec::new();
            let mut gone: Vec<(String, i32)> = Vec::new();
            let mut taken: Vec<(String, i32)> = Vec::new();
            for ((file, (key, first, last, rows)), result) in
                files.into_iter().zip(notes).zip(results)
            {
                match result {
                    Ok(false) if self.store.naming() == Naming::Position => {
                        // Another writer's file has this place in the chain: it
                        // took the partition over (see the module doc).
                        taken.push((key.2.clone(), key.3));
                        self.closed.push(Closed {
                            file,
                            key,
                            first,
                            last,
                            rows,
                        });
                    }
                    Ok(stored) => {
                        if stored {
                            self.stats.files += 1;
                            self.stats.rows += rows as u64;
                            self.stats.bytes += file.bytes.len() as u64;
                        } else {
                            tracing::warn!(path = %file.path, "archive: file already there, kept the existing one");
                        }
                        let mark = self.marks.entry(key).or_insert(None);
                        *mark = (*mark).max(Some(last));
                    }
                    Err(e) => {
                        // Best effort: what is left is removed at the next fence anyway.
                        let _ = self.store.delete(&file.tmp);
                        if matches!(e, ArchiveError::Gone { .. }) {
                            gone.push((key.2.clone(), key.3));
                        }
                        failed_keys.push(key.clone());
                        self.closed.push(Closed {
                            file,
                            key,
                            first,
                            last,
                            rows,
                        });
                        first_error.get_or_insert(e);
                    }
                }
            }
            let (blocked, rest): (Vec<Closed>, Vec<Closed>) = later
                .into_iter()
                .partition(|c| failed_keys.contains(&c.key));
            self.closed.extend(blocked);
            waiting = rest;
            gone.dedup();
            gone.retain(|tp| self.check_fence(tp));
            taken.dedup();
            for tp in taken {
                self.fenced_out(&tp);
                if let Some(&(from, why)) = self.broken.get(&tp) {
                    first_error.get_or_insert(ArchiveError::Broken {
                        why,
                        topic: tp.0.clone(),
                        partition: tp.1,
                        from,
                    });
                }
                gone.push(tp);
            }
            waiting.retain(|c| !gone.iter().any(|(t, p)| &c.key.2 == t && c.key.3 == *p));
        }
        first_error.map_or(Ok(()), Err)
    }

    fn sink_error(e: ArchiveError) -> SinkError {
        SinkError::new("archive", e.to_string())
    }
}

impl Sink for ArchiveSink {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn write(&mut self, batches: &[PartitionBatch]) -> Result<(), SinkError> {
        let mut result = self.put_closed();
        if result.is_ok() {
            // A broken partition takes no rows (its commits stay below what it
            // dropped), and holds up no other partition.
            result = batches.iter().try_for_each(|batch| {
                if self
                    .broken
                    .contains_key(&(batch.topic.clone(), batch.partition))
                {
                    return Ok(());
                }
                self.take(batch)
            });
        }
        if result.is_ok() {
            result = if self.limits.per_cycle {
                self.close_where(|_| true)
            } else {
                self.enforce_limits()
            };
        }
        if result.is_ok() {
            result = self.put_closed();
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
        result.map_err(Self::sink_error)
    }

    fn pending_from(&self, topic: &str, partition: i32) -> Option<i64> {
        let ours = |key: &MarkKey| key.2 == topic && key.3 == partition;
        self.files
            .iter()
            .filter(|(key, _)| ours(key))
            .filter_map(|(_, file)| file.first())
            .chain(self.closed.iter().filter(|c| ours(&c.key)).map(|c| c.first))
            .chain(
                self.broken
                    .get(&(topic.to_owned(), partition))
                    .map(|(from, _)| *from),
            )
            .min()
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        let now = (self.clock)();
        let limits = self.limits;
        self.close_where(|file| {
            now.saturating_sub(file.opened_ms) >= limits.age_ms
                || now.saturating_sub(file.written_ms) >= limits.idle_ms
        })
        .and_then(|()| self.put_closed())
        .map_err(Self::sink_error)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.close_where(|_| true)
            .and_then(|()| self.put_closed())
            .map_err(Self::sink_error)
    }

    fn counts(&self) -> Vec<SinkCount> {
        vec![
            SinkCount {
                name: "archive_fences",
                help: "Partitions the archive took over as their writer (fenced their earlier writers).",
                value: self.stats.fences,
            },
            SinkCount {
                name: "archive_fenced_out",
                help: "Partitions another replica's archive fenced while this one held rows of them; those rows were dropped here and are archived by the owner.",
                value: self.stats.fenced_out,
            },
            SinkCount {
                name: "archive_files",
                help: "Parquet files the archive made durable (renamed into place).",
                value: self.stats.files,
            },
            SinkCount {
                name: "archive_bytes",
                help: "Bytes of the Parquet files the archive made durable.",
                value: self.stats.bytes,
            },
        ]
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        vec![("archive_open_files", self.files.len() as f64)]
    }

    fn revoked(&mut self, partitions: &[(String, i32)]) {
        let gone = |key: &MarkKey| partitions.iter().any(|(t, p)| &key.2 == t && key.3 == *p);
        let before = self.files.len();
        self.files.retain(|key, _| !gone(key));
        for c in self.closed.iter().filter(|c| gone(&c.key)) {
            let _ = self.store.delete(&c.file.tmp);
        }
        self.closed.retain(|c| !gone(&c.key));
        self.marks.retain(|key, _| !gone(key));
        for tp in partitions {
            self.last_offsets.remove(tp);
            self.broken.remove(tp);
            self.owned.remove(tp);
        }
        if before != self.files.len() {
            tracing::info!(
                dropped_files = before - self.files.len(),
                "archive: open files of revoked partitions dropped; their next owner writes them"
            );
        }
    }
}

/// The columns of the outcome files ([`OUTCOMES_DIR`]) besides the fixed ones.
fn outcome_columns() -> Columns {
    ["message", "plugin", "reason", "status"]
        .into_iter()
        .map(|name| (name.to_owned(), columns::ColumnType::Utf8))
        .collect()
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
pub(crate) fn escape(value: &str) -> String {
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

/// `(topic, partition, from)` out of `{topic}-{partition}-{from}.parquet`, a name by
/// [`Naming::Position`].
pub fn parse_position_name(name: &str) -> Option<(String, i32, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let mut parts = stem.rsplitn(3, '-');
    let from = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?;
    (!topic.is_empty()).then(|| (topic.to_owned(), partition, from))
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
    use std::sync::{Arc, Mutex};

    /// A store that refuses the paths it is told to and remembers what it stored.
    #[derive(Debug, Default, Clone)]
    struct Picky {
        refuse: Arc<Mutex<Vec<String>>>,
        stored: Arc<Mutex<Vec<String>>>,
    }

    impl Store for Picky {
        fn put(&mut self, path: &str, _tmp: &str, _bytes: &[u8]) -> Result<bool, ArchiveError> {
            if self.refuse.lock().unwrap().iter().any(|r| r == path) {
                return Err(ArchiveError::Store {
                    op: "put",
                    path: path.to_owned(),
                    reason: "refused".into(),
                });
            }
            self.stored.lock().unwrap().push(path.to_owned());
            Ok(true)
        }
        fn list(&mut self, _dir: &str) -> Result<Vec<String>, ArchiveError> {
            Ok(Vec::new())
        }
        fn delete(&mut self, _path: &str) -> Result<(), ArchiveError> {
            Ok(())
        }
        fn delete_dir(&mut self, _dir: &str) -> Result<(), ArchiveError> {
            Ok(())
        }
        fn make_dir(&mut self, _dir: &str) -> Result<(), ArchiveError> {
            Ok(())
        }
        fn is_dir(&mut self, _dir: &str) -> Result<bool, ArchiveError> {
            Ok(true)
        }
        fn root(&self) -> String {
            "picky".into()
        }
    }

    fn closed(scenario: &str, first: i64, last: i64) -> Closed {
        let key = (scenario.to_owned(), "dir".to_owned(), "t".to_owned(), 0);
        Closed {
            file: StoreFile {
                path: format!("{scenario}/t-0-{first}-{last}.parquet"),
                tmp: format!("_tmp/{scenario}-{first}"),
                bytes: Vec::new(),
            },
            key,
            first,
            last,
            rows: 1,
        }
    }

    #[test]
    fn a_later_file_of_a_key_waits_for_the_earlier_one() {
        let store = Picky::default();
        let mut sink = ArchiveSink::with_store(&ArchiveConfig::default(), Box::new(store.clone()))
            .expect("sink");
        store
            .refuse
            .lock()
            .unwrap()
            .push("a/t-0-0-9.parquet".into());
        sink.closed = vec![closed("a", 10, 19), closed("b", 0, 9), closed("a", 0, 9)];
        assert!(sink.put_closed().is_err());
        assert_eq!(
            *store.stored.lock().unwrap(),
            ["b/t-0-0-9.parquet"],
            "a's second file is not stored before its first"
        );
        assert_eq!(
            sink.pending_from("t", 0),
            Some(0),
            "a's rows still hold commits"
        );
        assert_eq!(sink.closed.len(), 2);

        store.refuse.lock().unwrap().clear();
        sink.put_closed().expect("stored");
        assert_eq!(
            *store.stored.lock().unwrap(),
            [
                "b/t-0-0-9.parquet",
                "a/t-0-0-9.parquet",
                "a/t-0-10-19.parquet"
            ],
            "in offset order, one per wave"
        );
        assert_eq!(sink.pending_from("t", 0), None);
    }

    /// A batch of `offsets` of partition 0 of `t` for scenario `s`, one record each,
    /// in one hour.
    fn batch(offsets: std::ops::RangeInclusive<i64>) -> PartitionBatch {
        use crate::pipeline::sink::{EventMeta, ScenarioBatch};
        let mut result = crate::runtime::BatchResult::default();
        let mut events = Vec::new();
        for offset in offsets.clone() {
            let record = format!("{{\"n\":{offset}}}");
            result.push_outcome(Status::Emitted, true, None, [record.as_bytes()]);
            events.push(EventMeta {
                offset,
                timestamp_ms: Some(1_795_698_000_000 + offset),
            });
        }
        PartitionBatch {
            topic: "t".into(),
            partition: 0,
            first_offset: *offsets.start(),
            last_offset: *offsets.end(),
            processed_ms: 1_795_698_000_000,
            scenarios: vec![ScenarioBatch {
                scenario: "s".into(),
                plugin: "p@1".into(),
                events,
                result,
            }],
            ..PartitionBatch::default()
        }
    }

    /// `(first, last)` of every final file of the test's one key.
    fn ranges(root: &std::path::Path) -> Vec<(i64, i64)> {
        let dir = root.join(hour_dir("s", 1_795_698_000_000 / HOUR_MS));
        let mut ranges: Vec<(i64, i64)> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| parse_file_name(&e.ok()?.file_name().to_string_lossy()))
                    .map(|(_, _, first, last)| (first, last))
                    .collect()
            })
            .unwrap_or_default();
        ranges.sort();
        ranges
    }

    fn two_sinks(name: &str) -> (std::path::PathBuf, ArchiveSink, ArchiveSink) {
        let root = std::env::temp_dir().join(format!("weir-fence-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let config = ArchiveConfig {
            max_file_age_secs: 3600,
            ..ArchiveConfig::default()
        };
        let sink =
            || ArchiveSink::with_store(&config, Box::new(LocalStore::new(&root).unwrap())).unwrap();
        let (a, b) = (sink(), sink());
        (root, a, b)
    }

    #[test]
    fn a_zombie_that_renames_after_the_new_owner_listed_its_marks_is_fenced() {
        let (root, mut a, mut b) = two_sinks("zombie");
        // A holds 100..=420 open; B takes the partition over from the commit (100)
        // and lists the marks (none); then A renames, then B does.
        a.write(&[batch(100..=420)]).unwrap();
        b.write(&[batch(100..=150)]).unwrap();
        let err = a.flush().expect_err("the zombie's rename fails");
        assert!(
            err.reason.contains("rename") || err.reason.contains("write"),
            "{err}"
        );
        assert_eq!(a.stats().fenced_out, 1);
        assert_eq!(
            a.pending_from("t", 0),
            Some(100),
            "the zombie's commits stay below the rows it dropped"
        );
        a.write(&[batch(421..=430)])
            .expect("other partitions go on");
        assert_eq!(a.stats().held_rows, 0, "it takes no more of the partition");
        assert_eq!(a.pending_from("t", 0), Some(100));
        b.flush().unwrap();
        assert_eq!(ranges(&root), [(100, 150)]);

        // Revoked and assigned again, A fences in turn and carries on from B's mark.
        a.revoked(&[("t".into(), 0)]);
        a.write(&[batch(100..=300)]).unwrap();
        a.flush().unwrap();
        assert_eq!(ranges(&root), [(100, 150), (151, 300)]);
        assert!(b.write(&[batch(151..=200)]).is_ok(), "B's open file is new");
        assert!(b.flush().is_err(), "and B, fenced in turn, renames nothing");
        assert_eq!(ranges(&root), [(100, 150), (151, 300)]);
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn a_rename_before_the_fence_is_seen_by_the_new_owner() {
        let (root, mut a, mut b) = two_sinks("before");
        a.write(&[batch(100..=420)]).unwrap();
        a.flush().unwrap();
        b.write(&[batch(100..=500)]).unwrap();
        b.flush().unwrap();
        assert_eq!(ranges(&root), [(100, 420), (421, 500)]);
        assert_eq!(b.stats().skipped_rows, 321);
        std::fs::remove_dir_all(&root).ok();
    }

    /// An object store in memory, as S3 behaves: no rename, create-only writes.
    #[derive(Debug, Default, Clone)]
    struct Objects {
        objects: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
        /// The next put is stored but answers an error, as a lost answer would.
        lose_answer: Arc<Mutex<bool>>,
    }

    impl Objects {
        fn footer(bytes: &[u8], key: &str) -> Option<String> {
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .parse_and_finish(&bytes::Bytes::copy_from_slice(bytes))
                .ok()?;
            let kv = metadata.file_metadata().key_value_metadata()?;
            kv.iter().find(|kv| kv.key == key)?.value.clone()
        }

        /// `(name, offsets of its rows)` of every final file, by name.
        fn files(&self) -> Vec<(String, Vec<i64>)> {
            use arrow::array::AsArray;
            let objects = self.objects.lock().unwrap();
            objects
                .iter()
                .filter(|(path, _)| !path.starts_with(TMP_DIR))
                .map(|(path, bytes)| {
                    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                        bytes::Bytes::copy_from_slice(bytes),
                        1024,
                    )
                    .unwrap();
                    let offsets = reader
                        .flat_map(|batch| {
                            let batch = batch.unwrap();
                            let column = batch.column_by_name("offset").unwrap();
                            column
                                .as_primitive::<arrow::datatypes::Int64Type>()
                                .values()
                                .to_vec()
                        })
                        .collect();
                    (path.rsplit('/').next().unwrap().to_owned(), offsets)
                })
                .collect()
        }
    }

    impl Store for Objects {
        fn naming(&self) -> Naming {
            Naming::Position
        }
        fn last_offset(&mut self, path: &str) -> Result<i64, ArchiveError> {
            let objects = self.objects.lock().unwrap();
            Ok(Self::footer(&objects[path], s3::LAST_OFFSET_KEY)
                .unwrap()
                .parse()
                .unwrap())
        }
        fn put(&mut self, path: &str, tmp: &str, bytes: &[u8]) -> Result<bool, ArchiveError> {
            let mut objects = self.objects.lock().unwrap();
            if let Some(there) = objects.get(path) {
                return Ok(Self::footer(there, s3::ATTEMPT_KEY).as_deref() == Some(tmp));
            }
            objects.insert(path.to_owned(), bytes.to_vec());
            if std::mem::take(&mut *self.lose_answer.lock().unwrap()) {
                return Err(store_error_for_tests(path));
            }
            Ok(true)
        }
        fn list(&mut self, dir: &str) -> Result<Vec<String>, ArchiveError> {
            let prefix = format!("{dir}/");
            let objects = self.objects.lock().unwrap();
            Ok(objects
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_owned)
                .collect())
        }
        fn delete(&mut self, path: &str) -> Result<(), ArchiveError> {
            self.objects.lock().unwrap().remove(path);
            Ok(())
        }
        fn delete_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
            let prefix = format!("{dir}/");
            self.objects
                .lock()
                .unwrap()
                .retain(|k, _| !k.starts_with(&prefix));
            Ok(())
        }
        fn make_dir(&mut self, _dir: &str) -> Result<(), ArchiveError> {
            Ok(())
        }
        fn is_dir(&mut self, _dir: &str) -> Result<bool, ArchiveError> {
            Ok(true)
        }
        fn root(&self) -> String {
            "objects".into()
        }
    }

    fn store_error_for_tests(path: &str) -> ArchiveError {
        ArchiveError::Store {
            op: "put",
            path: path.to_owned(),
            reason: "the answer was lost".into(),
        }
    }

    #[test]
    fn on_an_object_store_two_writers_race_for_one_name_and_one_wins() {
        let objects = Objects::default();
        let config = ArchiveConfig {
            max_file_age_secs: 3600,
            ..ArchiveConfig::default()
        };
        let sink = || ArchiveSink::with_store(&config, Box::new(objects.clone())).unwrap();
        let (mut a, mut b) = (sink(), sink());
        // A holds 100..=420; B takes the partition over from the commit (100) and
        // holds 100..=150. Neither can stop the other's write: they race for the
        // first place in the chain, and A gets it.
        a.write(&[batch(100..=420)]).unwrap();
        b.write(&[batch(100..=150)]).unwrap();
        a.flush().unwrap();
        let err = b.flush().expect_err("B lost the name");
        assert!(err.reason.contains("dropped"), "{err}");
        assert_eq!(b.stats().fenced_out, 1);
        assert_eq!(b.pending_from("t", 0), Some(100), "B's commits stay below");
        let files = objects.files();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].0, "t-0-0.parquet");
        assert_eq!(files[0].1, (100..=420).collect::<Vec<_>>());

        // Revoked and assigned again, B reads where the chain ends from A's footer.
        b.revoked(&[("t".into(), 0)]);
        b.write(&[batch(100..=500)]).unwrap();
        b.flush().unwrap();
        assert_eq!(b.stats().skipped_rows, 321);
        // A, which lost the partition without knowing, writes on from its own
        // view (421) and loses that name to B's file.
        a.write(&[batch(421..=450)]).unwrap();
        assert!(a.flush().is_err(), "A lost the next name");
        let files = objects.files();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["t-0-0.parquet", "t-0-421.parquet"]);
        let all: Vec<i64> = files.into_iter().flat_map(|(_, o)| o).collect();
        assert_eq!(all, (100..=500).collect::<Vec<_>>(), "each row once");
    }

    #[test]
    fn a_put_whose_answer_was_lost_is_known_as_its_own_on_the_retry() {
        let objects = Objects::default();
        let mut sink =
            ArchiveSink::with_store(&ArchiveConfig::default(), Box::new(objects.clone())).unwrap();
        sink.write(&[batch(0..=9)]).unwrap();
        *objects.lose_answer.lock().unwrap() = true;
        assert!(sink.flush().is_err());
        sink.flush().expect("the retry finds its own file");
        assert_eq!(sink.stats().fenced_out, 0);
        assert_eq!(sink.pending_from("t", 0), None);
        sink.write(&[batch(10..=19)]).unwrap();
        sink.flush().unwrap();
        let names: Vec<String> = objects.files().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["t-0-0.parquet", "t-0-10.parquet"]);
    }

    #[test]
    fn position_names_round_trip_with_dashes_in_topics() {
        assert_eq!(
            parse_position_name("my-events-3-100.parquet"),
            Some(("my-events".to_owned(), 3, 100))
        );
        assert_eq!(parse_position_name("x-1.parquet"), None);
    }

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

    #[test]
    fn a_root_with_an_unknown_scheme_or_no_namenode_port_is_refused() {
        let problems = |root: &str| {
            ArchiveConfig {
                root: root.into(),
                ..ArchiveConfig::default()
            }
            .problems()
        };
        for good in [
            "/var/lib/weir/archive",
            "file:///tmp/a",
            "hdfs://127.0.0.1:9000/weir",
            "s3://bucket/a",
            "s3://bucket",
            "relative/dir",
        ] {
            assert_eq!(problems(good), Vec::<String>::new(), "{good}");
        }
        for bad in [
            "s3:///a",
            "ftp://h/a",
            "hdfs://namenode/a",
            "hdfs://:9000/a",
        ] {
            let found = problems(bad);
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            assert!(found[0].starts_with("archive.root"), "{found:?}");
        }
    }
}
