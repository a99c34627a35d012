//! `GET /readyz` and `GET /livez` (and `/healthz`, the same as `/readyz`):
//! what an orchestrator asks. Both answer from memory, never waiting for a
//! dependency, so they answer while one is down.
//!
//! - ready (200): every dependency is up and the consumer has its assignment;
//!   otherwise 503, the body naming what is missing.
//! - live (200): the process answers and its pipeline's loop turned lately, or
//!   it is still waiting for a dependency on purpose; 503 when the loop has not
//!   turned for longer than a transaction may take, or the pipeline stopped.
//!
//! A server without a pipeline (the API alone) is ready when its registry
//! answers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::bodies::{DependencyHealth, Health, PipelineHealth};
use crate::health::{State as DepState, Status};
use crate::telemetry::Telemetry;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn dependency(status: &Status) -> DependencyHealth {
    let (state, reason) = match &status.state {
        DepState::Starting => ("starting", None),
        DepState::Up => ("up", None),
        DepState::Down(reason) => ("down", Some(reason.clone())),
    };
    DependencyHealth {
        name: status.dependency.name(),
        target: status.target.clone(),
        state,
        since: rfc3339(status.since_ms),
        reason,
    }
}

/// The first dependency that is not up, in a line.
fn first_missing(statuses: &[Status]) -> Option<String> {
    statuses.iter().find_map(|s| {
        let (name, target) = (s.dependency.name(), &s.target);
        match &s.state {
            DepState::Down(reason) => Some(format!("{name} at {target} is down: {reason}")),
            DepState::Starting => Some(format!("{name} at {target} is not reached yet")),
            DepState::Up => None,
        }
    })
}

/// What the pipeline is waiting for, in a line, while it has not started.
pub(super) fn waiting_for(state: &AppState) -> Option<String> {
    let (health, _) = state.health.as_ref()?;
    if state.pipeline().is_some() {
        return None;
    }
    Some(
        first_missing(&health.statuses())
            .unwrap_or_else(|| "it is connecting to its dependencies".into()),
    )
}

/// The recorder of a service that is starting, for `/metrics`.
pub(super) fn telemetry(state: &AppState) -> Option<&Telemetry> {
    state.health.as_ref().map(|(health, _)| health.telemetry())
}

/// The body both routes share, and whether the service is ready.
async fn look(state: &AppState) -> (Health, bool, Option<String>) {
    let Some((health, _)) = &state.health else {
        // The API alone: ready when its registry answers.
        let (dependency, ready) = match state.registry.generation().await {
            Ok(_) => (("up", None), true),
            Err(error) => (
                ("down", Some(crate::health::first_line(&error.to_string()))),
                false,
            ),
        };
        let reason = dependency.1.clone().map(|r| format!("registry: {r}"));
        let body = Health {
            status: "",
            reason: None,
            dependencies: vec![DependencyHealth {
                name: "registry",
                target: state.registry.location(),
                state: dependency.0,
                since: rfc3339(chrono::Utc::now().timestamp_millis()),
                reason: dependency.1,
            }],
            pipeline: PipelineHealth {
                state: "none",
                assigned: false,
                last_turn: None,
            },
        };
        return (body, ready, reason);
    };
    let statuses = health.statuses();
    let pipeline_state = if health.ended() {
        "stopped"
    } else if state.pipeline().is_some() {
        "running"
    } else {
        "starting"
    };
    let ready = health.ready() && pipeline_state == "running";
    let reason = (!ready).then(|| {
        first_missing(&statuses).unwrap_or_else(|| match pipeline_state {
            "stopped" => "the pipeline stopped".into(),
            "starting" => "the pipeline is starting".into(),
            _ => "the consumer has no assignment yet".into(),
        })
    });
    let body = Health {
        status: "",
        reason: None,
        dependencies: statuses.iter().map(dependency).collect(),
        pipeline: PipelineHealth {
            state: pipeline_state,
            assigned: health.assigned(),
            last_turn: health.last_turn_ms().map(rfc3339),
        },
    };
    (body, ready, reason)
}

fn answer(mut body: Health, ok: bool, status: (&'static str, &'static str)) -> Response {
    body.status = if ok { status.0 } else { status.1 };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let (mut body, ready, reason) = look(&state).await;
    body.reason = reason;
    answer(body, ready, ("ready", "not_ready"))
}

pub(super) async fn live(State(state): State<AppState>) -> Response {
    let (mut body, _, _) = look(&state).await;
    let wedged = state
        .health
        .as_ref()
        .and_then(|(health, after)| health.wedged(*after));
    let live = wedged.is_none();
    body.reason = wedged;
    answer(body, live, ("live", "wedged"))
}
