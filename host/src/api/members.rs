//! Member routes: bulk import and lookup by id.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::extract::{ApiBody, ApiPath};
use super::{ApiError, AppState, CSV, NDJSON};
use crate::registry::{MemberFormat, RegistryError, parse_members};

pub(super) async fn import(
    State(state): State<AppState>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    body.require(&[NDJSON, CSV])?;
    let format = if body.media_type.as_deref() == Some(CSV) {
        MemberFormat::Csv
    } else {
        MemberFormat::JsonLines
    };
    let members = parse_members(&body.bytes, format)
        .map_err(|errors| RegistryError::InvalidMembers { errors })?;
    let imported = state.registry.import_members(&members).await?;
    Ok(Json(super::bodies::Imported {
        imported: imported as u64,
    })
    .into_response())
}

pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.registry.member(&id).await?).into_response())
}
