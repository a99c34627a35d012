//! `weir report`: per scenario and day (or hour), how many events it saw, how
//! many matched, its success ratio, its dead letters and the top values of
//! chosen fields, computed from the archive (a directory, HDFS or S3) by a
//! query engine (DataFusion) over its Parquet files, and written back as
//! Parquet under `reports/daily/`.
//!
//! **What is counted.** An event a scenario's plugin answered is in the archive
//! once: with its records under `scenario_id=…/` when it emitted some, else as
//! one row under [`OUTCOMES_DIR`]`/scenario_id=…/` (dropped, or failed and
//! dead-lettered). So, per period (the event's hour directory):
//! - `events`: distinct source events (topic, partition, offset) of the
//!   records, plus the outcome rows;
//! - `matched`: those of them the plugin said matched (`success`);
//! - `dead_letters`: outcome rows with `status = 'failed'`;
//! - `success_ratio`: `matched / events`, to 4 decimals, as the counters give it;
//! - top values: the most frequent values of a field over the scenario's
//!   records in the period (values kept in `extra`, where they did not fit the
//!   column's type, are not counted).
//!
//! Events no scenario took (unrouted, unknown scenario) have no scenario to be
//! reported under; they are in the dead-letter topic only.
//!
//! **Written back.** A daily report is one file per scenario and day,
//! `reports/daily/scenario_id={id}/day={YYYY-MM-DD}/report.parquet`, replaced
//! whole by a rerun (a directory and HDFS: a temporary file renamed over it;
//! S3: one PUT), so a reader sees the old report or the new one. The archive's
//! own files do not change, so a rerun writes the same bytes.

pub mod hdfs;

use std::collections::BTreeMap;
use std::ops::Not;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::NaiveDate;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::functions_aggregate::expr_fn::{count, max, sum};
use datafusion::prelude::{DataFrame, Expr, SessionConfig, SessionContext, cast, col, lit, when};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::archive::{ArchiveConfig, OUTCOMES_DIR, s3, split_hdfs_url};

/// Directory, under the archive root, of the daily reports.
pub const DAILY_DIR: &str = "reports/daily";
/// The file of one scenario and day under [`DAILY_DIR`].
const DAILY_FILE: &str = "report.parquet";

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The archive root or an option is wrong.
    #[error("{0}")]
    Config(String),
    /// The store did not answer, or answered with an error.
    #[error("the archive at {root}: {reason}")]
    Store {
        /// The archive root.
        root: String,
        /// What went wrong.
        reason: String,
    },
    /// The query engine failed.
    #[error("the query over scenario {scenario}'s files: {reason}")]
    Query {
        /// The scenario.
        scenario: String,
        /// What went wrong.
        reason: String,
    },
}

/// The length of a report's periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Period {
    /// UTC days.
    #[default]
    Day,
    /// UTC hours.
    Hour,
}

/// What a report covers.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// These scenarios; empty: every scenario in the archive.
    pub scenarios: Vec<String>,
    /// From this UTC day on (inclusive).
    pub from: Option<NaiveDate>,
    /// Up to this UTC day (inclusive).
    pub to: Option<NaiveDate>,
    /// Days or hours.
    pub by: Period,
    /// Fields whose most frequent values to give.
    pub top: Vec<String>,
    /// How many values per field.
    pub top_n: usize,
}

/// One value of a field and how many records of the period had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TopValue {
    /// The value, as text.
    pub value: String,
    /// Records with it.
    pub count: u64,
}

/// One scenario's figures for one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    /// The scenario.
    pub scenario_id: String,
    /// `YYYY-MM-DD`, or `YYYY-MM-DDTHH:00:00Z` for an hour.
    pub period: String,
    /// Events the scenario's plugin answered.
    pub events: u64,
    /// Those it said matched.
    pub matched: u64,
    /// `matched / events`, to 4 decimals.
    pub success_ratio: f64,
    /// Events that failed and went to the dead-letter topic.
    pub dead_letters: u64,
    /// The most frequent values of the chosen fields, most frequent first.
    pub top: BTreeMap<String, Vec<TopValue>>,
}

