//! Exactly-once per-scenario counters in Redis.
//!
//! The pipeline tallies each partition batch as it comes back from the plugins (a
//! [`BatchTally`]: per scenario, which offsets were emitted, dropped or failed and
//! whether each matched) and hands it to [`Counters::apply`] once the batch's Kafka
//! transaction committed. `apply` sends one Lua script call per partition batch;
//! it adds every scenario's counts, its per-plugin-version counts and its
//! per-minute buckets, and moves the partition's fence, atomically.
//!
//! # Exactly once
//!
//! The fence is the last offset counted per (topic, partition) of one consumer
//! group. A batch carries every scenario's events of its offset range, so the script
//! counts only events above the fence: a batch replayed after a crash or a rebalance,
//! with the same or with other batch boundaries, is never counted twice, and a batch
//! that was not applied is applied on replay. The consumer group's offsets are
//! committed only past what `apply` counted, so nothing is skipped either.
//!
//! # Per consumer group
//!
//! Every key of a group carries the hash tag `{<prefix>:<group>}`: two groups on one
//! topic and one Redis (a blue/green deploy, a renamed group) each count every event
//! once, in keys of their own, and each replica's stats report its own group's
//! counts. All of a group's keys share one slot, so the script runs unchanged on
//! Redis Cluster, on the node that holds the slot (one script call per partition
//! batch, not per event, keeps that node's load small; the price is that one group's
//! counters do not spread over the cluster's nodes):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `weir:{weir:g}:s:5:counts` | hash | `total`, `matched`, `errors`, `dropped`, `since`, and `v:<plugin>@<version>:<field>` |
//! | `weir:{weir:g}:s:5:minute:<unix minute>` | hash | `total`, `success`, `errors`; expires after the retention |
//! | `weir:{weir:g}:fence` | hash | `<topic>\|<partition>` → last counted offset `@` where the journal holds that batch |
//! | `weir:{weir:g}:gaps` | hash | `<topic>\|<partition>\|<from>\|<until>` → when the loss was found |
//! | `scenario:5:success_ratio` | string | the JSON dashboards read (below) |
//!
//! (`g` is the group, with `%`, `{` and `}` escaped as `%25`, `%7B`, `%7D`.)
//! `scenario:<id>:success_ratio` keeps the name and format that existing dashboards
//! read: `{"success_ratio": 0.85, "total_count": 100, "success_count": 85,
//! "updated_at": "2025-06-18 12:50:10"}` (ratio rounded to 4 decimals, cumulative
//! counts, UTC time). It belongs to one group, `counters.success_ratio_group`
//! (default `weir`, the default group), whose replicas rewrite it after every batch
//! with a script that keeps the stored view when it counts more events: a replica
//! whose write was delayed never sets it back. It has no hash tag, so on Redis
//! Cluster it lives on another node, which is why it is a script of its own.
//!
//! # Rollbacks
//!
//! Redis can lose writes it acknowledged without coming back empty: a restart from
//! an RDB snapshot, an AOF without `appendfsync always`, a failover to a replica
//! that lagged. Counts and fences then roll back together, and a fence alone would
//! let the next batch count on from where it stands, missing the lost range
//! silently. So the script takes the lowest fence the caller knows was counted
//! before (the partition's committed Kafka offset minus one when it took the
//! partition over: offsets are committed only past what the counters counted; then
//! the last batch it applied) and refuses a batch when the fence is below it; the
//! sink also compares every partition's fence with what it knows every 5 s, for
//! partitions that get no new batch. The
//! caller then recounts the lost range from the pipeline's journal (results only, no
//! plugin runs), starting where the fence's journal position says, and hands the
//! batch again. A range the journal no longer holds is a gap: it is logged with the
//! range, counted in `weir_counters_uncounted_offsets_total`, and kept in the gaps
//! hash, which the stats API shows. Never a silent loss.
//!
//! # Redis down
//!
//! When Redis is unreachable or slow (bounded by a 10 s response timeout),
//! `apply` fails, the pipeline pauses consumption and retries with backoff; nothing
//! is committed past it meanwhile, so when Redis is back every event is counted
//! once. A Redis that comes back empty has lost everything: the partitions' whole
//! committed ranges are reported as gaps, counting goes on from there, and the
//! `since` field of the counts hash ([`Counters::counting_since`]) says when it
//! started again. The full history stays in the Parquet archive.
//!
//! Minute buckets are placed by the event's time (the caller's choice of timestamp,
//! see [`BatchTally::record`]), so a replay lands in the same buckets.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

