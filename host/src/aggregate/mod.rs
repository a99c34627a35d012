//! Exactly-once per-scenario counters in Redis.
//!
//! The pipeline tallies each partition batch as it comes back from the plugins (a
//! [`BatchTally`]: per scenario, which offsets were emitted, dropped or failed and
//! whether each matched) and hands it to [`Counters::apply`] before it commits the
//! batch's Kafka offsets. `apply` sends one Lua script call per scenario, all in one
//! pipelined round trip; each call adds the scenario's counts, its per-plugin-version
//! counts and its per-minute buckets, and moves a fence, atomically.
//!
//! # Exactly once
//!
//! The fence is the last offset applied per (consumer group, topic, partition), kept
//! per scenario. The script counts only events above it, so a batch replayed after a
//! crash or a rebalance, with the same or with other batch boundaries, is never
//! counted twice, and a batch that was not applied is applied on replay. Offsets are
//! committed to Kafka only after `apply` returned, so nothing is skipped either.
//!
//! # Keys
//!
//! Every key of a scenario carries the same hash tag, `{<prefix>:<scenario id>}`, so
//! the script's keys share one slot and the script runs unchanged on Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `weir:{weir:5}:counts` | hash | `total`, `matched`, `errors`, `dropped`, and `v:<plugin>@<version>:<field>` |
//! | `weir:{weir:5}:fence` | hash | `<group>\|<topic>\|<partition>` → last applied offset |
//! | `weir:{weir:5}:minute:<unix minute>` | hash | `total`, `success`, `errors`; expires after the retention |
//! | `scenario:5:success_ratio` | string | the JSON dashboards read (below) |
//!
//! `scenario:<id>:success_ratio` keeps the name and format that existing dashboards
//! read: `{"success_ratio": 0.85, "total_count": 100, "success_count": 85,
//! "updated_at": "2025-06-18 12:50:10"}` (ratio rounded to 4 decimals, cumulative
//! counts, UTC time). It is a view derived from the exact counters and rewritten
//! after every applied batch; it has no hash tag, so on Redis Cluster it may live on
//! another node, which is why it is written after the script rather than by it.
//!
//! # Redis down, or restarted
//!
//! When Redis is unreachable or slow (bounded by a 10 s response timeout),
//! `apply` fails, the pipeline aborts the cycle, pauses consumption and retries with
//! backoff; nothing is committed meanwhile, so when Redis is back every event is
//! counted once. A Redis with persistence (AOF, `appendfsync always` for no loss at
//! all) restarted keeps every count exact. A Redis restarted *without* persistence
//! comes back empty, fences included: weir does not guess what was lost, it counts
//! every event handled from then on exactly once and marks the fresh start in the
//! `since` field of the counts hash ([`Counters::counting_since`]), so a dashboard
//! can show "counting since". The full history stays in the Parquet archive.
//!
//! Minute buckets are placed by the event's time (the caller's choice of timestamp,
//! see [`BatchTally::record`]), so a replay lands in the same buckets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

mod memory;
mod sink;

pub use sink::{CountersSink, tally};

/// The script that applies one scenario's share of a batch; see the file for its contract.
const FENCED_ADD: &str = include_str!("fenced_add.lua");

/// Longest wait for one Redis reply; a slower Redis fails the cycle, which is retried.
pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the counters live and how long minute buckets are kept.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CountersConfig {
    /// Redis URL, `redis://host:port/db`.
    pub url: String,
    /// First part of every key weir writes (the dashboards' `scenario:<id>:success_ratio`
    /// key keeps its fixed name).
    pub key_prefix: String,
    /// How long per-minute buckets are kept, in seconds (default: 7 days).
    pub bucket_retention_secs: u64,
}

impl Default for CountersConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "weir".into(),
            bucket_retention_secs: 7 * 24 * 3600,
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
    /// The pipeline handed in events that break the batch rules.
    #[error("scenario {scenario}: {reason}")]
    Tally {
        /// The scenario whose events were out of order or mixed plugin versions.
        scenario: String,
        /// What rule was broken.
        reason: String,
    },
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
#[derive(Debug)]
pub struct BatchTally {
    topic: String,
    partition: i32,
    scenarios: BTreeMap<String, ScenarioEvents>,
}