/// What [`Archive::report`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// One row per scenario and period with events, in scenario and period order.
    pub rows: Vec<ReportRow>,
    /// Scenarios that could not be reported, and why (the others are in `rows`).
    pub failed: Vec<(String, ReportError)>,
    /// `--top` fields a scenario's records have no column for: (scenario, field).
    pub missing_fields: Vec<(String, String)>,
}

/// What [`Archive::report`] is doing, for a progress line.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// The scenario being read.
    pub scenario: &'a str,
    /// Its place among the report's scenarios, from 1.
    pub index: usize,
    /// How many scenarios the report covers.
    pub of: usize,
    /// What is being read: `records`, `outcomes`, or `top <field>`.
    pub stage: String,
}

/// An archive root opened for reading (and for the daily reports).
pub struct Archive {
    ctx: SessionContext,
    store: Arc<dyn ObjectStore>,
    /// The store's URL (`file:///`, `s3://bucket`, `hdfs://nn:9000`).
    store_url: String,
    /// The root's path in the store.
    base: Path,
    root: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The record columns a report reads.
const PERIOD_COLUMNS: [&str; 4] = ["year", "month", "day", "hour"];

impl Archive {
    /// Opens the archive `config.root`, with S3 settings and credentials as
    /// `weir serve` takes them. Call inside a tokio runtime.
    pub fn open(config: &ArchiveConfig) -> Result<Self, ReportError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ReportError::Config(problems.join("; ")));
        }
        let root = config.root.clone();
        let config_error = |e: crate::archive::ArchiveError| ReportError::Config(e.to_string());
        let timeout = std::time::Duration::from_secs(config.store_timeout_secs);
        let (store, store_url, base): (Arc<dyn ObjectStore>, String, String) =
            if root.starts_with("s3://") {
                let (client, bucket, base) =
                    s3::client(&config.s3_settings(), timeout).map_err(config_error)?;
                (Arc::new(client), format!("s3://{bucket}"), base)
            } else if root.starts_with("hdfs://") {
                let (namenode, base) = split_hdfs_url(&root).map_err(config_error)?;
                let store = hdfs::HdfsObjects::new(&namenode, timeout)
                    .map_err(|e| ReportError::Config(format!("`{root}`: {e}")))?;
                (Arc::new(store), namenode, base)
            } else {
                let dir = std::path::absolute(root.strip_prefix("file://").unwrap_or(&root))
                    .map_err(|e| ReportError::Config(format!("`{root}`: {e}")))?;
                let dir = dir.to_str().ok_or_else(|| {
                    ReportError::Config(format!("`{root}`: the path is not UTF-8"))
                })?;
                (
                    Arc::new(object_store::local::LocalFileSystem::new()),
                    "file://".to_owned(),
                    dir.trim_matches('/').to_owned(),
                )
            };
        let mut session = SessionConfig::new();
        // Plain utf8 columns, as the archive writes them.
        session
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let ctx = SessionContext::new_with_config(session);
        let url = url::Url::parse(&format!("{store_url}/"))
            .map_err(|e| ReportError::Config(format!("`{root}`: {e}")))?;
        ctx.register_object_store(&url, store.clone());
        Ok(Self {
            ctx,
            store,
            store_url,
            base: Path::from(base),
            root,
        })
    }

    fn store_error(&self, e: impl ToString) -> ReportError {
        ReportError::Store {
            root: self.root.clone(),
            reason: e.to_string(),
        }
    }

    /// `{base}/{rest}` in the store (empty segments fall away).
    fn path(&self, rest: &str) -> Path {
        Path::from(format!("{}/{rest}", self.base))
    }

    /// The scenarios with a directory under `dir` (the root when empty).
    async fn scenario_dirs(&self, dir: &str) -> Result<Vec<String>, ReportError> {
        let prefix = self.path(dir);
        let listed = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter_map(|name| name.strip_prefix("scenario_id="))
            .map(unescape)
            .collect())
    }

    /// Every scenario with records or outcomes in the archive, in id order.
    pub async fn scenarios(&self) -> Result<Vec<String>, ReportError> {
        let mut all = self.scenario_dirs("").await?;
        all.extend(self.scenario_dirs(OUTCOMES_DIR).await?);
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// The table of the Parquet files under `dir` (relative to the root), with
    /// the hour directory's keys as columns; `None` when there are none.
    async fn table(&self, dir: &str) -> Result<Option<DataFrame>, String> {
        let prefix = self.path(dir);
        let mut files = self.store.list(Some(&prefix));
        let mut any = false;
        while let Some(meta) = futures::StreamExt::next(&mut files).await {
            let meta = meta.map_err(|e| e.to_string())?;
            if meta.location.as_ref().ends_with(".parquet") && meta.size > 0 {
                any = true;
                break;
            }
        }
        drop(files);
        if !any {
            return Ok(None);
        }
        let url = ListingTableUrl::parse(format!("{}/{prefix}/", self.store_url))
            .map_err(|e| e.to_string())?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                PERIOD_COLUMNS
                    .iter()
                    .map(|c| ((*c).to_owned(), DataType::Utf8))
                    .collect(),
            );
        let state = self.ctx.state();
        let mut config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .infer_schema(&state)
            .await
            .map_err(|e| e.to_string())?;
        // A record field named like an hour directory key (`day`, `hour`) is a
        // column of the files too; the directory's key is the one a report reads.
        if let Some(schema) = config.file_schema.clone()
            && schema
                .fields()
                .iter()
                .any(|f| PERIOD_COLUMNS.contains(&f.name().as_str()))
        {
            let kept: Vec<_> = schema
                .fields()
                .iter()
                .filter(|f| !PERIOD_COLUMNS.contains(&f.name().as_str()))
                .cloned()
                .collect();
            config = config.with_schema(Arc::new(Schema::new(kept)));
        }
        let table = ListingTable::try_new(config).map_err(|e| e.to_string())?;
        self.ctx
            .read_table(Arc::new(table))
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The report `options` ask for. A scenario whose files cannot be read
    /// is in [`Report::failed`]; the others are reported.
    pub async fn report(
        &self,
        options: &ReportOptions,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Report, ReportError> {
        let scenarios = if options.scenarios.is_empty() {
            self.scenarios().await?
        } else {
            options.scenarios.clone()
        };
        let mut report = Report::default();
        for (index, scenario) in scenarios.iter().enumerate() {
            let step = |stage: &str| Progress {
                scenario,
                index: index + 1,
                of: scenarios.len(),
                stage: stage.to_owned(),
            };
            match self
                .scenario_report(scenario, options, &mut |stage| progress(step(stage)))
                .await
            {
                Ok((rows, missing)) => {
                    report.rows.extend(rows);
                    report
                        .missing_fields
                        .extend(missing.into_iter().map(|f| (scenario.clone(), f)));
                }
                Err(e) => report.failed.push((scenario.clone(), e)),
            }
        }
        Ok(report)
    }

    /// One scenario's rows, and the `--top` fields it has no column for.
    async fn scenario_report(
        &self,
        scenario: &str,
        options: &ReportOptions,
        step: &mut dyn FnMut(&str),
    ) -> Result<(Vec<ReportRow>, Vec<String>), ReportError> {
        let mut rows = Vec::new();
        let mut missing = Vec::new();
        let query = |reason: String| ReportError::Query {
            scenario: scenario.to_owned(),
            reason,
        };
        let dir = format!("scenario_id={}", crate::archive::escape(scenario));
        let mut periods: BTreeMap<String, ReportRow> = BTreeMap::new();
        step("records");
        let records = self.table(&dir).await.map_err(query)?;
        if let Some(records) = &records {
            let mut keys = period_keys(options.by);
            keys.extend(["topic", "partition", "offset"].map(col));
            let per_event = records
                .clone()
                .filter(period_filter(options))
                .and_then(|df| {
                    df.aggregate(
                        keys,
                        vec![max(cast(col("success"), DataType::Int64)).alias("m")],
                    )
                })
                .and_then(|df| {
                    df.aggregate(
                        period_keys(options.by),
                        vec![
                            count(lit(1)).alias("events"),
                            sum(col("m")).alias("matched"),
                        ],
                    )
                })
                .map_err(|e| query(e.to_string()))?;
            for batch in per_event
                .collect()
                .await
                .map_err(|e| query(e.to_string()))?
            {
                add_counts(&mut periods, scenario, &batch, options.by).map_err(query)?;
            }
        }
        step("outcomes");
        let outcomes = self
            .table(&format!("{OUTCOMES_DIR}/{dir}"))
            .await
            .map_err(query)?;
        if let Some(outcomes) = outcomes {
            let tally = when(col("status").eq(lit("failed")), lit(1i64))
                .otherwise(lit(0i64))
                .and_then(|failed| {
                    outcomes.filter(period_filter(options))?.aggregate(
                        period_keys(options.by),
                        vec![
                            count(lit(1)).alias("events"),
                            sum(cast(col("success"), DataType::Int64)).alias("matched"),
                            sum(failed).alias("dead_letters"),
                        ],
                    )
                })
                .map_err(|e| query(e.to_string()))?;
            for batch in tally.collect().await.map_err(|e| query(e.to_string()))? {
                add_counts(&mut periods, scenario, &batch, options.by).map_err(query)?;
            }
        }
        if let Some(records) = &records {
            for field in &options.top {
                step(&format!("top {field}"));
                if records.schema().field_with_unqualified_name(field).is_err() {
                    missing.push(field.clone());
                    continue;
                }
                let mut keys = period_keys(options.by);
                keys.push(cast(col(field_ref(field)), DataType::Utf8).alias("v"));
                let counted = records
                    .clone()
                    .filter(period_filter(options))
                    .and_then(|df| df.filter(col(field_ref(field)).is_not_null()))
                    .and_then(|df| df.aggregate(keys, vec![count(lit(1)).alias("n")]))
                    .map_err(|e| query(e.to_string()))?;
                let mut values: BTreeMap<String, Vec<TopValue>> = BTreeMap::new();
                for batch in counted.collect().await.map_err(|e| query(e.to_string()))? {
                    let periods_of = period_strings(&batch, options.by).map_err(query)?;
                    let n = int_column(&batch, "n").map_err(query)?;
                    let v = string_column(&batch, "v").map_err(query)?;
                    for (i, period) in periods_of.into_iter().enumerate() {
                        values.entry(period).or_default().push(TopValue {
                            value: v.value(i).to_owned(),
                            count: n[i],
                        });
                    }
                }
                for (period, mut list) in values {
                    list.sort_by(|a, b| b.count.cmp(&a.count).then(a.value.cmp(&b.value)));
                    list.truncate(options.top_n);
                    if let Some(r) = periods.get_mut(&period) {
                        r.top.insert(field.clone(), list);
                    }
                }
            }
        }
        for (_, mut r) in periods {
            r.success_ratio = ratio(r.matched, r.events);
            rows.push(r);
        }
        Ok((rows, missing))
    }

    /// Writes `rows` (a report by day) back under [`DAILY_DIR`], one file per
    /// scenario and day, each replacing the one before whole. Returns the
    /// paths written.
    pub async fn write_daily(&self, rows: &[ReportRow]) -> Result<Vec<String>, ReportError> {
        let mut written = Vec::new();
        for row in rows {
            let bytes = daily_file(row).map_err(|reason| ReportError::Query {
                scenario: row.scenario_id.clone(),
                reason,
            })?;
            let rest = daily_path(&row.scenario_id, &row.period);
            let path = self.path(&rest);
            self.store
                .put(&path, bytes.into())
                .await
                .map_err(|e| self.store_error(e))?;
            written.push(rest);
        }
        Ok(written)
    }

    /// The newest `most` daily reports written for `scenario`, oldest first.
    pub async fn read_daily(
        &self,
        scenario: &str,
        most: usize,
    ) -> Result<Vec<ReportRow>, ReportError> {
        let prefix = self.path(&format!(
            "{DAILY_DIR}/scenario_id={}",
            crate::archive::escape(scenario)
        ));
        let mut files: Vec<Path> =
            futures::StreamExt::collect::<Vec<_>>(self.store.list(Some(&prefix)))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.store_error(e))?
                .into_iter()
                .map(|meta| meta.location)
                .filter(|location| location.filename() == Some(DAILY_FILE))
                .collect();
        // `.../day=YYYY-MM-DD/report.parquet`: name order is day order.
        files.sort();
        let newest = &files[files.len().saturating_sub(most)..];
        let reads = newest.iter().map(|location| async move {
            let got = self.store.get(location).await?;
            got.bytes().await
        });
        let mut rows = Vec::new();
        for bytes in futures::future::try_join_all(reads)
            .await
            .map_err(|e| self.store_error(e))?
        {
            rows.extend(read_daily_file(bytes).map_err(|e| self.store_error(e))?);
        }
        rows.sort_by(|a, b| a.period.cmp(&b.period));
        Ok(rows)
    }
}