mod memory;
mod sink;

pub use sink::{CountersSink, tally};

/// The script that applies one partition batch; see the file for its contract.
const FENCED_ADD: &str = include_str!("fenced_add.lua");

/// The script that writes a success-ratio view unless a newer one is stored.
const RATIO_VIEW: &str = include_str!("ratio_view.lua");

/// Longest wait for one Redis reply; a slower Redis fails the cycle, which is retried.
pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the counters live and how long minute buckets are kept.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CountersConfig {
    /// Redis URL, `redis://host:port/db`; for a Redis Cluster, the URLs of one or
    /// more of its nodes, separated by commas (with `cluster`, or more than one).
    pub url: String,
    /// The URL names nodes of a Redis Cluster (implied by more than one URL).
    pub cluster: bool,
    /// First part of every key weir writes (the dashboards' `scenario:<id>:success_ratio`
    /// key keeps its fixed name).
    pub key_prefix: String,
    /// How long per-minute buckets are kept, in seconds (default: 7 days).
    pub bucket_retention_secs: u64,
    /// The consumer group whose counts the dashboards' `scenario:<id>:success_ratio`
    /// keys show; replicas of other groups leave those keys alone.
    pub success_ratio_group: String,
}

impl Default for CountersConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            cluster: false,
            key_prefix: "weir".into(),
            bucket_retention_secs: 7 * 24 * 3600,
            success_ratio_group: "weir".into(),
        }
    }
}

/// Errors of the counters.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    /// The configuration cannot be used.
    #[error("counters configuration: {0}")]
    Config(String),
    /// Redis could not be reached or refused a command.
    #[error("redis at {url}: {source}")]
    Redis {
        /// Which server.
        url: String,
        /// What went wrong.
        source: redis::RedisError,
    },
    /// Redis has lost counts it had: see "Rollbacks" in the module doc.
    #[error(transparent)]
    Behind(#[from] Behind),
    /// The pipeline handed in events that break the batch rules.
    #[error("scenario {scenario}: {reason}")]
    Tally {
        /// The scenario whose events were out of order or mixed plugin versions.
        scenario: String,
        /// What rule was broken.
        reason: String,
    },
}

/// Redis counted a partition less far than it had before: it lost writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "redis has counted {topic} partition {partition} through offset {counted_through}, but \
     offsets through {expected} were counted before: it lost writes (a restart from a \
     snapshot, an AOF without fsync on every write, a failover to a replica that lagged)"
)]
pub struct Behind {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// The fence Redis has (-1: none).
    pub counted_through: i64,
    /// Where the journal holds the batch that ended at the fence, when Redis knows.
    pub journal: Option<(i32, i64)>,
    /// How far the caller knows it was counted.
    pub expected: i64,
}

/// A range of source offsets whose events the counters lost and could not recount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First offset not counted.
    pub from: i64,
    /// Offset after the last one not counted.
    pub until: i64,
    /// When the loss was found, unix milliseconds.
    pub noted_ms: i64,
}

/// What a plugin did with one event, as far as counting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tallied {
    /// The event produced output records.
    Emitted,
    /// The event produced nothing.
    Dropped,
    /// The event failed and went to the dead-letter topic.
    Failed,
}

impl Tallied {
    /// The script's one-letter code; upper case when the event matched.
    fn code(self, matched: bool) -> char {
        let code = match self {
            Tallied::Emitted => 'e',
            Tallied::Dropped => 'd',
            Tallied::Failed => 'f',
        };
        if matched {
            code.to_ascii_uppercase()
        } else {
            code
        }
    }
}

/// One scenario's events within a batch, in offset order.
#[derive(Debug)]
struct ScenarioEvents {
    plugin: String,
    first_offset: i64,
    last_offset: i64,
    /// Unix minutes of the buckets, in first-seen order; tokens refer to them by index.
    minutes: Vec<i64>,
    /// `<delta><code><bucket>` tokens, space separated.
    tokens: String,
    events: u64,
}

/// The counts of one partition batch, per scenario, ready for [`Counters::apply`].
///
/// A tally stands for every event of its offset range: events of a scenario that
/// are left out of it are never counted.
#[derive(Debug)]
pub struct BatchTally {
    topic: String,
    partition: i32,
    last_offset: Option<i64>,
    journal: Option<(i32, i64)>,
    counted_through: i64,
    /// By scenario and plugin version: a scenario with a canary has events of
    /// two versions in one batch (`pipeline/canary.rs`).
    scenarios: BTreeMap<(String, String), ScenarioEvents>,
}

