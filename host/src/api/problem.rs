//! Errors on the wire: every failed request answers `application/problem+json`
//! (RFC 9457) with `type`, `title`, `status`, `detail` and, where a request
//! had several problems, `errors: [{field, reason}]`.
//!
//! This is the one place errors become responses: registry errors map to a
//! status here, and the extractors in `extract.rs` turn axum's rejections into
//! [`ApiError`]s. User errors are logged at debug level; internal ones are
//! logged as errors with their detail, and the client gets a generic message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::{FieldError, RegistryError};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A failed request, ready to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable slug of the problem type, e.g. `invalid-plugin`; the `type`
    /// member is `urn:weir:problem:<slug>`.
    pub kind: &'static str,
    /// What went wrong and what would be accepted, naming the input.
    pub detail: String,
    /// Field-level problems, when there are several.
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// A problem without field errors.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// 400 for a malformed request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 415 naming what the route accepts.
    pub fn unsupported_media_type(got: Option<&str>, accepted: &[&str]) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "Content-Type {} is not accepted here; send one of: {}",
                got.map_or_else(|| "(none)".to_owned(), |t| format!("`{t}`")),
                accepted.join(", ")
            ),
        )
    }

    /// 500 with a generic message; the cause is logged, not sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request; the cause is in its log",
        )
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        use RegistryError as E;
        if error.is_unreachable() {
            tracing::warn!(%error, "the registry database is unreachable");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry-unavailable",
                "the registry database cannot be reached now; plugins, scenarios and members \
                 can be read and changed once it is back (GET /readyz says when)",
            );
        }
        if !error.is_user_error() {
            return ApiError::internal(&error);
        }
        let (status, kind) = match &error {
            E::InvalidPlugin(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-plugin"),
            E::InvalidPluginSchema { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-plugin"),
            E::InvalidPluginName { .. } => (StatusCode::BAD_REQUEST, "invalid-plugin-name"),
            E::PluginNotFound { .. } => (StatusCode::NOT_FOUND, "plugin-not-found"),
            E::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "plugin-version-not-found"),
            E::PluginInUse { .. } => (StatusCode::CONFLICT, "plugin-in-use"),
            E::DeleteCurrent { .. } => (StatusCode::CONFLICT, "plugin-version-current"),
            E::InvalidScenario { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-scenario"),
            E::ScenarioNotFound { .. } => (StatusCode::NOT_FOUND, "scenario-not-found"),
            E::ScenarioExists { .. } => (StatusCode::CONFLICT, "scenario-exists"),
            E::InvalidMembers { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-members"),
            E::MemberNotFound { .. } => (StatusCode::NOT_FOUND, "member-not-found"),
            _ => return ApiError::internal(&error),
        };
        let detail = error.to_string();
        let errors = match error {
            E::InvalidScenario { errors, .. } | E::InvalidMembers { errors } => errors,
            _ => Vec::new(),
        };
        ApiError {
            status,
            kind,
            detail,
            errors,
        }
    }
}

/// A problem+json body (RFC 9457), the one shape of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub(super) struct Body<'a> {
    /// `urn:weir:problem:<kind>`.
    r#type: String,
    /// The status' reason phrase.
    title: &'a str,
    /// The HTTP status.
    status: u16,
    /// What was wrong with which input, and what would be accepted.
    detail: &'a str,
    /// Field by field, when the input had several problems.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(required = false)]
    errors: &'a [FieldError],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::debug!(status = self.status.as_u16(), kind = self.kind, detail = %self.detail, "request refused");
        }
        let body = Body {
            r#type: format!("urn:weir:problem:{}", self.kind),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"weir\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn problems_carry_type_status_detail_and_field_errors() {
        let error: ApiError = RegistryError::InvalidScenario {
            scenario: Some("5".into()),
            errors: vec![FieldError::new(
                "enabled",
                "got a string; expected true or false",
            )],
        }
        .into();
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["type"], "urn:weir:problem:invalid-scenario");
        assert_eq!(body["status"], 422);
        assert!(body["detail"].as_str().unwrap().contains("scenario `5`"));
        assert_eq!(body["errors"][0]["field"], "enabled");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let error: ApiError = RegistryError::Corrupt {
            what: "plugins.name".into(),
            reason: "secret detail".into(),
        }
        .into();
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.detail.contains("secret"));
    }
}
