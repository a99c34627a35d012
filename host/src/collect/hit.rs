//! Tracking hits: the pixel (`GET /{scenario_id}?…`) and the Matomo tracking
//! HTTP API (`/matomo.php`, `/piwik.php`), single requests by GET or POST (a
//! form body, or `navigator.sendBeacon`'s) and bulk requests
//! (`{"requests": ["?idsite=1&rec=1&…", …]}`), answered as Matomo answers: a
//! 1x1 transparent GIF, `204` with `send_image=0`, the bulk JSON summary.
//!
//! Every parameter becomes a text field of the event, as sent (decoded);
//! `scenario_id` is the pixel's path or Matomo's `idsite`. `token_auth` (a
//! secret) and the cache busters `r` and `rand` are dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::client::Client;
use super::produce::{Front, Outgoing, Refusal, encode};
use crate::api::ApiError;
use crate::registry::FieldError;

/// A 1x1 transparent GIF (GIF89a, one colour, that colour transparent).
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Parameters never stored: a secret and cache busters.
const DROPPED: [&str; 4] = ["token_auth", "r", "rand", "send_image"];

/// Parameters in order, duplicates resolved: the last one wins (as PHP reads a
/// query string).
type Params = Vec<(String, String)>;

fn parse_params(text: &[u8]) -> Params {
    let mut params: Params = Vec::new();
    for (key, value) in form_urlencoded::parse(text) {
        if key.is_empty() {
            continue;
        }
        match params.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value.into_owned(),
            None => params.push((key.into_owned(), value.into_owned())),
        }
    }
    params
}

fn get<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The event of one hit: every kept parameter as text, `scenario_id`, and
/// the server-side fields (which no parameter may set).
fn event(params: &Params, scenario_id: &str, client: &Client) -> Map<String, Value> {
    let mut event = Map::new();
    for (key, value) in params {
        if !DROPPED.contains(&key.as_str()) {
            event.insert(key.clone(), Value::from(value.clone()));
        }
    }
    event.insert(
        crate::pipeline::route::SCENARIO_FIELD.into(),
        Value::from(scenario_id),
    );
    client.stamp(&mut event, true);
    event
}

/// The Kafka key of a hit: the visitor as the tracker knows it (`_id`, then
/// `uid`), else the visitor cookie; a visitor's hits stay in order.
fn key_of(params: &Params, client: &Client) -> Option<String> {
    get(params, "_id")
        .or_else(|| get(params, "uid"))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| client.visitor.as_ref().map(|v| v.id.clone()))
}

