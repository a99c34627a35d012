//! The HTTP control plane: plugin upload, versions and rollback, scenario
//! CRUD, member import, the generation number, health, and the OpenAPI
//! document — an axum [`Router`] over the [`Registry`].
//!
//! Requests enter through [`router`]. Every route is one entry of [`ROUTES`]:
//! its method, path, the role it needs, and its documentation. The same
//! table builds the router, wraps each route in its role check, and produces
//! `/api/openapi.json` (see `openapi.rs`), so the three cannot disagree.
//! Handlers live in `plugins.rs`, `scenarios.rs` and `members.rs`; they
//! validate through the registry, which stores in one transaction per request.
//!
//! Auth: `Authorization: Bearer <token>`. The admin token may do everything,
//! the viewer token only reads. Tokens are compared as sha256 digests in
//! constant time. No token or an unknown one → 401; a viewer token on a write
//! → 403. Errors leave as problem+json (`problem.rs`).
//!
//! The user's view of the API, the registry and the CLI is `docs/control-plane.md`.

pub mod bodies;
mod extract;
mod health;
mod members;
mod openapi;
mod plugins;
mod problem;
mod scenarios;
mod stats;
mod ui;

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::registry::Registry;

pub use bodies::ScenarioDocument;
pub use problem::{ApiError, PROBLEM_JSON};

/// How the control plane is set up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token that may read and write (env `WEIR_ADMIN_TOKEN`). Without
    /// one, every protected route answers 401.
    pub admin_token: Option<String>,
    /// Bearer token that may only read (env `WEIR_VIEWER_TOKEN`).
    pub viewer_token: Option<String>,
    /// Largest request body accepted, in bytes (plugin uploads, member
    /// imports); larger bodies get 413.
    pub upload_limit_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            viewer_token: None,
            upload_limit_bytes: 32 << 20,
        }
    }
}

/// Tokens shorter than this are refused at start-up.
pub const MIN_TOKEN_LEN: usize = 16;

impl ApiConfig {
    /// Every problem with this configuration, as `(field, reason)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (field, token) in [
            ("api.admin_token", &self.admin_token),
            ("api.viewer_token", &self.viewer_token),
        ] {
            if let Some(token) = token
                && (token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()))
            {
                problems.push((
                    field.to_owned(),
                    format!(
                        "must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces"
                    ),
                ));
            }
        }
        if self.admin_token.is_some() && self.admin_token == self.viewer_token {
            problems.push((
                "api.viewer_token".to_owned(),
                "must differ from api.admin_token".to_owned(),
            ));
        }
        if self.upload_limit_bytes < 1024 {
            problems.push((
                "api.upload_limit_bytes".to_owned(),
                format!(
                    "{} is too small; use at least 1024",
                    self.upload_limit_bytes
                ),
            ));
        }
        problems
    }
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read and write.
    Admin,
}