impl BatchTally {
    /// An empty tally for a batch of `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
            last_offset: None,
            journal: None,
            counted_through: -1,
            scenarios: BTreeMap::new(),
        }
    }

    /// The batch ends at `last_offset`, also when no scenario has an event there.
    pub fn ending_at(mut self, last_offset: i64) -> Self {
        self.last_offset = Some(last_offset);
        self
    }

    /// Where the journal holds the batch's results, kept with the fence so that a
    /// loss after it can be recounted from there.
    pub fn journaled_at(mut self, at: Option<(i32, i64)>) -> Self {
        self.journal = at;
        self
    }

    /// The caller knows the partition was counted through `offset` before this
    /// batch: a fence below it means Redis lost writes, and the batch is refused
    /// with [`CountersError::Behind`]. -1: nothing known.
    pub fn counted_through(mut self, offset: i64) -> Self {
        self.counted_through = offset;
        self
    }

    /// The batch's last offset: the one given, else the last event's.
    fn last(&self) -> Option<i64> {
        self.scenarios
            .values()
            .map(|s| s.last_offset)
            .chain(self.last_offset)
            .max()
    }

    /// The fence value the batch leaves: its last offset and its journal place.
    fn fence_value(&self, last: i64) -> String {
        match self.journal {
            Some((partition, offset)) => format!("{last}@{partition}:{offset}"),
            None => last.to_string(),
        }
    }

    /// Counts one event for `scenario`, handled by `plugin` (`name@version`).
    ///
    /// `event_time_ms` places the event in its minute bucket: pass the event's own
    /// time when known, else the record timestamp, else the processing time. The
    /// events of one scenario and plugin version must come in increasing offset
    /// order.
    pub fn record(
        &mut self,
        scenario: &str,
        plugin: &str,
        offset: i64,
        event_time_ms: i64,
        tallied: Tallied,
        matched: bool,
    ) -> Result<(), CountersError> {
        let minute = event_time_ms.div_euclid(60_000);
        let entry = self
            .scenarios
            .entry((scenario.to_owned(), plugin.to_owned()))
            .or_insert_with(|| ScenarioEvents {
                plugin: plugin.to_owned(),
                first_offset: offset,
                last_offset: offset,
                minutes: Vec::new(),
                tokens: String::new(),
                events: 0,
            });
        let broken = |reason: String| CountersError::Tally {
            scenario: scenario.to_owned(),
            reason,
        };
        let delta = if entry.events == 0 {
            0
        } else if offset > entry.last_offset {
            offset - entry.last_offset
        } else {
            return Err(broken(format!(
                "offset {offset} after {}: events must come in increasing offset order",
                entry.last_offset
            )));
        };
        let bucket = match entry.minutes.iter().position(|m| *m == minute) {
            Some(index) => index,
            None => {
                entry.minutes.push(minute);
                entry.minutes.len() - 1
            }
        };
        if !entry.tokens.is_empty() {
            entry.tokens.push(' ');
        }
        // Bucket numbers are 1-based in the script (KEYS[2 + n]).
        let _ = write!(
            entry.tokens,
            "{delta}{}{}",
            tallied.code(matched),
            bucket + 1
        );
        entry.last_offset = offset;
        entry.events += 1;
        Ok(())
    }

    /// Whether no event was recorded.
    pub fn is_empty(&self) -> bool {
        self.scenarios.is_empty()
    }
}

/// One [`Applied`] per scenario: the entries of one scenario's versions
/// (adjacent, as the tally orders them) summed, with the last one's totals,
/// which are the scenario's after all of them.
fn merge_applied(applied: Vec<Applied>) -> Vec<Applied> {
    let mut merged: Vec<Applied> = Vec::with_capacity(applied.len());
    for next in applied {
        match merged.last_mut() {
            Some(last) if last.scenario == next.scenario => {
                last.newly_counted += next.newly_counted;
                last.totals = next.totals;
            }
            _ => merged.push(next),
        }
    }
    merged
}

/// `(fence, journal place)` out of a stored fence value (`""`: none).
fn parse_fence(value: &str) -> (i64, Option<(i32, i64)>) {
    let (last, at) = value.split_once('@').unwrap_or((value, ""));
    let journal = at.split_once(':').and_then(|(partition, offset)| {
        Some((partition.parse::<i32>().ok()?, offset.parse::<i64>().ok()?))
    });
    (last.parse().unwrap_or(-1), journal)
}