/// `a/b` of a daily report.
pub fn daily_path(scenario: &str, day: &str) -> String {
    format!(
        "{DAILY_DIR}/scenario_id={}/day={day}/{DAILY_FILE}",
        crate::archive::escape(scenario)
    )
}

/// A column name as an expression refers to it (case kept, dots not split).
fn field_ref(name: &str) -> datafusion::common::Column {
    datafusion::common::Column::new_unqualified(name)
}

/// The keys of a period.
fn period_keys(by: Period) -> Vec<Expr> {
    let n = match by {
        Period::Day => 3,
        Period::Hour => 4,
    };
    PERIOD_COLUMNS[..n].iter().map(|c| col(*c)).collect()
}

/// Days from `options.from` to `options.to`, over the hour directory's keys.
fn period_filter(options: &ReportOptions) -> Expr {
    // The keys are zero-padded, so text order is time order.
    let after = |(y, m, d): (String, String, String), or_equal: bool| {
        let last = if or_equal {
            col("day").gt_eq(lit(d))
        } else {
            col("day").gt(lit(d))
        };
        col("year")
            .gt(lit(y.clone()))
            .or(col("year").eq(lit(y)).and(
                col("month")
                    .gt(lit(m.clone()))
                    .or(col("month").eq(lit(m)).and(last)),
            ))
    };
    let keys = |date: NaiveDate| {
        let text = date.format("%Y %m %d").to_string();
        let mut parts = text.split(' ').map(str::to_owned);
        (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        )
    };
    let mut filter = lit(true);
    if let Some(from) = options.from {
        filter = filter.and(after(keys(from), true));
    }
    if let Some(to) = options.to {
        filter = filter.and(after(keys(to), false).not());
    }
    filter
}

