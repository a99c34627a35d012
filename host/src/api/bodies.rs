//! The bodies the API sends and takes, as types: each handler serializes one of
//! these, and `openapi.rs` derives the document's schemas from the same types
//! (`utoipa`), so a field added here is in the document by construction. The
//! registry's own types (plugins, scenarios, members) derive their schemas
//! where they are defined.
//!
//! Closed objects (`deny_unknown_fields`) become `additionalProperties: false`
//! in the document: the API tests check every answer against it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pipeline::RecentDeadLetter;
use crate::registry::{PluginSummary, Scenario};

/// `GET /readyz`, `GET /livez` (and `GET /healthz`, the same as `/readyz`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `/readyz`: `ready` or `not_ready`; `/livez`: `live` or `wedged`.
    #[schema(value_type = String, pattern = "^(ready|not_ready|live|wedged)$")]
    pub status: &'static str,
    /// Why not ready or not live, in one line; absent when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each dependency's state.
    pub dependencies: Vec<DependencyHealth>,
    /// The pipeline's state.
    pub pipeline: PipelineHealth,
}

/// One dependency in [`Health`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DependencyHealth {
    /// `registry`, `kafka`, `redis` or `archive`.
    pub name: &'static str,
    /// Where it is: a URL without credentials, brokers, or a path.
    pub target: String,
    /// `starting` (not tried yet), `up` or `down`.
    #[schema(value_type = String, pattern = "^(starting|up|down)$")]
    pub state: &'static str,
    /// Since when it is in this state (RFC 3339).
    pub since: String,
    /// Why it is down: the first error of this outage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The pipeline in [`Health`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineHealth {
    /// `starting` (waiting for its dependencies), `running`, `stopped`, or
    /// `none` (this server runs no pipeline).
    #[schema(value_type = String, pattern = "^(starting|running|stopped|none)$")]
    pub state: &'static str,
    /// The consumer has been given its partitions.
    pub assigned: bool,
    /// When its loop last turned (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_turn: Option<String>,
}

/// `GET /api/generation`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// It grows with every write to the registry.
    pub generation: i64,
}

/// `GET /api/whoami`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Whoami {
    /// `viewer` or `admin`.
    #[schema(value_type = String, pattern = "^(viewer|admin)$")]
    pub role: &'static str,
}

/// `GET /api/plugins`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginList {
    /// Every plugin with its current version.
    pub plugins: Vec<PluginSummary>,
}

/// `POST /api/plugins/{name}/rollback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The stored version to make current.
    #[schema(minimum = 1)]
    pub to: i64,
}

/// What a deletion removed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deleted {
    /// The plugin's name.
    pub deleted: String,
    /// The version deleted (a whole plugin: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Scenarios a forced deletion disabled.
    pub disabled_scenarios: Vec<String>,
}

/// `GET /api/scenarios`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioList {
    /// Every scenario.
    pub scenarios: Vec<Scenario>,
}

/// `POST /api/members`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Imported {
    /// Members written (new or replaced).
    pub imported: u64,
}

/// `GET /api/scenarios/{id}/daily`: the daily reports `weir report` wrote back
/// into the archive for the scenario.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DailyHistory {
    /// The scenario.
    pub scenario_id: String,
    /// Where the reports were read: `{archive root}/reports/daily/scenario_id=…`.
    pub source: String,
    /// One entry per day reported, oldest first (at most the last 400).
    pub days: Vec<DailyFigures>,
}

/// One scenario's day, as `weir report` computed it from the archive.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DailyFigures {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Events the scenario's plugin answered.
    pub events: u64,
    /// Those it said matched.
    pub matched: u64,
    /// `matched / events`, to 4 decimals.
    pub success_ratio: f64,
    /// Events that failed and went to the dead-letter topic.
    pub dead_letters: u64,
}