/// 200 with the GIF, or 204 when asked; with the visitor cookie when new.
fn answer(send_image: bool, client: &Client) -> Response {
    let mut response = if send_image {
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            PIXEL_GIF.as_slice(),
        )
            .into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    if let Some(cookie) = client.visitor.as_ref().and_then(|v| v.set_cookie.clone()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /{scenario_id}?…`: one event with every query parameter.
pub(super) async fn pixel(
    State(front): State<Arc<Front>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(scenario_id): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let client = front.rules().client(peer, &headers, true);
    let query = request.uri().query().unwrap_or("");
    if !crate::registry::valid_id(&scenario_id) {
        let detail = format!(
            "{scenario_id:?} is not a scenario id (1-128 letters, digits, `.`, `_` or `-`)"
        );
        front.refuse(
            &client,
            Refusal {
                reason: "invalid_scenario_id",
                detail: detail.clone(),
                endpoint: "pixel",
                stream: None,
                index: None,
                raw: request.uri().to_string().as_bytes(),
            },
        );
        return ApiError::new(StatusCode::NOT_FOUND, "invalid-scenario-id", detail).into_response();
    }
    let params = parse_params(query.as_bytes());
    let _room = match front.room(query.len() + 1024).await {
        Ok(room) => room,
        Err(response) => return response,
    };
    let record = Outgoing {
        key: key_of(&params, &client),
        payload: encode(&event(&params, &scenario_id, &client)),
        timestamp_ms: client.received_ms,
    };
    if let Err(response) = front.send(front.hits_topic(), "pixel", vec![record]).await {
        return response;
    }
    answer(get(&params, "send_image") != Some("0"), &client)
}

/// Reads a request body of at most the configured size, holding room for it
/// among the bytes in flight.
pub(super) async fn read_body(
    front: &Front,
    request: Request,
) -> Result<(bytes::Bytes, tokio::sync::OwnedSemaphorePermit), Response> {
    let max = front.config().max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared
        && len > max
    {
        return Err(too_large(len, max));
    }
    let room = front.room(declared.unwrap_or(max)).await?;
    match axum::body::to_bytes(request.into_body(), max).await {
        Ok(body) => Ok((body, room)),
        Err(error) => {
            // Over the limit, or the client went away or timed out mid-body.
            let too_big = error
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if too_big {
                Err(too_large(max + 1, max))
            } else {
                Err(ApiError::bad_request(
                    "reading the body failed: the client sent less than it announced, or stopped",
                )
                .into_response())
            }
        }
    }
}

/// The 413 for a body over the limit. The body is left unread, so the
/// connection cannot carry another request: `Connection: close` says so, and a
/// client with a pool does not send its next request down a socket that the
/// server is about to shut.
fn too_large(len: usize, max: usize) -> Response {
    let mut response = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!(
            "the body has {}{len} bytes; the collector takes at most {max} per request \
             (split it)",
            if len > max { "more than " } else { "" }
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What one Matomo request asks.
enum Tracked {
    /// A hit to record.
    Hit(Map<String, Value>, Option<String>),
    /// `rec` missing or not 1: answered, not recorded.
    NotRecorded,
}

/// Checks one Matomo request's parameters.
fn matomo_hit(params: &Params, client: &Client) -> Result<Tracked, (&'static str, String)> {
    let idsite = get(params, "idsite").unwrap_or("");
    let valid_site = !idsite.is_empty()
        && idsite.len() <= 18
        && idsite.bytes().all(|b| b.is_ascii_digit())
        && idsite.parse::<u64>().is_ok_and(|n| n > 0);
    if !valid_site {
        return Err((
            if idsite.is_empty() {
                "missing_idsite"
            } else {
                "invalid_idsite"
            },
            format!("idsite={idsite:?}: every tracking request needs idsite, a positive integer"),
        ));
    }
    if get(params, "rec") != Some("1") {
        return Ok(Tracked::NotRecorded);
    }
    Ok(Tracked::Hit(
        event(params, idsite, client),
        key_of(params, client),
    ))
}

/// `GET`/`POST /matomo.php` (and `/piwik.php`).
pub(super) async fn matomo(
    State(front): State<Arc<Front>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let client = front.rules().client(peer, &headers, true);
    let query = parse_params(request.uri().query().unwrap_or("").as_bytes());
    let (body, _room) = if method == Method::POST {
        match read_body(&front, request).await {
            Ok(read) => read,
            Err(response) => return response,
        }
    } else {
        drop(request);
        match front.room(1024).await {
            Ok(room) => (bytes::Bytes::new(), room),
            Err(response) => return response,
        }
    };
    // Matomo takes any body that mentions "requests" as a bulk request, whatever
    // its Content-Type (sendBeacon sends it as a form or as text/plain).
    if body.windows(10).any(|w| w == b"\"requests\"") {
        return bulk(&front, &client, &body).await;
    }
    // GET parameters win over the body's, as Matomo merges them.
    let mut params = query;
    for (key, value) in parse_params(&body) {
        if get(&params, &key).is_none() {
            params.push((key, value));
        }
    }
    if params.is_empty() {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This is weir's Matomo-compatible tracking endpoint: send idsite, rec=1 and the \
             tracking parameters (docs/collect.md).\n",
        )
            .into_response();
    }
    let send_image = get(&params, "send_image") != Some("0");
    match matomo_hit(&params, &client) {
        Ok(Tracked::Hit(event, key)) => {
            let record = Outgoing {
                key,
                payload: encode(&event),
                timestamp_ms: client.received_ms,
            };
            if let Err(response) = front.send(front.hits_topic(), "matomo", vec![record]).await {
                return response;
            }
            answer(send_image, &client)
        }
        Ok(Tracked::NotRecorded) => {
            front.not_recorded();
            answer(send_image, &client)
        }
        Err((reason, detail)) => {
            let raw = params_text(&params);
            front.refuse(
                &client,
                Refusal {
                    reason,
                    detail: detail.clone(),
                    endpoint: "matomo",
                    stream: None,
                    index: None,
                    raw: raw.as_bytes(),
                },
            );
            ApiError::bad_request(detail).into_response()
        }
    }
}

/// The parameters as a query string again (for the bad-records topic).
fn params_text(params: &Params) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().filter(|(k, _)| k != "token_auth"))
        .finish()
}

/// A bulk request: each entry checked on its own; the valid ones produced
/// together; the answer Matomo's summary.
async fn bulk(front: &Front, client: &Client, body: &[u8]) -> Response {
    let parsed: Result<Map<String, Value>, _> = serde_json::from_slice(body);
    let mut top = match parsed {
        Ok(top) => top,
        Err(error) => {
            let detail = format!("a bulk request is a JSON object with `requests`: {error}");
            front.refuse(
                client,
                Refusal {
                    reason: "invalid_bulk",
                    detail: detail.clone(),
                    endpoint: "matomo",
                    stream: None,
                    index: None,
                    raw: body,
                },
            );
            return ApiError::bad_request(detail).into_response();
        }
    };
    let send_image =
        !matches!(top.get("send_image"), Some(v) if v == &json!(0) || v == &json!("0"));
    let entries = match top.remove("requests") {
        Some(Value::Array(entries)) => entries,
        _ => {
            return ApiError::bad_request("`requests` must be an array of tracking requests")
                .into_response();
        }
    };
    let max = front.config().max_bulk_requests;
    if entries.len() > max {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-many-requests-in-bulk",
            format!(
                "the bulk request holds {} tracking requests; at most {max} are taken at once \
                 (split it)",
                entries.len()
            ),
        )
        .into_response();
    }
    let mut records = Vec::new();
    let mut invalid = Vec::new();
    let mut errors = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let params = match entry {
            Value::String(text) => {
                let query = text.split_once('?').map_or(text.as_str(), |(_, q)| q);
                parse_params(query.as_bytes())
            }
            Value::Object(fields) => fields
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect(),
            _ => Vec::new(),
        };
        match matomo_hit(&params, client) {
            Ok(Tracked::Hit(event, key)) => records.push(Outgoing {
                key,
                payload: encode(&event),
                timestamp_ms: client.received_ms,
            }),
            Ok(Tracked::NotRecorded) => front.not_recorded(),
            Err((reason, detail)) => {
                let raw = entry.to_string();
                front.refuse(
                    client,
                    Refusal {
                        reason,
                        detail: detail.clone(),
                        endpoint: "matomo",
                        stream: None,
                        index: Some(index),
                        raw: raw.as_bytes(),
                    },
                );
                invalid.push(index);
                errors.push(FieldError {
                    field: format!("requests[{index}]"),
                    reason: detail,
                });
            }
        }
    }
    let tracked = entries.len() - invalid.len();
    if !records.is_empty()
        && let Err(response) = front.send(front.hits_topic(), "matomo", records).await
    {
        return response;
    }
    if !send_image {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut response = axum::Json(json!({
        "status": "success",
        "tracked": tracked,
        "invalid": invalid.len(),
        "invalid_indices": invalid,
        "errors": errors,
    }))
    .into_response();
    if let Some(cookie) = client.visitor.as_ref().and_then(|v| v.set_cookie.clone()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_is_a_43_byte_transparent_gif() {
        assert_eq!(&PIXEL_GIF[..6], b"GIF89a");
        assert_eq!(PIXEL_GIF.len(), 43);
        assert_eq!(PIXEL_GIF[PIXEL_GIF.len() - 1], 0x3b, "the trailer");
        // Graphic control extension: transparent colour flag set, index 0.
        assert_eq!(&PIXEL_GIF[19..23], &[0x21, 0xf9, 0x04, 0x01]);
    }

    #[test]
    fn parameters_are_decoded_and_the_last_duplicate_wins() {
        let params =
            parse_params(b"e_c=button%20Click&url=http%3A%2F%2Fx%2F%3Fa%3D1&e_c=Second&=x&k");
        assert_eq!(get(&params, "e_c"), Some("Second"));
        assert_eq!(get(&params, "url"), Some("http://x/?a=1"));
        assert_eq!(get(&params, "k"), Some(""));
        assert_eq!(params.len(), 3, "an empty name is skipped: {params:?}");
    }

    #[test]
    fn matomo_needs_a_positive_idsite_and_records_only_rec_1() {
        let client = Client {
            ip: "127.0.0.1".parse().unwrap(),
            user_agent: None,
            visitor: None,
            received_ms: 1,
        };
        let hit = |q: &str| matomo_hit(&parse_params(q.as_bytes()), &client);
        assert!(matches!(hit("rec=1"), Err(("missing_idsite", _))));
        assert!(matches!(hit("idsite=0&rec=1"), Err(("invalid_idsite", _))));
        assert!(matches!(hit("idsite=-1&rec=1"), Err(("invalid_idsite", _))));
        assert!(matches!(hit("idsite=7"), Ok(Tracked::NotRecorded)));
        let Ok(Tracked::Hit(event, key)) =
            hit("idsite=7&rec=1&_id=abc&token_auth=secret&rand=9&client_ip=6.6.6.6")
        else {
            panic!("a hit")
        };
        assert_eq!(event["scenario_id"], "7");
        assert_eq!(event["idsite"], "7");
        assert_eq!(event["client_ip"], "127.0.0.1", "no parameter sets it");
        assert!(!event.contains_key("token_auth") && !event.contains_key("rand"));
        assert_eq!(key.as_deref(), Some("abc"));
    }
}
