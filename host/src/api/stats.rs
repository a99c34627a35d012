//! What the pipeline counted: a scenario's counts and minute buckets
//! (`GET /api/scenarios/{id}/stats`), and the pipeline's metrics in Prometheus'
//! text format (`GET /metrics`). Both read the running service's counters and
//! metrics; a server without a pipeline answers 503.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, AppState};

/// Longest window one stats request may ask for.
const MAX_MINUTES: usize = 7 * 24 * 60;

/// Query of the stats route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    /// Start of the window: RFC 3339 or unix milliseconds (default: an hour before `to`).
    from: Option<String>,
    /// End of the window, exclusive: RFC 3339 or unix milliseconds (default: now).
    to: Option<String>,
}

fn instant(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!(
                "{name}={text:?}: expected an RFC 3339 time (2026-11-26T09:00:00Z) or unix milliseconds"
            ),
        )
    })
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no-pipeline",
        "this server runs no pipeline, so it has no counts; ask a `weir serve` that consumes events",
    )
}

pub(super) async fn scenario(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Response, ApiError> {
    // 404 for a scenario the registry does not know, with the registry's wording.
    state.registry.scenario(&id).await?;
    let counters = state
        .pipeline
        .as_ref()
        .map(|p| &p.counters)
        .ok_or_else(unavailable)?;
    let to = match &query.to {
        Some(text) => instant("to", text)?,
        None => Utc::now().timestamp_millis(),
    };
    let from = match &query.from {
        Some(text) => instant("from", text)?,
        None => to - 3_600_000,
    };
    if from >= to || (to - from) / 60_000 > MAX_MINUTES as i64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!("from must be before to, at most {MAX_MINUTES} minutes (7 days) apart"),
        ));
    }
    let internal = |e: crate::aggregate::CountersError| ApiError::internal(&e);
    let totals = counters.totals(&id).await.map_err(internal)?;
    let since = counters.counting_since(&id).await.map_err(internal)?;
    let versions = counters.by_version(&id).await.map_err(internal)?;
    let gaps = counters.gaps().await.map_err(internal)?;
    let minutes = counters
        .minutes(&id, from, to, MAX_MINUTES)
        .await
        .map_err(internal)?;
    let quarantined = state.pipeline.as_ref().and_then(|p| {
        let quarantined = p.metrics.quarantined.lock().ok()?;
        quarantined
            .get(&id)
            .map(|q| json!({"plugin": q.plugin, "reason": q.reason, "until": rfc3339(q.until_ms)}))
    });
    let ratio = |matched: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            (matched as f64 / total as f64 * 10_000.0).round() / 10_000.0
        }
    };
    Ok(Json(json!({
        "scenario_id": id,
        "counting_since": since.map(rfc3339),
        // Ranges of source offsets the counts miss: Redis lost them and the
        // journal no longer held them (they hold for every scenario of the group).
        "uncounted": gaps.iter().map(|g| json!({
            "topic": g.topic, "partition": g.partition, "from_offset": g.from,
            "until_offset": g.until, "noted_at": rfc3339(g.noted_ms),
        })).collect::<Vec<_>>(),
        "total": totals.total,
        "matched": totals.matched,
        "errors": totals.errors,
        "dropped": totals.dropped,
        "success_ratio": ratio(totals.matched, totals.total),
        "quarantined": quarantined,
        "versions": versions.iter().map(|(plugin, t)| json!({
            "plugin": plugin, "total": t.total, "matched": t.matched, "errors": t.errors, "dropped": t.dropped,
        })).collect::<Vec<_>>(),
        "from": rfc3339(from),
        "to": rfc3339(to),
        "minutes": minutes.iter().map(|m| json!({
            "minute": rfc3339(m.minute_ms), "total": m.total, "success": m.success, "errors": m.errors,
            "success_ratio": ratio(m.success, m.total),
        })).collect::<Vec<_>>(),
    }))
    .into_response())
}

pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let pipeline = state.pipeline.as_ref().ok_or_else(unavailable)?;
    let m = &pipeline.metrics;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "weir_events_total",
        "Events consumed and committed.",
        m.events.load(Ordering::Relaxed),
    );
    counter(
        "weir_outputs_total",
        "Output records committed.",
        m.outputs.load(Ordering::Relaxed),
    );
    counter(
        "weir_cycles_total",
        "Batch cycles committed.",
        m.cycles.load(Ordering::Relaxed),
    );
    counter(
        "weir_failed_cycles_total",
        "Batch cycles aborted and retried (Kafka, Redis or archive trouble).",
        m.failed_cycles.load(Ordering::Relaxed),
    );
    counter(
        "weir_replayed_events_total",
        "Events whose results were read back from the journal for the sinks only (outputs produced before a restart or rebalance).",
        m.replayed.load(Ordering::Relaxed),
    );
    counter(
        "weir_replay_missing_events_total",
        "Events a replay needed whose results the journal no longer had; the sinks miss them (a log line names each range).",
        m.replay_missing.load(Ordering::Relaxed),
    );
    counter(
        "weir_recounted_events_total",
        "Events whose results were read back from the journal for a sink that had lost them (Redis rolled back).",
        m.recounted.load(Ordering::Relaxed),
    );
    counter(
        "weir_sink_failures_total",
        "Times a sink did not take committed results, which were handed to it again.",
        m.sink_failures.load(Ordering::Relaxed),
    );
    counter(
        "weir_unproducible_dead_letters_total",
        "Dead letters the producer refused even cut down; a marker without the value took their place.",
        m.unproducible_dead_letters.load(Ordering::Relaxed),
    );
    counter(
        "weir_revoked_partitions_total",
        "Partitions taken from this replica by consumer-group rebalances.",
        m.revoked_partitions.load(Ordering::Relaxed),
    );
    counter(
        "weir_revoke_commits_total",
        "Partitions whose durable offsets were committed as a rebalance took them from this replica.",
        m.revoke_commits.load(Ordering::Relaxed),
    );
    counter(
        "weir_producer_recreations_total",
        "Times the transactional producer was made again after a fatal error (fenced, or its transaction aborted by the broker).",
        m.producer_recreations.load(Ordering::Relaxed),
    );
    counter(
        "weir_quarantines_total",
        "Times a scenario was set aside because its plugin's failures were costly.",
        m.quarantines.load(Ordering::Relaxed),
    );
    for count in m.sink_counts.lock().expect("metrics lock").values() {
        counter(
            &format!("weir_{}_total", count.name),
            count.help,
            count.value,
        );
    }
    let _ = writeln!(
        out,
        "# HELP weir_dead_letters_total Events sent to the dead-letter topic, by reason.\n\
         # TYPE weir_dead_letters_total counter"
    );
    for (reason, n) in m
        .dead_letters_by_reason
        .lock()
        .expect("metrics lock")
        .iter()
    {
        let _ = writeln!(out, "weir_dead_letters_total{{reason=\"{reason}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP weir_scenario_quarantined 1 while a scenario is set aside for its plugin's failures.\n\
         # TYPE weir_scenario_quarantined gauge"
    );
    for (scenario, q) in m.quarantined.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "weir_scenario_quarantined{{scenario=\"{}\",plugin=\"{}\"}} 1",
            label(scenario),
            label(&q.plugin)
        );
    }
    let _ = writeln!(
        out,
        "# HELP weir_registry_generation Registry generation the pipeline runs.\n\
         # TYPE weir_registry_generation gauge\nweir_registry_generation {}",
        m.generation.load(Ordering::Relaxed)
    );
    if let Some(collect) = &pipeline.collect {
        collect.render(&mut out);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