fn column<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("the engine's answer has no column {name}"))
}

fn string_column(batch: &RecordBatch, name: &str) -> Result<StringArray, String> {
    let array =
        arrow::compute::cast(column(batch, name)?, &DataType::Utf8).map_err(|e| e.to_string())?;
    array
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| format!("column {name} is not text"))
}

fn int_column(batch: &RecordBatch, name: &str) -> Result<Vec<u64>, String> {
    let array =
        arrow::compute::cast(column(batch, name)?, &DataType::Int64).map_err(|e| e.to_string())?;
    let ints = array
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| format!("column {name} is not an integer"))?;
    Ok((0..ints.len())
        .map(|i| {
            if ints.is_null(i) {
                0
            } else {
                u64::try_from(ints.value(i)).unwrap_or(0)
            }
        })
        .collect())
}

/// Adds the `events`, `matched` and (when it has them) `dead_letters` of each
/// row of `batch` to its period's row of `scenario`.
fn add_counts(
    periods: &mut BTreeMap<String, ReportRow>,
    scenario: &str,
    batch: &RecordBatch,
    by: Period,
) -> Result<(), String> {
    let events = int_column(batch, "events")?;
    let matched = int_column(batch, "matched")?;
    let dead = match batch.column_by_name("dead_letters") {
        Some(_) => int_column(batch, "dead_letters")?,
        None => vec![0; batch.num_rows()],
    };
    for (i, period) in period_strings(batch, by)?.into_iter().enumerate() {
        let row = periods.entry(period.clone()).or_insert_with(|| ReportRow {
            scenario_id: scenario.to_owned(),
            period,
            events: 0,
            matched: 0,
            success_ratio: 0.0,
            dead_letters: 0,
            top: BTreeMap::new(),
        });
        row.events += events[i];
        row.matched += matched[i];
        row.dead_letters += dead[i];
    }
    Ok(())
}