/// A consumer group's name as it goes into keys: `%`, `{` and `}` escaped, so the
/// hash tag ends where it should.
fn key_group(group: &str) -> String {
    group
        .replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// A scenario's cumulative counts after a batch was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Events routed to the scenario.
    pub total: u64,
    /// Events the plugin said matched.
    pub matched: u64,
    /// Events that failed and were dead-lettered.
    pub errors: u64,
    /// Events that produced no output.
    pub dropped: u64,
}

/// What [`Counters::apply`] did for one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The scenario.
    pub scenario: String,
    /// Events counted now; fewer than recorded when part of the batch had been applied before.
    pub newly_counted: u64,
    /// The scenario's counts after this batch.
    pub totals: Totals,
}

/// One minute of a scenario's counts, for charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MinuteCounts {
    /// Start of the minute, milliseconds since the Unix epoch.
    pub minute_ms: i64,
    /// Events in that minute.
    pub total: u64,
    /// Matched events in that minute.
    pub success: u64,
    /// Failed events in that minute.
    pub errors: u64,
}

/// The JSON kept at `scenario:<id>:success_ratio`, in the field order dashboards expect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuccessRatio {
    /// `success_count / total_count`, rounded to 4 decimals; 0 when there is no event yet.
    pub success_ratio: f64,
    /// Cumulative events.
    pub total_count: u64,
    /// Cumulative matched events.
    pub success_count: u64,
    /// When it was written, UTC, `YYYY-MM-DD HH:MM:SS`.
    pub updated_at: String,
}

impl SuccessRatio {
    /// The view of `totals` at `now`.
    pub fn new(totals: Totals, now: DateTime<Utc>) -> Self {
        let ratio = if totals.total == 0 {
            0.0
        } else {
            (totals.matched as f64 / totals.total as f64 * 10_000.0).round() / 10_000.0
        };
        Self {
            success_ratio: ratio,
            total_count: totals.total,
            success_count: totals.matched,
            updated_at: now.format("%Y-%m-%d %H:%M:%S").to_string(),
        }
    }
}

/// The counters in one Redis (or Redis Cluster) deployment.
#[derive(Clone)]
struct RedisCounters {
    url: String,
    prefix: String,
    retention_secs: u64,
    /// Consumer group whose offsets the fences follow.
    group: String,
    /// Whether this group writes the dashboards' success-ratio keys.
    owns_ratio: bool,
    script: redis::Script,
    ratio_script: redis::Script,
    /// After a gap was noted: the scenarios whose view was written since, whatever
    /// was stored (the counts fell below it for good).
    forced: Arc<Mutex<Option<HashSet<String>>>>,
    conn: Conn,
}

