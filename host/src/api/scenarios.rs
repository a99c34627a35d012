//! Scenario routes: create, replace, read, list, delete.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;

use super::extract::{ApiBody, ApiPath};
use super::{ApiError, AppState, Caller};
use crate::registry::PutMode;

pub(super) async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let scenarios = state.registry.list_scenarios().await?;
    Ok(Json(super::bodies::ScenarioList { scenarios }).into_response())
}

pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.registry.scenario(&id).await?).into_response())
}

pub(super) async fn create(
    State(state): State<AppState>,
    Extension(Caller(role)): Extension<Caller>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let document: Value = body.json()?;
    store(state, document, None, PutMode::Create, role.as_str()).await
}

pub(super) async fn put(
    State(state): State<AppState>,
    Extension(Caller(role)): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let document: Value = body.json()?;
    store(state, document, Some(&id), PutMode::Upsert, role.as_str()).await
}

/// `POST /api/scenarios/{id}/promote`: the scenario's candidate becomes its
/// plugin, from the next batch on, on every replica: its canary (the
/// document's `plugin` takes `canary.plugin`, and `canary` goes) or its
/// shadow (`plugin` takes the `shadow` reference, and `shadow` goes).
pub(super) async fn promote(
    State(state): State<AppState>,
    Extension(Caller(role)): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let scenario = state.registry.scenario(&id).await?;
    let spec = scenario.spec()?;
    let mut document = scenario.document;
    let candidate = match (&spec.canary, &spec.shadow) {
        (Some(canary), _) => {
            if let Some(why) = &canary.rolled_back {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "canary-rolled-back",
                    format!(
                        "scenario {id}'s canary {} was rolled back ({why}); remove \
                         `canary.rolled_back` from its document to try it again",
                        canary.plugin
                    ),
                ));
            }
            canary.plugin.to_string()
        }
        (None, Some(shadow)) => shadow.to_string(),
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no-candidate",
                format!(
                    "scenario {id} has no candidate to promote; set `\"shadow\": \"name@N\"` \
                     or `\"canary\": {{\"plugin\": \"name@N\", \"share\": 0.1}}` in its \
                     document first"
                ),
            ));
        }
    };
    if let Some(object) = document.as_object_mut() {
        object.remove("canary");
        object.remove("shadow");
        object.insert("plugin".into(), Value::String(candidate));
    }
    store(state, document, Some(&id), PutMode::Upsert, role.as_str()).await
}

async fn store(
    state: AppState,
    document: Value,
    path_id: Option<&str>,
    mode: PutMode,
    by: &str,
) -> Result<Response, ApiError> {
    let (scenario, created) = state
        .registry
        .put_scenario(document, path_id, mode, by)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/scenarios/{}", scenario.scenario_id);
    let mut response = (status, Json(scenario)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

pub(super) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.registry.delete_scenario(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
