//! Plugin routes: upload, list, details, download, rollback, delete.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::bodies::{Deleted, PluginList, Rollback};
use super::extract::{ApiBody, ApiPath, ApiQuery, body_error, media_type};
use super::{ApiError, AppState, Caller, MULTIPART, WASM};
use crate::registry::MakeCurrent;

/// Query of `POST /api/plugins`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    /// Registry name, default the plugin's own.
    name: Option<String>,
}

/// Query of the delete routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    /// Delete even while scenarios use it (they are disabled).
    #[serde(default)]
    force: bool,
}

pub(super) async fn upload(
    State(state): State<AppState>,
    Extension(Caller(role)): Extension<Caller>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let (bytes, name) = match media_type(request.headers()).as_deref() {
        Some(WASM) => {
            let body = ApiBody::from_request(request, &state).await?;
            (body.bytes.to_vec(), query.name)
        }
        Some(MULTIPART) => {
            let limit = state.upload_limit;
            let multipart_error = |e: axum::extract::multipart::MultipartError| {
                body_error(e.status(), &e.body_text(), limit)
            };
            let mut multipart = Multipart::from_request(request, &state)
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart body: {}", e.body_text())))?;
            let mut bytes = None;
            let mut name = query.name;
            while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
                match field.name() {
                    Some("name") => {
                        let text = field.text().await.map_err(multipart_error)?;
                        if name.as_ref().is_some_and(|n| *n != text) {
                            return Err(ApiError::bad_request(format!(
                                "the `name` field `{text}` differs from the `name` query parameter; give one of them"
                            )));
                        }
                        name = Some(text);
                    }
                    Some("file" | "plugin" | "component") => {
                        bytes = Some(field.bytes().await.map_err(multipart_error)?.to_vec());
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "unknown multipart field {}; send `file` (the .wasm) and optionally `name`",
                            other.map_or_else(|| "(unnamed)".to_owned(), |n| format!("`{n}`"))
                        )));
                    }
                }
            }
            let bytes = bytes.ok_or_else(|| {
                ApiError::bad_request(
                    "the multipart body has no `file` field holding the .wasm component",
                )
            })?;
            (bytes, name)
        }
        other => return Err(ApiError::unsupported_media_type(other, &[WASM, MULTIPART])),
    };
    let upload = state
        .registry
        .upload_plugin(bytes, name.as_deref(), role.as_str(), MakeCurrent::Always)
        .await?;
    let status = if upload.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!(
        "/api/plugins/{}/versions/{}",
        upload.version.name, upload.version.version
    );
    let mut response = (status, Json(upload)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

pub(super) async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let plugins = state.registry.list_plugins().await?;
    Ok(Json(PluginList { plugins }).into_response())
}

pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.registry.plugin(&name).await?).into_response())
}

pub(super) async fn get_version(
    State(state): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, i64)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.registry.plugin_version(&name, version).await?).into_response())
}

pub(super) async fn download(
    State(state): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, i64)>,
) -> Result<Response, ApiError> {
    let reference = crate::registry::PluginRef {
        name,
        version: Some(version),
    };
    let (info, bytes) = state.registry.plugin_component(&reference).await?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(WASM));
    let disposition = format!(
        "attachment; filename=\"{}-{}.wasm\"",
        info.name, info.version
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("\"sha256:{}\"", info.sha256)) {
        headers.insert(header::ETAG, value);
    }
    Ok(response)
}

pub(super) async fn rollback(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let Rollback { to } = body.json()?;
    Ok(Json(state.registry.rollback_plugin(&name, to).await?).into_response())
}

pub(super) async fn delete(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, ApiError> {
    let disabled = state.registry.delete_plugin(&name, query.force).await?;
    Ok(Json(Deleted {
        deleted: name,
        version: None,
        disabled_scenarios: disabled,
    })
    .into_response())
}

pub(super) async fn delete_version(
    State(state): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, i64)>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, ApiError> {
    let disabled = state
        .registry
        .delete_plugin_version(&name, version, query.force)
        .await?;
    Ok(Json(Deleted {
        deleted: name,
        version: Some(version),
        disabled_scenarios: disabled,
    })
    .into_response())
}