/// A connection to one Redis or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// Connects to Redis. `group` is the Kafka consumer group whose offsets the
    /// fences follow: two groups reading the same topic count independently.
    pub async fn connect(config: &CountersConfig, group: &str) -> Result<Self, CountersError> {
        if config.key_prefix.is_empty() || config.key_prefix.contains(['{', '}']) {
            return Err(CountersError::Config(format!(
                "key_prefix {:?} must be non-empty and free of braces (they mark hash tags)",
                config.key_prefix
            )));
        }
        if config.bucket_retention_secs == 0 {
            return Err(CountersError::Config(
                "bucket_retention_secs must be at least 1".into(),
            ));
        }
        let redis_error = |source| CountersError::Redis {
            url: config.url.clone(),
            source,
        };
        let urls: Vec<&str> = config
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let conn = if config.cluster || urls.len() > 1 {
            // Bounded waits, as below; the cluster client follows MOVED and ASK
            // and finds a promoted replica by itself.
            let client = redis::cluster::ClusterClient::builder(urls)
                .connection_timeout(std::time::Duration::from_secs(5))
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(4)
                .build()
                .map_err(redis_error)?;
            Conn::Cluster(client.get_async_connection().await.map_err(redis_error)?)
        } else {
            let client = redis::Client::open(config.url.as_str()).map_err(redis_error)?;
            // Bounded waits: a hung Redis fails the cycle (which is retried) instead of
            // stalling the pipeline; reconnects happen behind the manager.
            let manager = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(std::time::Duration::from_secs(2));
            Conn::Single(
                ConnectionManager::new_with_config(client, manager)
                    .await
                    .map_err(redis_error)?,
            )
        };
        Ok(Self {
            url: config.url.clone(),
            prefix: config.key_prefix.clone(),
            retention_secs: config.bucket_retention_secs,
            group: group.to_owned(),
            owns_ratio: config.success_ratio_group == group,
            script: redis::Script::new(FENCED_ADD),
            ratio_script: redis::Script::new(RATIO_VIEW),
            forced: Arc::default(),
            conn,
        })
    }

    /// `<prefix>:{<prefix>:<group>}`: the start of every key of the group.
    fn tag(&self) -> String {
        format!(
            "{}:{{{}:{}}}",
            self.prefix,
            self.prefix,
            key_group(&self.group)
        )
    }

    fn counts_key(&self, scenario: &str) -> String {
        format!("{}:s:{scenario}:counts", self.tag())
    }

    fn minute_key(&self, scenario: &str, minute: i64) -> String {
        format!("{}:s:{scenario}:minute:{minute}", self.tag())
    }

    fn fence_key(&self) -> String {
        format!("{}:fence", self.tag())
    }

    fn gaps_key(&self) -> String {
        format!("{}:gaps", self.tag())
    }

    fn redis_error(&self, source: redis::RedisError) -> CountersError {
        CountersError::Redis {
            url: self.url.clone(),
            source,
        }
    }

    /// Runs `invocation` (redis-rs loads the script again itself when the server
    /// has forgotten it: restarted, flushed, failed over).
    async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CountersError> {
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))
    }

    /// Applies a batch's counts exactly once, then refreshes the scenarios'
    /// success-ratio JSON as of `now`. Safe to call again with the same or an
    /// overlapping batch (after a failure, a crash or a rebalance): what was applied
    /// before is not counted again.
    pub async fn apply(
        &self,
        tally: &BatchTally,
        now: DateTime<Utc>,
    ) -> Result<Vec<Applied>, CountersError> {
        let Some(last) = tally.last() else {
            return Ok(Vec::new());
        };
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.fence_key())
            .arg(format!("{}|{}", tally.topic, tally.partition))
            .arg(tally.counted_through)
            .arg(last)
            .arg(tally.fence_value(last))
            .arg(self.retention_secs)
            .arg(now.timestamp_millis())
            .arg(tally.scenarios.len());
        for ((scenario, _), events) in &tally.scenarios {
            invocation.key(self.counts_key(scenario));
            for minute in &events.minutes {
                invocation.key(self.minute_key(scenario, *minute));
            }
            invocation
                .arg(format!("v:{}:", events.plugin))
                .arg(events.minutes.len())
                .arg(events.first_offset)
                .arg(&events.tokens);
        }
        let reply: Vec<redis::Value> = self.run_script(&invocation).await?;
        let int = |value: Option<&redis::Value>| -> Result<u64, CountersError> {
            match value {
                Some(redis::Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
                other => Err(self.redis_error(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "unexpected reply of the counters script",
                    format!("{other:?}"),
                )))),
            }
        };
        if int(reply.first())? == 0 {
            let stored = match reply.get(1) {
                Some(redis::Value::BulkString(bytes)) => {
                    String::from_utf8_lossy(bytes).into_owned()
                }
                _ => String::new(),
            };
            let (counted_through, journal) = parse_fence(&stored);
            return Err(CountersError::Behind(Behind {
                topic: tally.topic.clone(),
                partition: tally.partition,
                counted_through,
                journal,
                expected: tally.counted_through,
            }));
        }
        let mut applied = Vec::with_capacity(tally.scenarios.len());
        for (i, (scenario, _)) in tally.scenarios.keys().enumerate() {
            let at = |k: usize| int(reply.get(1 + i * 5 + k));
            let totals = Totals {
                total: at(1)?,
                matched: at(2)?,
                errors: at(3)?,
                dropped: at(4)?,
            };
            applied.push(Applied {
                scenario: scenario.clone(),
                newly_counted: at(0)?,
                totals,
            });
        }
        let applied = merge_applied(applied);
        if self.owns_ratio {
            for done in &applied {
                self.write_view(&done.scenario, done.totals, now).await?;
            }
        }
        Ok(applied)
    }

    /// Writes a scenario's success-ratio view unless a newer one is stored (after
    /// a gap, once whatever is stored: the counts fell below it for good).
    async fn write_view(
        &self,
        scenario: &str,
        totals: Totals,
        now: DateTime<Utc>,
    ) -> Result<(), CountersError> {
        let force = self
            .forced
            .lock()
            .expect("forced lock")
            .as_ref()
            .is_some_and(|done| !done.contains(scenario));
        let view = serde_json::to_string(&SuccessRatio::new(totals, now))
            .expect("the success-ratio view always serialises");
        let mut invocation = self.ratio_script.prepare_invoke();
        invocation
            .key(success_ratio_key(scenario))
            .arg(view)
            .arg(totals.total)
            .arg(if force { "force" } else { "" });
        self.run_script::<i64>(&invocation).await?;
        if force && let Some(done) = self.forced.lock().expect("forced lock").as_mut() {
            // Only once it was written: a failed write is forced again next time.
            done.insert(scenario.to_owned());
        }
        Ok(())
    }

    /// Notes that offsets `from..until` of a partition are not counted and cannot be.
    async fn note_gap(
        &self,
        topic: &str,
        partition: i32,
        (from, until): (i64, i64),
        now: DateTime<Utc>,
    ) -> Result<(), CountersError> {
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.gaps_key())
            .arg(format!("{topic}|{partition}|{from}|{until}"))
            .arg(now.timestamp_millis())
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        *self.forced.lock().expect("forced lock") = Some(HashSet::new());
        Ok(())
    }

    async fn fences(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<(i64, Option<(i32, i64)>)>, CountersError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let fields: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}|{p}")).collect();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.fence_key())
            .arg(&fields)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(values
            .iter()
            .map(|v| parse_fence(v.as_deref().unwrap_or("")))
            .collect())
    }

    async fn gaps(&self) -> Result<Vec<Gap>, CountersError> {
        let mut conn = self.conn.clone();
        let fields: BTreeMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.gaps_key())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(fields
            .into_iter()
            .filter_map(|(field, noted_ms)| gap_of(&field, noted_ms))
            .collect())
    }

    /// The counts under `prefix` (`""` overall, `v:<plugin>:` per version).
    async fn totals(&self, scenario: &str, prefix: &str) -> Result<Totals, CountersError> {
        let mut conn = self.conn.clone();
        let fields: Vec<String> = ["total", "matched", "errors", "dropped"]
            .iter()
            .map(|f| format!("{prefix}{f}"))
            .collect();
        let values: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.counts_key(scenario))
            .arg(&fields)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let get = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
        Ok(Totals {
            total: get(0),
            matched: get(1),
            errors: get(2),
            dropped: get(3),
        })
    }

    async fn fields(&self, scenario: &str) -> Result<BTreeMap<String, u64>, CountersError> {
        let mut conn = self.conn.clone();
        redis::cmd("HGETALL")
            .arg(self.counts_key(scenario))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))
    }

    async fn counting_since(&self, scenario: &str) -> Result<Option<i64>, CountersError> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(self.counts_key(scenario))
            .arg("since")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))
    }

    /// The minute buckets of `scenario` whose start lies in `[from_ms, to_ms)`, oldest
    /// first; minutes without events are left out. At most `max_minutes` minutes are read.
    pub async fn minutes(
        &self,
        scenario: &str,
        from_ms: i64,
        to_ms: i64,
        max_minutes: usize,
    ) -> Result<Vec<MinuteCounts>, CountersError> {
        let minutes = minute_range(from_ms, to_ms, max_minutes);
        if minutes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for minute in &minutes {
            pipe.cmd("HMGET")
                .arg(self.minute_key(scenario, *minute))
                .arg(&["total", "success", "errors"]);
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(Option<u64>, Option<u64>, Option<u64>)> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(minutes
            .into_iter()
            .zip(rows)
            .filter_map(|(minute, (total, success, errors))| {
                total.map(|total| MinuteCounts {
                    minute_ms: minute * 60_000,
                    total,
                    success: success.unwrap_or(0),
                    errors: errors.unwrap_or(0),
                })
            })
            .collect())
    }
}