impl Role {
    /// `viewer` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// The authenticated caller, available to handlers as an extension.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Role);

#[derive(Debug)]
struct Tokens {
    admin: Option<[u8; 32]>,
    viewer: Option<[u8; 32]>,
}

/// A token's sha256 digest: tokens are kept and compared only as digests.
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `presented` is the token whose digest is `known`, compared in
/// constant time.
pub(crate) fn token_matches(presented: &str, known: &[u8; 32]) -> bool {
    bool::from(token_digest(presented).ct_eq(known))
}

/// The token of an `Authorization` header value `Bearer <token>` (or `bearer`).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

impl Tokens {
    fn role_of(&self, presented: &str) -> Option<Role> {
        let digest = token_digest(presented);
        let matches =
            |known: &Option<[u8; 32]>| known.is_some_and(|k| bool::from(k.ct_eq(&digest)));
        // Both comparisons always run, so timing says nothing about which matched.
        let admin = matches(&self.admin);
        let viewer = matches(&self.viewer);
        if admin {
            Some(Role::Admin)
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    registry: Registry,
    tokens: Arc<Tokens>,
    /// The dashboard's sessions (`ui.rs`).
    sessions: Arc<ui::Sessions>,
    upload_limit: usize,
    /// Filled once the pipeline runs: the API serves before it does.
    pipeline: Arc<OnceLock<PipelineView>>,
    /// The dependencies' states, when this server runs a pipeline.
    health: Option<(Arc<crate::health::Health>, std::time::Duration)>,
    /// The archive the pipeline writes, where the daily reports are.
    archive: Option<Arc<DailyReports>>,
}

/// The archive's daily reports, opened at the first request that reads them.
#[derive(Debug)]
pub(crate) struct DailyReports {
    pub(crate) config: crate::archive::ArchiveConfig,
    pub(crate) opened: tokio::sync::OnceCell<crate::report::Archive>,
}

/// What the API reads of a running pipeline: its counters and its metrics.
#[derive(Debug, Clone)]
pub struct PipelineView {
    /// The scenario counters the pipeline writes.
    pub counters: crate::aggregate::Counters,
    /// The pipeline's own counters.
    pub metrics: Arc<crate::pipeline::Metrics>,
    /// The collector's counters, when it runs.
    pub collect: Option<Arc<crate::collect::CollectMetrics>>,
    /// The alert rules and their state, when any are configured.
    pub alerts: Option<Arc<crate::alert::Alerts>>,
}

impl AppState {
    /// State for [`router`].
    pub fn new(registry: Registry, config: &ApiConfig) -> Self {
        let digest = |t: &Option<String>| t.as_deref().map(token_digest);
        Self {
            registry,
            tokens: Arc::new(Tokens {
                admin: digest(&config.admin_token),
                viewer: digest(&config.viewer_token),
            }),
            sessions: Arc::default(),
            upload_limit: config.upload_limit_bytes,
            pipeline: Arc::default(),
            health: None,
            archive: None,
        }
    }

    /// The same state, reading daily reports from the archive `config` names.
    pub fn with_archive(mut self, config: crate::archive::ArchiveConfig) -> Self {
        self.archive = Some(Arc::new(DailyReports {
            config,
            opened: tokio::sync::OnceCell::new(),
        }));
        self
    }

    /// The same state, serving the counts and metrics of a running pipeline.
    pub fn with_pipeline(self, pipeline: PipelineView) -> Self {
        let _ = self.pipeline.set(pipeline);
        self
    }

    /// The same state, answering `/readyz` and `/livez` from `health`; the
    /// process counts as wedged when the pipeline's loop has not turned for
    /// `wedged_after`.
    pub fn with_health(
        mut self,
        health: Arc<crate::health::Health>,
        wedged_after: std::time::Duration,
    ) -> Self {
        self.health = Some((health, wedged_after));
        self
    }

    /// Where the pipeline's view goes once it runs ([`AppState::with_pipeline`]
    /// for one that runs already).
    pub fn pipeline_slot(&self) -> Arc<OnceLock<PipelineView>> {
        self.pipeline.clone()
    }

    /// The running pipeline, if there is one yet.
    fn pipeline(&self) -> Option<&PipelineView> {
        self.pipeline.get()
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, the OpenAPI document).
    Public,
    /// A viewer or admin token.
    Read,
    /// The admin token.
    Write,
}

/// One route: what builds it, what protects it, and what documents it.
#[derive(Debug)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path with `{param}` segments, as axum and OpenAPI write them.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Stable name for clients (`operationId`).
    pub operation: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Query parameters: `(name, type, description)`.
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// Request media types accepted, empty when there is no body.
    pub request: &'static [&'static str],
    /// Success status, its description and media type.
    pub success: (u16, &'static str, &'static str),
    /// Schema (in the document's `components.schemas`) of a JSON request body.
    pub body_schema: Option<&'static str>,
    /// Schema (in the document's `components.schemas`) of a JSON success body.
    pub response_schema: Option<&'static str>,
    /// Error statuses it can answer besides 401/403/500.
    pub errors: &'static [u16],
    handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

const JSON: &str = "application/json";
const WASM: &str = "application/wasm";
const MULTIPART: &str = "multipart/form-data";
const NDJSON: &str = "application/x-ndjson";
const CSV: &str = "text/csv";
const FORCE: (&str, &str, &str) = (
    "force",
    "boolean",
    "delete even while scenarios use it; those scenarios are disabled",
);

/// Every route of the control plane.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/readyz",
        access: Access::Public,
        operation: "ready",
        summary: "Readiness: every dependency (registry, Kafka, Redis, archive) reachable and the consumer assigned; 503 names what is missing",
        query: &[],
        request: &[],
        success: (
            200,
            "ready; the body names each dependency's state and since when",
            JSON,
        ),
        errors: &[503],
        body_schema: None,
        response_schema: Some("Health"),
        handler: |m| on(m, health::ready),
    },
    Route {
        method: Method::GET,
        path: "/livez",
        access: Access::Public,
        operation: "live",
        summary: "Liveness: the process answers and its pipeline loop turns (or waits on purpose); 503 when it is wedged",
        query: &[],
        request: &[],
        success: (200, "live; the body names each dependency's state", JSON),
        errors: &[503],
        body_schema: None,
        response_schema: Some("Health"),
        handler: |m| on(m, health::live),
    },
    Route {
        method: Method::GET,
        path: "/healthz",
        access: Access::Public,
        operation: "health",
        summary: "The same as /readyz (kept for existing probes)",
        query: &[],
        request: &[],
        success: (200, "ready", JSON),
        errors: &[503],
        body_schema: None,
        response_schema: Some("Health"),
        handler: |m| on(m, health::ready),
    },
    Route {
        method: Method::GET,
        path: "/api/openapi.json",
        access: Access::Public,
        operation: "openapi",
        summary: "This API's OpenAPI 3.1 document",
        query: &[],
        request: &[],
        success: (200, "the document", JSON),
        errors: &[],
        body_schema: None,
        response_schema: None,
        handler: |m| on(m, openapi::serve),
    },
    Route {
        method: Method::GET,
        path: "/api/whoami",
        access: Access::Read,
        operation: "whoami",
        summary: "The role of the caller's token (`viewer` or `admin`)",
        query: &[],
        request: &[],
        success: (200, "`{\"role\": ...}`", JSON),
        errors: &[],
        body_schema: None,
        response_schema: Some("Whoami"),
        handler: |m| on(m, whoami),
    },
    Route {
        method: Method::GET,
        path: "/api/pipeline",
        access: Access::Read,
        operation: "getPipeline",
        summary: "The pipeline's health: events/s, totals, lag per partition, failing sinks, quarantines, the latest dead letters, alerts firing",
        query: &[],
        request: &[],
        success: (200, "the pipeline's state", JSON),
        errors: &[503],
        body_schema: None,
        response_schema: Some("PipelineStatus"),
        handler: |m| on(m, stats::pipeline),
    },
    Route {
        method: Method::GET,
        path: "/api/generation",
        access: Access::Read,
        operation: "getGeneration",
        summary: "The registry generation; it grows with every write",
        query: &[],
        request: &[],
        success: (200, "`{\"generation\": n}`", JSON),
        errors: &[],
        body_schema: None,
        response_schema: Some("Generation"),
        handler: |m| on(m, generation),
    },
    Route {
        method: Method::GET,
        path: "/api/plugins",
        access: Access::Read,
        operation: "listPlugins",
        summary: "Every plugin with its current version",
        query: &[],
        request: &[],
        success: (200, "`{\"plugins\": [...]}`", JSON),
        errors: &[],
        body_schema: None,
        response_schema: Some("PluginList"),
        handler: |m| on(m, plugins::list),
    },
    Route {
        method: Method::POST,
        path: "/api/plugins",
        access: Access::Write,
        operation: "uploadPlugin",
        summary: "Upload a plugin component; identical bytes return the existing version",
        query: &[(
            "name",
            "string",
            "registry name; default the name the plugin gives itself",
        )],
        request: &[WASM, MULTIPART],
        success: (
            201,
            "a new version (200 when the bytes were already stored)",
            JSON,
        ),
        errors: &[400, 413, 415, 422],
        body_schema: None,
        response_schema: Some("Upload"),
        handler: |m| on(m, plugins::upload),
    },
    Route {
        method: Method::GET,
        path: "/api/plugins/{name}",
        access: Access::Read,
        operation: "getPlugin",
        summary: "A plugin with every version",
        query: &[],
        request: &[],
        success: (200, "the plugin", JSON),
        errors: &[404],
        body_schema: None,
        response_schema: Some("PluginDetail"),
        handler: |m| on(m, plugins::get),
    },
    Route {
        method: Method::DELETE,
        path: "/api/plugins/{name}",
        access: Access::Write,
        operation: "deletePlugin",
        summary: "Delete a plugin with every version",
        query: &[FORCE],
        request: &[],
        success: (
            200,
            "deleted; `disabled_scenarios` lists what a forced deletion disabled",
            JSON,
        ),
        errors: &[404, 409],
        body_schema: None,
        response_schema: Some("Deleted"),
        handler: |m| on(m, plugins::delete),
    },
    Route {
        method: Method::GET,
        path: "/api/plugins/{name}/versions/{version}",
        access: Access::Read,
        operation: "getPluginVersion",
        summary: "One version's details",
        query: &[],
        request: &[],
        success: (200, "the version", JSON),
        errors: &[400, 404],
        body_schema: None,
        response_schema: Some("PluginVersion"),
        handler: |m| on(m, plugins::get_version),
    },
    Route {
        method: Method::DELETE,
        path: "/api/plugins/{name}/versions/{version}",
        access: Access::Write,
        operation: "deletePluginVersion",
        summary: "Delete one version (not the current one, unless it is the only one)",
        query: &[FORCE],
        request: &[],
        success: (200, "deleted", JSON),
        errors: &[400, 404, 409],
        body_schema: None,
        response_schema: Some("Deleted"),
        handler: |m| on(m, plugins::delete_version),
    },
    Route {
        method: Method::GET,
        path: "/api/plugins/{name}/versions/{version}/component",
        access: Access::Read,
        operation: "downloadPluginVersion",
        summary: "Download a version's component bytes",
        query: &[],
        request: &[],
        success: (200, "the component", WASM),
        errors: &[400, 404],
        body_schema: None,
        response_schema: None,
        handler: |m| on(m, plugins::download),
    },
    Route {
        method: Method::POST,
        path: "/api/plugins/{name}/rollback",
        access: Access::Write,
        operation: "rollbackPlugin",
        summary: "Make a stored version current: body `{\"to\": version}`",
        query: &[],
        request: &[JSON],
        success: (200, "the version now current", JSON),
        errors: &[400, 404, 415],
        body_schema: Some("Rollback"),
        response_schema: Some("PluginVersion"),
        handler: |m| on(m, plugins::rollback),
    },
    Route {
        method: Method::GET,
        path: "/api/scenarios",
        access: Access::Read,
        operation: "listScenarios",
        summary: "Every scenario",
        query: &[],
        request: &[],
        success: (200, "`{\"scenarios\": [...]}`", JSON),
        errors: &[],
        body_schema: None,
        response_schema: Some("ScenarioList"),
        handler: |m| on(m, scenarios::list),
    },
    Route {
        method: Method::POST,
        path: "/api/scenarios",
        access: Access::Write,
        operation: "createScenario",
        summary: "Create a scenario (409 if its id exists)",
        query: &[],
        request: &[JSON],
        success: (201, "created", JSON),
        errors: &[400, 409, 413, 415, 422],
        body_schema: Some("ScenarioDocument"),
        response_schema: Some("Scenario"),
        handler: |m| on(m, scenarios::create),
    },
    Route {
        method: Method::GET,
        path: "/api/scenarios/{id}",
        access: Access::Read,
        operation: "getScenario",
        summary: "One scenario",
        query: &[],
        request: &[],
        success: (200, "the scenario", JSON),
        errors: &[404],
        body_schema: None,
        response_schema: Some("Scenario"),
        handler: |m| on(m, scenarios::get),
    },
    Route {
        method: Method::GET,
        path: "/api/scenarios/{id}/stats",
        access: Access::Read,
        operation: "getScenarioStats",
        summary: "A scenario's counts (overall, per plugin version) and per-minute buckets",
        query: &[
            (
                "from",
                "string",
                "start of the window, RFC 3339 or unix ms; default an hour before `to`",
            ),
            (
                "to",
                "string",
                "end of the window (exclusive), RFC 3339 or unix ms; default now",
            ),
        ],
        request: &[],
        success: (200, "the counts", JSON),
        errors: &[400, 404, 503],
        body_schema: None,
        response_schema: Some("ScenarioStats"),
        handler: |m| on(m, stats::scenario),
    },
    Route {
        method: Method::GET,
        path: "/api/scenarios/{id}/daily",
        access: Access::Read,
        operation: "getScenarioDaily",
        summary: "A scenario's daily history: the reports `weir report` wrote into the archive",
        query: &[],
        request: &[],
        success: (200, "the days reported", JSON),
        errors: &[404, 503],
        body_schema: None,
        response_schema: Some("DailyHistory"),
        handler: |m| on(m, stats::daily),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        access: Access::Read,
        operation: "metrics",
        summary: "The pipeline's metrics, Prometheus text format",
        query: &[],
        request: &[],
        success: (200, "the metrics", "text/plain"),
        errors: &[503],
        body_schema: None,
        response_schema: None,
        handler: |m| on(m, stats::metrics),
    },
    Route {
        method: Method::PUT,
        path: "/api/scenarios/{id}",
        access: Access::Write,
        operation: "putScenario",
        summary: "Create or replace a scenario",
        query: &[],
        request: &[JSON],
        success: (200, "replaced (201 when created)", JSON),
        errors: &[400, 413, 415, 422],
        body_schema: Some("ScenarioDocument"),
        response_schema: Some("Scenario"),
        handler: |m| on(m, scenarios::put),
    },
    Route {
        method: Method::POST,
        path: "/api/scenarios/{id}/promote",
        access: Access::Write,
        operation: "promoteCandidate",
        summary: "Make the scenario's canary or shadow candidate its plugin, from the next batch on",
        query: &[],
        request: &[],
        success: (200, "the scenario, running the candidate", JSON),
        errors: &[404, 409],
        body_schema: None,
        response_schema: Some("Scenario"),
        handler: |m| on(m, scenarios::promote),
    },
    Route {
        method: Method::DELETE,
        path: "/api/scenarios/{id}",
        access: Access::Write,
        operation: "deleteScenario",
        summary: "Delete a scenario",
        query: &[],
        request: &[],
        success: (204, "deleted", ""),
        errors: &[404],
        body_schema: None,
        response_schema: None,
        handler: |m| on(m, scenarios::delete),
    },
    Route {
        method: Method::POST,
        path: "/api/members",
        access: Access::Write,
        operation: "importMembers",
        summary: "Import members from JSON Lines or CSV (all or nothing)",
        query: &[],
        request: &[NDJSON, CSV],
        success: (200, "`{\"imported\": n}`", JSON),
        errors: &[413, 415, 422],
        body_schema: None,
        response_schema: Some("Imported"),
        handler: |m| on(m, members::import),
    },
    Route {
        method: Method::GET,
        path: "/api/members/{id}",
        access: Access::Read,
        operation: "getMember",
        summary: "One member's attributes",
        query: &[],
        request: &[],
        success: (200, "the member", JSON),
        errors: &[404],
        body_schema: None,
        response_schema: Some("Member"),
        handler: |m| on(m, members::get),
    },
];