/// The period of each row of `batch`, from its hour directory's keys.
fn period_strings(batch: &RecordBatch, by: Period) -> Result<Vec<String>, String> {
    let year = string_column(batch, "year")?;
    let month = string_column(batch, "month")?;
    let day = string_column(batch, "day")?;
    let hour = match by {
        Period::Day => None,
        Period::Hour => Some(string_column(batch, "hour")?),
    };
    Ok((0..batch.num_rows())
        .map(|i| {
            let date = format!("{}-{}-{}", year.value(i), month.value(i), day.value(i));
            match &hour {
                None => date,
                Some(hour) => format!("{date}T{}:00:00Z", hour.value(i)),
            }
        })
        .collect())
}

/// `matched / events` to 4 decimals (0 without events).
fn ratio(matched: u64, events: u64) -> f64 {
    if events == 0 {
        0.0
    } else {
        (matched as f64 / events as f64 * 10_000.0).round() / 10_000.0
    }
}

/// A directory key back to the id it was made of (see `archive::escape`).
fn unescape(key: &str) -> String {
    let bytes = key.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The schema of a daily report file.
fn daily_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("scenario_id", DataType::Utf8, false),
        Field::new("day", DataType::Utf8, false),
        Field::new("events", DataType::Int64, false),
        Field::new("matched", DataType::Int64, false),
        Field::new("success_ratio", DataType::Float64, false),
        Field::new("dead_letters", DataType::Int64, false),
        // {"field": [{"value": "...", "count": n}, ...]}
        Field::new("top", DataType::Utf8, false),
    ]))
}