/// A gap out of its field in the gaps hash, `<topic>|<partition>|<from>|<until>`.
fn gap_of(field: &str, noted_ms: i64) -> Option<Gap> {
    let mut parts = field.rsplitn(4, '|');
    let until = parts.next()?.parse().ok()?;
    let from = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    Some(Gap {
        topic,
        partition,
        from,
        until,
        noted_ms,
    })
}

/// The key dashboards read a scenario's success-ratio JSON from.
pub fn success_ratio_key(scenario: &str) -> String {
    format!("scenario:{scenario}:success_ratio")
}

/// The counters of every scenario: in Redis, or in this process for the embedded
/// defaults (same fences and results, gone when the process ends).
#[derive(Debug, Clone)]
pub struct Counters {
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Redis(RedisCounters),
    Memory(memory::MemoryCounters),
}

impl Counters {
    /// Connects to Redis. `group` is the Kafka consumer group whose offsets the
    /// fences follow: two groups reading the same topic count independently.
    pub async fn connect(config: &CountersConfig, group: &str) -> Result<Self, CountersError> {
        Ok(Self {
            store: Store::Redis(RedisCounters::connect(config, group).await?),
        })
    }

    /// Counters kept in this process, for a first run without Redis (one
    /// consumer group's: the process's).
    pub fn in_memory(bucket_retention_secs: u64) -> Self {
        Self {
            store: Store::Memory(memory::MemoryCounters::new(bucket_retention_secs)),
        }
    }