/// `GET /api/scenarios/{id}/stats`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioStats {
    /// The scenario.
    pub scenario_id: String,
    /// When the counters started counting it (a Redis restarted without
    /// persistence starts again), RFC 3339.
    #[schema(format = DateTime)]
    pub counting_since: Option<String>,
    /// Ranges of source offsets whose events the counts miss: Redis lost them
    /// and the journal no longer held them (for every scenario of the group).
    pub uncounted: Vec<Uncounted>,
    /// Events routed to it.
    pub total: u64,
    /// Events its plugin said matched.
    pub matched: u64,
    /// Events that failed (dead-lettered).
    pub errors: u64,
    /// Events that produced no output.
    pub dropped: u64,
    /// `matched / total`, four decimals (0 without events).
    pub success_ratio: f64,
    /// Set while the scenario is set aside for its plugin's failures.
    pub quarantined: Option<QuarantinedScenario>,
    /// What its shadow candidate did beside its plugin on this replica, when
    /// it has one (`"shadow": "name@N"`).
    pub shadow: Option<ShadowSummary>,
    /// What its canary and its plugin did on this replica, when it has one
    /// (`"canary": {…}`); the counts per version below are every replica's.
    pub canary: Option<CanarySummary>,
    /// The same counts per plugin version.
    pub versions: Vec<VersionCounts>,
    /// Start of the window, RFC 3339.
    #[schema(format = DateTime)]
    pub from: String,
    /// End of the window (exclusive), RFC 3339.
    #[schema(format = DateTime)]
    pub to: String,
    /// The window's minute buckets that have events.
    pub minutes: Vec<MinuteCounts>,
}

/// Offsets the counts miss.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Uncounted {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First offset missed.
    pub from_offset: i64,
    /// Offset after the last one missed.
    pub until_offset: i64,
    /// When it was noted, RFC 3339.
    #[schema(format = DateTime)]
    pub noted_at: String,
}

/// Counts of one plugin version.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionCounts {
    /// `name@version`.
    pub plugin: String,
    /// Events.
    pub total: u64,
    /// Matched.
    pub matched: u64,
    /// Failed.
    pub errors: u64,
    /// Without output.
    pub dropped: u64,
}

/// One minute's counts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MinuteCounts {
    /// The minute, RFC 3339.
    #[schema(format = DateTime)]
    pub minute: String,
    /// Events.
    pub total: u64,
    /// Matched (the success count).
    pub success: u64,
    /// Failed.
    pub errors: u64,
    /// `success / total`, four decimals.
    pub success_ratio: f64,
}

/// `GET /api/pipeline`: what the dashboard's health panel and `weir status`
/// show.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineStatus {
    /// Events committed.
    pub events_total: u64,
    /// Outputs committed.
    pub outputs_total: u64,
    /// Dead letters committed.
    pub dead_letters_total: u64,
    /// Cycles committed.
    pub cycles_total: u64,
    /// Cycles that failed and were retried.
    pub failed_cycles_total: u64,
    /// Events committed per second over about 15 s.
    pub events_per_second: f64,
    /// The registry generation in use.
    pub generation: u64,
    /// Each assigned partition's lag.
    pub lag: Vec<Lag>,
    /// Sinks failing now.
    pub failing_sinks: Vec<FailingSink>,
    /// Scenarios set aside now.
    pub quarantined: Vec<QuarantinedScenario>,
    /// Dead letters by reason.
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// The latest dead letters, newest first.
    pub recent_dead_letters: Vec<RecentDeadLetter>,
    /// Alert rules firing now.
    pub alerts_firing: Vec<AlertFiring>,
}

/// A partition's lag.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records not consumed yet.
    pub lag: i64,
}

/// A sink that keeps failing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailingSink {
    /// `counters` or `archive`.
    pub sink: String,
    /// Since when, RFC 3339.
    #[schema(format = DateTime)]
    pub since: String,
    /// For how long, in seconds.
    pub seconds: i64,
    /// Its last error (at most 300 bytes).
    pub error: String,
}