/// The Parquet bytes of one daily report row.
fn daily_file(row: &ReportRow) -> Result<Vec<u8>, String> {
    let int = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
    let top = serde_json::to_string(&row.top).map_err(|e| e.to_string())?;
    let batch = RecordBatch::try_new(
        daily_schema(),
        vec![
            text(&row.scenario_id),
            text(&row.period),
            int(row.events),
            int(row.matched),
            Arc::new(Float64Array::from(vec![row.success_ratio])),
            int(row.dead_letters),
            text(&top),
        ],
    )
    .map_err(|e| e.to_string())?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties))
        .map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.into_inner().map_err(|e| e.to_string())
}

/// The rows of a daily report file.
fn read_daily_file(bytes: bytes::Bytes) -> Result<Vec<ReportRow>, String> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let scenario = string_column(&batch, "scenario_id")?;
        let day = string_column(&batch, "day")?;
        let events = int_column(&batch, "events")?;
        let matched = int_column(&batch, "matched")?;
        let dead = int_column(&batch, "dead_letters")?;
        let top = string_column(&batch, "top")?;
        let ratio_col = arrow::compute::cast(column(&batch, "success_ratio")?, &DataType::Float64)
            .map_err(|e| e.to_string())?;
        let ratios = ratio_col
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or("success_ratio is not a number")?;
        for i in 0..batch.num_rows() {
            rows.push(ReportRow {
                scenario_id: scenario.value(i).to_owned(),
                period: day.value(i).to_owned(),
                events: events[i],
                matched: matched[i],
                success_ratio: ratios.value(i),
                dead_letters: dead[i],
                top: serde_json::from_str(top.value(i)).unwrap_or_default(),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_round_as_the_counters_do() {
        assert_eq!(ratio(1, 3), 0.3333);
        assert_eq!(ratio(0, 0), 0.0);
        assert_eq!(ratio(480, 1850), 0.2595);
    }

    #[test]
    fn escaped_ids_read_back() {
        assert_eq!(unescape("a%2Fb"), "a/b");
        assert_eq!(unescape("5"), "5");
        assert_eq!(unescape("x%"), "x%");
        assert_eq!(
            unescape("%a\u{e9}"),
            "%a\u{e9}",
            "no panic inside a character"
        );
        assert_eq!(unescape("%zz%4"), "%zz%4");
    }

    #[test]
    fn a_daily_file_reads_back_as_written() {
        let row = ReportRow {
            scenario_id: "5".into(),
            period: "2026-12-07".into(),
            events: 1850,
            matched: 480,
            success_ratio: 0.2595,
            dead_letters: 3,
            top: BTreeMap::from([(
                "page".to_owned(),
                vec![TopValue {
                    value: "/a".into(),
                    count: 7,
                }],
            )]),
        };
        let bytes = daily_file(&row).unwrap();
        assert_eq!(
            daily_file(&row).unwrap(),
            bytes,
            "the same row, the same bytes"
        );
        assert_eq!(read_daily_file(bytes.into()).unwrap(), vec![row]);
    }
}