    /// Where the counters live, for logs: a Redis URL or `memory`.
    pub fn location(&self) -> String {
        match &self.store {
            Store::Redis(redis) => redis.url.clone(),
            Store::Memory(_) => "memory".into(),
        }
    }

    /// Applies a batch's counts exactly once, then refreshes the scenarios'
    /// success-ratio view as of `now`. Safe to call again with the same or an
    /// overlapping batch (after a failure, a crash or a rebalance): what was applied
    /// before is not counted again.
    pub async fn apply(
        &self,
        tally: &BatchTally,
        now: DateTime<Utc>,
    ) -> Result<Vec<Applied>, CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.apply(tally, now).await,
            Store::Memory(memory) => memory.apply(tally, now),
        }
    }

    /// A scenario's cumulative counts (zero when it has none yet).
    pub async fn totals(&self, scenario: &str) -> Result<Totals, CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.totals(scenario, "").await,
            Store::Memory(memory) => Ok(memory.totals(scenario, "")),
        }
    }

    /// A scenario's counts per plugin version (`name@version` → counts).
    pub async fn by_version(
        &self,
        scenario: &str,
    ) -> Result<BTreeMap<String, Totals>, CountersError> {
        let fields = match &self.store {
            Store::Redis(redis) => redis.fields(scenario).await?,
            Store::Memory(memory) => memory.fields(scenario),
        };
        Ok(versions_of(&fields))
    }

    /// When the store began counting `scenario` (unix milliseconds), `None` before its
    /// first event. A Redis restarted without persistence starts again from empty:
    /// this moves to the time counting resumed, and the counts start from there.
    pub async fn counting_since(&self, scenario: &str) -> Result<Option<i64>, CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.counting_since(scenario).await,
            Store::Memory(memory) => Ok(memory.since(scenario)),
        }
    }

    /// Notes that offsets `from..until` of `topic`/`partition` were lost by the
    /// store and cannot be recounted: the stats API lists them ([`Counters::gaps`]).
    pub async fn note_gap(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        until: i64,
        now: DateTime<Utc>,
    ) -> Result<(), CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.note_gap(topic, partition, (from, until), now).await,
            Store::Memory(memory) => {
                memory.note_gap(topic, partition, (from, until), now);
                Ok(())
            }
        }
    }

    /// The stored fence of each partition (-1: none) and where the journal holds
    /// the batch that ended there, when known.
    pub async fn fences(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<(i64, Option<(i32, i64)>)>, CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.fences(partitions).await,
            Store::Memory(memory) => Ok(memory.fences(partitions)),
        }
    }

    /// The ranges of source offsets whose events the counts miss, as noted by
    /// [`Counters::note_gap`].
    pub async fn gaps(&self) -> Result<Vec<Gap>, CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.gaps().await,
            Store::Memory(memory) => Ok(memory.gaps()),
        }
    }

    /// A scenario's counts for one plugin version (`name@version`).
    pub async fn version_totals(
        &self,
        scenario: &str,
        plugin: &str,
    ) -> Result<Totals, CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.totals(scenario, &format!("v:{plugin}:")).await,
            Store::Memory(memory) => Ok(memory.totals(scenario, &format!("v:{plugin}:"))),
        }
    }

    /// The minute buckets of `scenario` whose start lies in `[from_ms, to_ms)`, oldest
    /// first; minutes without events are left out. At most `max_minutes` minutes are read.
    pub async fn minutes(
        &self,
        scenario: &str,
        from_ms: i64,
        to_ms: i64,
        max_minutes: usize,
    ) -> Result<Vec<MinuteCounts>, CountersError> {
        match &self.store {
            Store::Redis(redis) => redis.minutes(scenario, from_ms, to_ms, max_minutes).await,
            Store::Memory(memory) => Ok(memory.minutes(scenario, from_ms, to_ms, max_minutes)),
        }
    }
}