/// A scenario set aside for its plugin's failures.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantinedScenario {
    /// The scenario.
    pub scenario: String,
    /// `name@version` of its plugin.
    pub plugin: String,
    /// Why (at most 300 bytes).
    pub reason: String,
    /// Until when, RFC 3339.
    #[schema(format = DateTime)]
    pub until: String,
}

impl QuarantinedScenario {
    /// How the API shows `scenario`'s quarantine.
    pub fn new(scenario: String, q: &crate::pipeline::Quarantine) -> Self {
        Self {
            scenario,
            plugin: q.plugin.clone(),
            reason: crate::pipeline::cut(&q.reason, crate::pipeline::ERROR_BYTES).to_owned(),
            until: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(q.until_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        }
    }
}

/// A scenario's shadow run: its candidate's answers against its plugin's.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSummary {
    /// The scenario's plugin, `name@version`.
    pub current: String,
    /// The candidate, `name@version`.
    pub candidate: String,
    /// Since when these figures are kept (the candidate or the plugin last
    /// changed), RFC 3339.
    #[schema(format = DateTime)]
    pub since: String,
    /// Events both ran.
    pub events: u64,
    /// Events both answered alike: status, match and records.
    pub agree: u64,
    /// Events answered differently.
    pub differ: u64,
    /// `agree / events`, four decimals (1 without events).
    pub agreement: f64,
    /// Events the candidate failed.
    pub candidate_failed: u64,
    /// Events the scenario's plugin failed.
    pub current_failed: u64,
    /// The scenario's plugin's time per event, nanoseconds.
    pub current_ns_per_event: u64,
    /// The candidate's time per event, nanoseconds.
    pub candidate_ns_per_event: u64,
    /// Why the candidate did not run on the last batch, when it did not.
    pub error: Option<String>,
    /// The latest events answered differently, oldest first.
    pub samples: Vec<ShadowDifference>,
}

/// A scenario's canary: the candidate's share of the events against the
/// plugin's, as this replica saw them since either last changed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanarySummary {
    /// The scenario's plugin, `name@version`.
    pub current: String,
    /// The candidate, `name@version`.
    pub candidate: String,
    /// The candidate's share of the events, a fraction.
    pub share: f64,
    /// Since when these figures are kept, RFC 3339.
    #[schema(format = DateTime)]
    pub since: String,
    /// Events the plugin handled.
    pub current_events: u64,
    /// Of those, how many it failed.
    pub current_failed: u64,
    /// Events the candidate handled.
    pub candidate_events: u64,
    /// Of those, how many it failed.
    pub candidate_failed: u64,
    /// `current_failed / current_events`, four decimals.
    pub current_failure_rate: f64,
    /// `candidate_failed / candidate_events`, four decimals.
    pub candidate_failure_rate: f64,
    /// The plugin's time per event, nanoseconds.
    pub current_ns_per_event: u64,
    /// The candidate's time per event, nanoseconds.
    pub candidate_ns_per_event: u64,
    /// `rolled_back` or `promoted`, once decided.
    pub verdict: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Why the candidate takes no events, when it could not load.
    pub error: Option<String>,
}

