//! What the pipeline counted: a scenario's counts and minute buckets
//! (`GET /api/scenarios/{id}/stats`), and the pipeline's metrics in Prometheus'
//! text format (`GET /metrics`). Both read the running service's counters and
//! metrics; a server without a pipeline answers 503.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::bodies::{
    AlertFiring, CanarySummary, DailyFigures, DailyHistory, FailingSink, Lag, MinuteCounts,
    PipelineStatus, QuarantinedScenario, ScenarioStats, ShadowSummary, Uncounted, VersionCounts,
};

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

/// 503 when the counters' Redis cannot be reached (the pipeline waits for
/// it too), else an internal error.
fn counters_error(error: crate::aggregate::CountersError) -> ApiError {
    match &error {
        crate::aggregate::CountersError::Redis { source, .. }
            if source.is_io_error()
                || source.is_connection_refusal()
                || source.is_timeout()
                || source.is_connection_dropped() =>
        {
            tracing::warn!(%error, "the counters cannot be read");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "counters-unavailable",
                "the counters' Redis cannot be reached now; the counts are back with it \
                 (GET /readyz says when)",
            )
        }
        _ => ApiError::internal(&error),
    }
}

/// 503 without a pipeline: it is starting (waiting for what `/readyz`
/// names), or this server runs none.
fn unavailable(state: &AppState) -> ApiError {
    match super::health::waiting_for(state) {
        Some(waiting) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "pipeline-starting",
            format!("the pipeline has not started yet: {waiting} (GET /readyz)"),
        ),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-pipeline",
            "this server runs no pipeline, so it has no counts; ask a `weir serve` that consumes events",
        ),
    }
}

/// Most days one daily history answer holds (the newest).
const MAX_DAYS: usize = 400;
/// Longest a daily history request waits for the archive: the dashboard asks
/// once a minute, and a slow store must not pile requests up.
const DAILY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /api/scenarios/{id}/daily`: the daily reports in the archive.
pub(super) async fn daily(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.registry.scenario(&id).await?;
    let reports = state.archive.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-archive",
            "this server writes no archive, so it has no daily reports; ask a `weir serve` that runs the pipeline",
        )
    })?;
    let root = &reports.config.root;
    let unavailable = |e: crate::report::ReportError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "archive-unavailable",
            format!("the daily reports could not be read: {e}"),
        )
    };
    let read = async {
        let archive = reports
            .opened
            .get_or_try_init(|| async { crate::report::Archive::open(&reports.config) })
            .await?;
        archive.read_daily(&id, MAX_DAYS).await
    };
    let timeout = DAILY_TIMEOUT.min(std::time::Duration::from_secs(
        reports.config.store_timeout_secs.max(1),
    ));
    let rows = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "archive-unavailable",
                format!("the archive at {root} did not answer in {timeout:?}"),
            )
        })?
        .map_err(unavailable)?;
    let body = DailyHistory {
        source: format!(
            "{}/{}/scenario_id={id}",
            root.trim_end_matches('/'),
            crate::report::DAILY_DIR
        ),
        scenario_id: id,
        days: rows
            .into_iter()
            .map(|r| DailyFigures {
                day: r.period,
                events: r.events,
                matched: r.matched,
                success_ratio: r.success_ratio,
                dead_letters: r.dead_letters,
            })
            .collect(),
    };
    Ok(Json(body).into_response())
}

pub(super) async fn scenario(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Response, ApiError> {
    // 404 for a scenario the registry does not know, with the registry's wording.
    state.registry.scenario(&id).await?;
    let counters = state
        .pipeline()
        .map(|p| &p.counters)
        .ok_or_else(|| unavailable(&state))?;
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
    let internal = counters_error;
    let totals = counters.totals(&id).await.map_err(internal)?;
    let since = counters.counting_since(&id).await.map_err(internal)?;
    let versions = counters.by_version(&id).await.map_err(internal)?;
    let gaps = counters.gaps().await.map_err(internal)?;
    let minutes = counters
        .minutes(&id, from, to, MAX_MINUTES)
        .await
        .map_err(internal)?;
    let quarantined = state.pipeline().and_then(|p| {
        let quarantined = p.metrics.quarantined_now();
        quarantined
            .get(&id)
            .map(|q| QuarantinedScenario::new(id.clone(), q))
    });
    let shadow = state.pipeline().and_then(|p| {
        p.metrics
            .shadows
            .lock()
            .expect("metrics lock")
            .get(&id)
            .map(ShadowSummary::new)
    });
    let canary = state.pipeline().and_then(|p| {
        p.metrics
            .canaries
            .lock()
            .expect("metrics lock")
            .get(&id)
            .map(CanarySummary::new)
    });
    let ratio = |matched: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            (matched as f64 / total as f64 * 10_000.0).round() / 10_000.0
        }
    };
    Ok(Json(ScenarioStats {
        scenario_id: id,
        counting_since: since.map(rfc3339),
        uncounted: gaps
            .iter()
            .map(|g| Uncounted {
                topic: g.topic.clone(),
                partition: g.partition,
                from_offset: g.from,
                until_offset: g.until,
                noted_at: rfc3339(g.noted_ms),
            })
            .collect(),
        total: totals.total,
        matched: totals.matched,
        errors: totals.errors,
        dropped: totals.dropped,
        success_ratio: ratio(totals.matched, totals.total),
        quarantined,
        shadow,
        canary,
        versions: versions
            .iter()
            .map(|(plugin, t)| VersionCounts {
                plugin: plugin.clone(),
                total: t.total,
                matched: t.matched,
                errors: t.errors,
                dropped: t.dropped,
            })
            .collect(),
        from: rfc3339(from),
        to: rfc3339(to),
        minutes: minutes
            .iter()
            .map(|m| MinuteCounts {
                minute: rfc3339(m.minute_ms),
                total: m.total,
                success: m.success,
                errors: m.errors,
                success_ratio: ratio(m.success, m.total),
            })
            .collect(),
    })
    .into_response())
}

pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = match (state.pipeline(), super::health::telemetry(&state)) {
        (Some(pipeline), _) => {
            pipeline.metrics.export();
            if let Some(collect) = &pipeline.collect {
                collect.export();
            }
            pipeline.metrics.telemetry.render()
        }
        // Starting: what there is so far (`weir_dependency_up`, build info).
        (None, Some(telemetry)) => telemetry.render(),
        (None, None) => return Err(unavailable(&state)),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /api/pipeline`: what the dashboard's health panel and `weir status`