/// Per-version counts out of a counts hash's `v:<plugin>:<field>` fields.
fn versions_of(fields: &BTreeMap<String, u64>) -> BTreeMap<String, Totals> {
    let mut versions: BTreeMap<String, Totals> = BTreeMap::new();
    for (field, n) in fields {
        let Some((plugin, which)) = field
            .strip_prefix("v:")
            .and_then(|rest| rest.rsplit_once(':'))
        else {
            continue;
        };
        let totals = versions.entry(plugin.to_owned()).or_insert(Totals {
            total: 0,
            matched: 0,
            errors: 0,
            dropped: 0,
        });
        match which {
            "total" => totals.total = *n,
            "matched" => totals.matched = *n,
            "errors" => totals.errors = *n,
            "dropped" => totals.dropped = *n,
            _ => {}
        }
    }
    versions
}

/// The whole minutes whose start lies in `[from_ms, to_ms)`, at most `max`.
fn minute_range(from_ms: i64, to_ms: i64, max: usize) -> Vec<i64> {
    let first = from_ms.div_euclid(60_000) + i64::from(from_ms.rem_euclid(60_000) != 0);
    let end = to_ms.div_euclid(60_000) + i64::from(to_ms.rem_euclid(60_000) != 0);
    (first..end).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn tokens_carry_offset_deltas_codes_and_buckets() {
        let mut tally = BatchTally::new("events", 2);
        let minute = 28_000_000 * 60_000;
        tally
            .record("5", "scenario@1", 100, minute + 5, Tallied::Emitted, true)
            .unwrap();
        tally
            .record(
                "5",
                "scenario@1",
                101,
                minute + 59_999,
                Tallied::Emitted,
                false,
            )
            .unwrap();
        tally
            .record(
                "5",
                "scenario@1",
                104,
                minute + 60_000,
                Tallied::Failed,
                false,
            )
            .unwrap();
        tally
            .record("5", "scenario@1", 105, minute + 1, Tallied::Dropped, true)
            .unwrap();
        let events = &tally.scenarios[&("5".to_owned(), "scenario@1".to_owned())];
        assert_eq!(events.tokens, "0E1 1e1 3f2 1D1");
        assert_eq!(events.minutes, vec![28_000_000, 28_000_001]);
        assert_eq!(
            (events.first_offset, events.last_offset, events.events),
            (100, 105, 4)
        );
    }

    #[test]
    fn out_of_order_offsets_are_refused_and_versions_kept_apart() {
        let mut tally = BatchTally::new("events", 0);
        tally
            .record("5", "scenario@1", 10, 0, Tallied::Emitted, true)
            .unwrap();
        let err = tally
            .record("5", "scenario@1", 10, 0, Tallied::Emitted, true)
            .unwrap_err();
        assert!(err.to_string().contains("increasing offset order"), "{err}");
        // A canary's events interleave with the plugin's: each version's
        // events are in order on their own, and counted under their version.
        tally
            .record("5", "scenario@2", 9, 0, Tallied::Failed, false)
            .unwrap();
        tally
            .record("5", "scenario@1", 12, 0, Tallied::Emitted, true)
            .unwrap();
        let versions: Vec<(&str, &str, &str)> = tally
            .scenarios
            .iter()
            .map(|((s, p), e)| (s.as_str(), p.as_str(), e.tokens.as_str()))
            .collect();
        assert_eq!(
            versions,
            [("5", "scenario@1", "0E1 2E1"), ("5", "scenario@2", "0f1")]
        );
        // Another scenario may start at any offset.
        tally
            .record("6", "scenario@2", 3, 0, Tallied::Emitted, true)
            .unwrap();
    }

    #[test]
    fn success_ratio_json_has_the_dashboard_shape() {
        let now = Utc.with_ymd_and_hms(2025, 6, 18, 12, 50, 10).unwrap();
        let totals = Totals {
            total: 100,
            matched: 85,
            errors: 0,
            dropped: 0,
        };
        let json = serde_json::to_string(&SuccessRatio::new(totals, now)).unwrap();
        assert_eq!(
            json,
            r#"{"success_ratio":0.85,"total_count":100,"success_count":85,"updated_at":"2025-06-18 12:50:10"}"#
        );
        let third = SuccessRatio::new(
            Totals {
                total: 3,
                matched: 1,
                errors: 0,
                dropped: 0,
            },
            now,
        );
        assert_eq!(third.success_ratio, 0.3333);
        let none = SuccessRatio::new(
            Totals {
                total: 0,
                matched: 0,
                errors: 0,
                dropped: 0,
            },
            now,
        );
        assert_eq!(none.success_ratio, 0.0);
    }
}
