//! Request extractors whose rejections are [`ApiError`]s, so that a bad path,
//! query or body answers problem+json like every other error.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::problem::ApiError;

/// Path parameters; a parameter that does not parse is a 400 naming it.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    "bad-path",
                    format!("path {}: {}", parts.uri.path(), rejection.body_text()),
                )
            })
    }
}

/// Query parameters, unknown ones refused (the target types deny unknown fields).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    "bad-query",
                    format!(
                        "query `{}`: {}",
                        parts.uri.query().unwrap_or_default(),
                        rejection.body_text()
                    ),
                )
            })
    }
}

/// The whole body, within the upload limit (413 beyond it), with its
/// media type (parameters such as `charset` removed, lowercased).
#[derive(Debug)]
pub struct ApiBody {
    /// The media type, when the request sent one.
    pub media_type: Option<String>,
    /// The bytes.
    pub bytes: Bytes,
}

impl ApiBody {
    /// Refuses (415) unless the media type is one of `accepted`.
    pub fn require(&self, accepted: &[&str]) -> Result<(), ApiError> {
        match &self.media_type {
            Some(t) if accepted.contains(&t.as_str()) => Ok(()),
            other => Err(ApiError::unsupported_media_type(other.as_deref(), accepted)),
        }
    }

    /// Parses the body as JSON after checking its media type; a syntax error
    /// is a 400 with the line and column.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        self.require(&["application/json"])?;
        let mut deserializer = serde_json::Deserializer::from_slice(&self.bytes);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "(body)".to_owned()
            } else {
                path
            };
            let mut error =
                ApiError::bad_request(format!("the JSON body is not valid: {}", e.inner()));
            error.errors.push(crate::registry::FieldError {
                field,
                reason: e.inner().to_string(),
            });
            error
        })
    }
}

/// The media type of a request, without parameters, lowercased.
pub fn media_type(parts: &axum::http::HeaderMap) -> Option<String> {
    parts
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

impl FromRequest<AppState> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let media_type = media_type(request.headers());
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                body_error(
                    rejection.status(),
                    &rejection.body_text(),
                    state.upload_limit,
                )
            })?;
        Ok(Self { media_type, bytes })
    }
}

/// A body that could not be read: 413 says the limit and how to raise it.
pub fn body_error(status: axum::http::StatusCode, text: &str, limit: usize) -> ApiError {
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload-too-large",
            format!(
                "the request body is larger than the {limit} bytes this server accepts ({text}); \
                 the limit is the `api.upload_limit_bytes` setting"
            ),
        )
    } else {
        ApiError::new(
            status,
            "bad-body",
            format!("the request body could not be read: {text}"),
        )
    }
}
