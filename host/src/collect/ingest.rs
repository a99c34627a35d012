//! `POST /collect/{stream}`: JSON records for a configured stream. The body is
//! one JSON object, a JSON array of them, or NDJSON (one per line); each record
//! is checked on its own (a JSON object, at most the record limit). The answer
//! is `202` with how many were accepted and, per refused record, its index and
//! reason; refused records go to the bad-records topic. When every record is
//! refused the answer is a `400` problem naming each.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::hit::read_body;
use super::produce::{Front, Outgoing, Refusal, encode};
use crate::api::ApiError;
use crate::registry::FieldError;

/// One record of a body: where it was and its text.
struct Piece<'a> {
    index: usize,
    line: Option<usize>,
    text: &'a [u8],
}

/// The body cut into records: a JSON array's elements, a single JSON value,
/// or the non-empty lines of NDJSON. `Err` when the body is an array that is
/// not valid JSON (its records cannot be told apart).
fn pieces(body: &[u8]) -> Result<Vec<Piece<'_>>, String> {
    let trimmed = body.trim_ascii();
    if trimmed.first() == Some(&b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(trimmed)
            .map_err(|e| format!("the body starts as a JSON array but is not one: {e}"))?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, raw)| Piece {
                index,
                line: None,
                text: raw.get().as_bytes(),
            })
            .collect());
    }
    // One JSON value over several lines (pretty-printed) is one record.
    if serde_json::from_slice::<&RawValue>(trimmed).is_ok() {
        return Ok(vec![Piece {
            index: 0,
            line: None,
            text: trimmed,
        }]);
    }
    Ok(body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .enumerate()
        .map(|(index, (line, text))| Piece {
            index,
            line: Some(line),
            text,
        })
        .collect())
}

/// Checks one record: a JSON object within the size limit.
fn record(text: &[u8], max: usize) -> Result<Map<String, Value>, (&'static str, String)> {
    if text.len() > max {
        return Err((
            "record_too_large",
            format!(
                "the record has {} bytes; at most {max} are taken",
                text.len()
            ),
        ));
    }
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err((
            "not_an_object",
            format!(
                "a record is a JSON object, not {}",
                match other {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            ),
        )),
        Err(error) => Err(("not_json", format!("not JSON: {error}"))),
    }
}

/// The key a sender presented: `Authorization: Bearer <key>` or `X-Weir-Key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::api::bearer_token)
        .or_else(|| {
            headers
                .get("x-weir-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
}

pub(super) async fn collect(
    State(front): State<Arc<Front>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(stream_name): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let Some((stream, digest)) = front.stream(&stream_name).cloned() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-stream",
            format!(
                "no stream {stream_name:?} is configured ([collect.streams] in the configuration)"
            ),
        )
        .into_response();
    };
    let trusted = match digest {
        Some(expected) => {
            if !crate::api::token_matches(presented_key(&headers).unwrap_or(""), &expected) {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("stream {stream_name:?} needs its key: Authorization: Bearer <key>"),
                )
                .into_response();
            }
            true
        }
        None => false,
    };
    let client = front.rules().client(peer, &headers, false);
    let (body, _room) = match read_body(&front, request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let pieces = match pieces(&body) {
        Ok(pieces) => pieces,
        Err(detail) => {
            front.refuse(
                &client,
                Refusal {
                    reason: "not_json",
                    detail: detail.clone(),
                    endpoint: "collect",
                    stream: Some(&stream_name),
                    index: None,
                    raw: &body,
                },
            );
            return ApiError::bad_request(detail).into_response();
        }
    };
    let max = front.config().max_record_bytes;
    let mut records = Vec::with_capacity(pieces.len());
    let mut refused = Vec::new();
    for piece in &pieces {
        match record(piece.text, max) {
            Ok(mut event) => {
                client.stamp(&mut event, !trusted);
                let key = stream
                    .key_field
                    .as_ref()
                    .and_then(|field| event.get(field))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    });
                records.push(Outgoing {
                    key,
                    payload: encode(&event),
                    timestamp_ms: client.received_ms,
                });
            }
            Err((reason, detail)) => {
                front.refuse(
                    &client,
                    Refusal {
                        reason,
                        detail: detail.clone(),
                        endpoint: "collect",
                        stream: Some(&stream_name),
                        index: Some(piece.index),
                        raw: piece.text,
                    },
                );
                refused.push((piece.index, piece.line, reason, detail));
            }
        }
    }
    if records.is_empty() {
        let mut problem = ApiError::bad_request(if pieces.is_empty() {
            "the body holds no record: send a JSON object, an array of them, or NDJSON".to_owned()
        } else {
            format!("none of the {} records was taken", pieces.len())
        });
        problem.errors = refused
            .iter()
            .map(|(index, line, _, detail)| FieldError {
                field: line.map_or_else(|| format!("[{index}]"), |l| format!("line {l}")),
                reason: detail.clone(),
            })
            .collect();
        return problem.into_response();
    }
    let accepted = records.len();
    if let Err(response) = front.send(&stream.topic, "collect", records).await {
        return response;
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "accepted": accepted,
            "refused": refused.iter().map(|(index, line, reason, detail)| json!({
                "index": index, "line": line, "reason": reason, "detail": detail,
            })).collect::<Vec<_>>(),
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<(usize, Option<usize>, String)> {
        pieces(body.as_bytes())
            .unwrap()
            .into_iter()
            .map(|p| (p.index, p.line, String::from_utf8(p.text.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn a_body_is_an_object_an_array_or_ndjson() {
        assert_eq!(
            texts("{\n  \"a\": 1\n}\n"),
            [(0, None, "{\n  \"a\": 1\n}".into())]
        );
        assert_eq!(
            texts("[{\"a\":1}, 2 ,{\"b\":2}]"),
            [
                (0, None, "{\"a\":1}".into()),
                (1, None, "2".into()),
                (2, None, "{\"b\":2}".into())
            ]
        );
        assert_eq!(
            texts("{\"a\":1}\n\n{oops\n{\"c\":3}\r\n"),
            [
                (0, Some(1), "{\"a\":1}".into()),
                (1, Some(3), "{oops".into()),
                (2, Some(4), "{\"c\":3}".into())
            ]
        );
        assert!(pieces(b"[{\"a\":1},").is_err());
    }

    #[test]
    fn records_are_objects_within_the_limit() {
        assert!(record(b"{\"a\":1}", 100).is_ok());
        assert_eq!(record(b"[1]", 100).unwrap_err().0, "not_an_object");
        assert_eq!(record(b"{oops", 100).unwrap_err().0, "not_json");
        assert_eq!(
            record(format!("{{\"a\":\"{}\"}}", "x".repeat(200)).as_bytes(), 100)
                .unwrap_err()
                .0,
            "record_too_large"
        );
    }
}