impl CanarySummary {
    /// How the API shows `stats`.
    pub fn new(stats: &crate::pipeline::canary::CanaryStats) -> Self {
        use crate::pipeline::canary::Verdict;
        let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
        let (candidate_rate, current_rate) = stats.rates();
        let (verdict, reason) = match &stats.verdict {
            None => (None, None),
            Some(Verdict::RolledBack(why)) => (Some("rolled_back"), Some(why.clone())),
            Some(Verdict::Promoted(why)) => (Some("promoted"), Some(why.clone())),
        };
        Self {
            current: stats.current.clone(),
            candidate: stats.candidate.clone(),
            share: f64::from(stats.share_bp) / 10_000.0,
            since: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(stats.since_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            current_events: stats.current_events,
            current_failed: stats.current_failed,
            candidate_events: stats.candidate_events,
            candidate_failed: stats.candidate_failed,
            current_failure_rate: round(current_rate),
            candidate_failure_rate: round(candidate_rate),
            current_ns_per_event: stats
                .current_ns
                .checked_div(stats.current_events)
                .unwrap_or(0),
            candidate_ns_per_event: stats
                .candidate_ns
                .checked_div(stats.candidate_events)
                .unwrap_or(0),
            verdict: verdict.map(str::to_owned),
            reason,
            error: stats.error.clone(),
        }
    }
}

/// One event the candidate answered differently.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowDifference {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The plugin's answer: status, matched, records, error.
    #[schema(value_type = Object)]
    pub current: serde_json::Value,
    /// The candidate's answer.
    #[schema(value_type = Object)]
    pub candidate: serde_json::Value,
}

impl ShadowSummary {
    /// How the API shows `stats`.
    pub fn new(stats: &crate::pipeline::shadow::ShadowStats) -> Self {
        let per_event = |ns: u64| ns.checked_div(stats.events).unwrap_or(0);
        Self {
            current: stats.current.clone(),
            candidate: stats.candidate.clone(),
            since: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(stats.since_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            events: stats.events,
            agree: stats.agree,
            differ: stats.differ,
            agreement: if stats.events == 0 {
                1.0
            } else {
                (stats.agree as f64 / stats.events as f64 * 10_000.0).round() / 10_000.0
            },
            candidate_failed: stats.candidate_failed,
            current_failed: stats.current_failed,
            current_ns_per_event: per_event(stats.current_ns),
            candidate_ns_per_event: per_event(stats.candidate_ns),
            error: stats.error.clone(),
            samples: stats
                .samples
                .iter()
                .map(|s| ShadowDifference {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    offset: s.offset,
                    current: s.current.clone(),
                    candidate: s.candidate.clone(),
                })
                .collect(),
        }
    }
}

/// An alert rule firing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertFiring {
    /// The rule's name.
    pub rule: String,
    /// What it saw last.
    pub summary: String,
    /// Since when, RFC 3339.
    #[schema(format = DateTime)]
    pub since: String,
}

/// A scenario as users write it (`POST`/`PUT /api/scenarios`). weir reads
/// these fields; every other field (`log_format`, `filters`,
/// `logical_operator`, …) is the plugin's configuration, checked against the
/// plugin's config schema.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScenarioDocument {
    /// The scenario's id.
    pub scenario_id: ScenarioId,
    /// A title for people.
    #[schema(required = false)]
    pub title: Option<String>,
    /// Who manages it.
    #[schema(required = false)]
    pub manager: Option<String>,
    /// `name` or `name@version` (default `scenario`).
    #[schema(required = false)]
    pub plugin: Option<String>,
    /// Topics bound to it (events without `scenario_id` go to every scenario
    /// bound to their topic).
    #[schema(required = false)]
    pub source: Option<Vec<String>>,
    /// Where its outputs go (default `weir.out.<scenario_id>`).
    #[schema(required = false)]
    pub output_topic: Option<String>,
    /// Member attributes merged into each event, looked up by this field.
    #[schema(required = false)]
    pub enrich: Option<Enrich>,
    /// Whether the pipeline runs it (default true).
    #[schema(required = false)]
    pub enabled: Option<bool>,
    /// A candidate, `name@N`, run beside the plugin on the same events and
    /// compared, never produced; `POST /api/scenarios/{id}/promote` makes it
    /// the plugin.
    #[schema(required = false, pattern = "^[a-z][a-z0-9-]*@[0-9]+$")]
    pub shadow: Option<String>,
}

/// A scenario id: a string or an integer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ScenarioId {
    /// `"5"`, `"buyers"`.
    Text(String),
    /// `5`.
    Number(i64),
}

/// `enrich` of a scenario document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Enrich {
    /// The event field holding the member id.
    pub by: String,
}