/// The control plane's router, every route of [`ROUTES`] behind its role check.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let filter = MethodFilter::try_from(route.method.clone())
            .unwrap_or_else(|_| unreachable!("ROUTES uses only standard methods"));
        let mut method_router = (route.handler)(filter);
        let needed = match route.access {
            Access::Public => None,
            Access::Read => Some(Role::Viewer),
            Access::Write => Some(Role::Admin),
        };
        if let Some(role) = needed {
            method_router =
                method_router.layer(from_fn_with_state((state.clone(), role), require_role));
        }
        router = router.route(route.path, method_router);
    }
    router
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.upload_limit))
        // A request, its upload included, is read and answered within this long
        // (the listener's header timeout covers the time before it).
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// How long one API request may take, body included.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn require_role(
    State((state, needed)): State<(AppState, Role)>,
    mut request: Request,
    next: Next,
) -> Response {
    match authenticate(&state, request.headers(), needed) {
        Ok(role) => {
            request.extensions_mut().insert(Caller(role));
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap, needed: Role) -> Result<Role, ApiError> {
    let unauthorized =
        |detail: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
    let role = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let value = value.to_str().map_err(|_| {
                unauthorized("the Authorization header is not ASCII; send `Bearer <token>`")
            })?;
            let token = bearer_token(value)
                .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
            state
                .tokens
                .role_of(token)
                .ok_or_else(|| unauthorized("the bearer token is not one this server knows"))?
        }
        None => {
            let id = ui::session_id(headers).ok_or_else(|| {
                unauthorized("no Authorization header; send `Authorization: Bearer <token>` with the admin or viewer token, or log in at /")
            })?;
            let role = state.sessions.role_of(id).ok_or_else(|| {
                unauthorized("the dashboard's session has ended (logged out, expired, or the server restarted); log in again at /")
            })?;
            // The dashboard's cookie: a write must also carry the header only
            // the page's own script sets (a form or link from another site cannot).
            if needed == Role::Admin && !headers.contains_key(ui::WRITE_HEADER) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "a write with the dashboard's session needs the {} header",
                        ui::WRITE_HEADER
                    ),
                ));
            }
            role
        }
    };
    if role < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this route changes the registry and needs the {} token; the {} token may only read",
                needed.as_str(),
                role.as_str()
            ),
        ));
    }
    Ok(role)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!(
            "no route {method} {}; the routes are listed at /api/openapi.json",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| path_matches(r.path, uri.path()))
        .map(|r| r.method.as_str())
        .collect();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!(
            "{method} is not allowed on {}; allowed: {}",
            uri.path(),
            allowed.join(", ")
        ),
    )
}