/// show.
pub(super) async fn pipeline(State(state): State<AppState>) -> Result<Response, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let pipeline = state.pipeline().ok_or_else(|| unavailable(&state))?;
    let m = &pipeline.metrics;
    let now = Utc::now().timestamp_millis();
    let lag = m
        .lag
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|((topic, partition), lag)| Lag {
            topic: topic.clone(),
            partition: *partition,
            lag: *lag,
        })
        .collect();
    let failing_sinks = m
        .sink_failing
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|(sink, f)| FailingSink {
            sink: (*sink).to_owned(),
            since: rfc3339(f.since_ms),
            seconds: (now - f.since_ms).max(0) / 1000,
            error: f.error.clone(),
        })
        .collect();
    let quarantined = m
        .quarantined_now()
        .into_iter()
        .map(|(scenario, q)| QuarantinedScenario::new(scenario, &q))
        .collect();
    let recent_dead_letters = m
        .recent_dead_letters
        .lock()
        .expect("metrics lock")
        .iter()
        .rev()
        .cloned()
        .collect();
    let alerts_firing = pipeline
        .alerts
        .as_ref()
        .map(|a| a.firing())
        .unwrap_or_default()
        .into_iter()
        .map(|f| AlertFiring {
            rule: f.rule,
            summary: f.summary,
            since: rfc3339(f.since_ms),
        })
        .collect();
    Ok(Json(PipelineStatus {
        events_total: m.events.load(Relaxed),
        outputs_total: m.outputs.load(Relaxed),
        dead_letters_total: m.dead_letters.load(Relaxed),
        cycles_total: m.cycles.load(Relaxed),
        failed_cycles_total: m.failed_cycles.load(Relaxed),
        events_per_second: (m.events_per_second() * 10.0).round() / 10.0,
        generation: m.generation.load(Relaxed),
        lag,
        failing_sinks,
        quarantined,
        dead_letters_by_reason: m
            .dead_letters_by_reason
            .lock()
            .expect("metrics lock")
            .clone(),
        recent_dead_letters,
        alerts_firing,
    })
    .into_response())
}