impl BatchTally {
    /// An empty tally for a batch of `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
            scenarios: BTreeMap::new(),
        }
    }

    /// Counts one event for `scenario`, handled by `plugin` (`name@version`).
    ///
    /// `event_time_ms` places the event in its minute bucket: pass the event's own
    /// time when known, else the record timestamp, else the processing time. Events
    /// of one scenario must come in increasing offset order and from one plugin
    /// version (swaps happen between batches).
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
            .entry(scenario.to_owned())
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
        if entry.plugin != plugin {
            return Err(broken(format!(
                "one batch mixes plugin versions {} and {plugin}; swaps happen between batches",
                entry.plugin
            )));
        }
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
    script: redis::Script,
    conn: ConnectionManager,
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
        let client = redis::Client::open(config.url.as_str()).map_err(redis_error)?;
        // Bounded waits: a hung Redis fails the cycle (which is retried) instead of
        // stalling the pipeline; reconnects happen behind the manager.
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, manager)
            .await
            .map_err(redis_error)?;
        Ok(Self {
            url: config.url.clone(),
            prefix: config.key_prefix.clone(),
            retention_secs: config.bucket_retention_secs,
            group: group.to_owned(),
            script: redis::Script::new(FENCED_ADD),
            conn,
        })
    }

    fn tag(&self, scenario: &str) -> String {
        format!("{}:{{{}:{}}}", self.prefix, self.prefix, scenario)
    }

    fn counts_key(&self, scenario: &str) -> String {
        format!("{}:counts", self.tag(scenario))
    }

    fn minute_key(&self, scenario: &str, minute: i64) -> String {
        format!("{}:minute:{minute}", self.tag(scenario))
    }

    fn redis_error(&self, source: redis::RedisError) -> CountersError {
        CountersError::Redis {
            url: self.url.clone(),
            source,
        }
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
        if tally.is_empty() {
            return Ok(Vec::new());
        }
        let fence_field = format!("{}|{}|{}", self.group, tally.topic, tally.partition);
        let mut pipe = redis::pipe();
        for (scenario, events) in &tally.scenarios {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(2 + events.minutes.len());
            cmd.arg(self.counts_key(scenario))
                .arg(format!("{}:fence", self.tag(scenario)));
            for minute in &events.minutes {
                cmd.arg(self.minute_key(scenario, *minute));
            }
            cmd.arg(&fence_field)
                .arg(format!("v:{}:", events.plugin))
                .arg(self.retention_secs)
                .arg(events.first_offset)
                .arg(&events.tokens)
                .arg(now.timestamp_millis());
        }
        let mut conn = self.conn.clone();
        let replies: Vec<(u64, u64, u64, u64, u64)> = match pipe.query_async(&mut conn).await {
            Ok(replies) => replies,
            Err(err)
                if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // A restarted or flushed server has forgotten the script. Calls that ran
                // before the error moved their fences, so sending everything again is safe.
                self.script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| self.redis_error(e))?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(|e| self.redis_error(e))?
            }
            Err(err) => return Err(self.redis_error(err)),
        };

        let mut applied = Vec::with_capacity(replies.len());
        let mut views = redis::pipe();
        for ((scenario, _), (newly, total, matched, errors, dropped)) in
            tally.scenarios.iter().zip(replies)
        {
            let totals = Totals {
                total,
                matched,
                errors,
                dropped,
            };
            let view = serde_json::to_string(&SuccessRatio::new(totals, now))
                .expect("the success-ratio view always serialises");
            views.set(success_ratio_key(scenario), view).ignore();
            applied.push(Applied {
                scenario: scenario.clone(),
                newly_counted: newly,
                totals,
            });
        }
        views
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(applied)
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

    /// Counters kept in this process, for a first run without Redis.
    pub fn in_memory(group: &str, bucket_retention_secs: u64) -> Self {
        Self {
            store: Store::Memory(memory::MemoryCounters::new(group, bucket_retention_secs)),
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
            Store::Memory(memory) => Ok(memory.apply(tally, now)),
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
        let events = &tally.scenarios["5"];
        assert_eq!(events.tokens, "0E1 1e1 3f2 1D1");
        assert_eq!(events.minutes, vec![28_000_000, 28_000_001]);
        assert_eq!(
            (events.first_offset, events.last_offset, events.events),
            (100, 105, 4)
        );
    }

    #[test]
    fn out_of_order_offsets_and_mixed_versions_are_refused() {
        let mut tally = BatchTally::new("events", 0);
        tally
            .record("5", "scenario@1", 10, 0, Tallied::Emitted, true)
            .unwrap();
        let err = tally
            .record("5", "scenario@1", 10, 0, Tallied::Emitted, true)
            .unwrap_err();
        assert!(err.to_string().contains("increasing offset order"), "{err}");
        let err = tally
            .record("5", "scenario@2", 11, 0, Tallied::Emitted, true)
            .unwrap_err();
        assert!(err.to_string().contains("mixes plugin versions"), "{err}");
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