/// Whether a concrete path fits a route pattern with `{param}` segments.
fn path_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    pattern.len() == path.len()
        && pattern
            .iter()
            .zip(&path)
            .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
}

async fn whoami(Extension(Caller(role)): Extension<Caller>) -> Json<bodies::Whoami> {
    Json(bodies::Whoami {
        role: role.as_str(),
    })
}

async fn generation(State(state): State<AppState>) -> Result<Json<bodies::Generation>, ApiError> {
    let generation = state.registry.generation().await?;
    Ok(Json(bodies::Generation { generation }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_unique_and_documented() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method.clone(), route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
            assert!(!route.summary.is_empty() && !route.operation.is_empty());
            let writes = route.method != Method::GET;
            assert_eq!(
                writes,
                route.access == Access::Write,
                "{} {}: writes need the admin role, reads the viewer role",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn tokens_map_to_roles() {
        let tokens = Tokens {
            admin: Some(Sha256::digest(b"admin-token-0123456").into()),
            viewer: Some(Sha256::digest(b"viewer-token-012345").into()),
        };
        assert_eq!(tokens.role_of("admin-token-0123456"), Some(Role::Admin));
        assert_eq!(tokens.role_of("viewer-token-012345"), Some(Role::Viewer));
        assert_eq!(tokens.role_of("admin-token-012345"), None);
        assert_eq!(tokens.role_of(""), None);
        let none = Tokens {
            admin: None,
            viewer: None,
        };
        assert_eq!(none.role_of(""), None);
    }

    #[test]
    fn config_problems_are_all_reported() {
        let config = ApiConfig {
            admin_token: Some("short".into()),
            viewer_token: Some("with space 0123456789".into()),
            upload_limit_bytes: 10,
        };
        let fields: Vec<String> = config.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "api.admin_token",
                "api.viewer_token",
                "api.upload_limit_bytes"
            ]
        );
        assert!(ApiConfig::default().problems().is_empty());
    }

    #[test]
    fn patterns_match_concrete_paths() {
        assert!(path_matches("/api/plugins/{name}", "/api/plugins/scenario"));
        assert!(!path_matches("/api/plugins/{name}", "/api/plugins/"));
        assert!(!path_matches("/api/plugins/{name}", "/api/plugins/a/b"));
    }
}
