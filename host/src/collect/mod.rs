//! The front door: a public HTTP listener of its own (`[collect] listen`,
//! default `127.0.0.1:8090`, apart from the admin API and with none of its
//! routes) that turns tracking hits and JSON records into Kafka records.
//!
//! - `GET /{scenario_id}?…`: the tracking pixel. Every query parameter becomes a
//!   field, `scenario_id` comes from the path (`hit.rs`).
//! - `GET`/`POST /matomo.php` and `/piwik.php`: the Matomo tracking HTTP API,
//!   single and bulk requests, as a Matomo tracker sends them (`hit.rs`).
//! - `POST /collect/{stream}`: one JSON object, a JSON array or NDJSON, each
//!   record checked on its own (`ingest.rs`).
//!
//! A `2xx` answer means the broker acknowledged every record of the request
//! (idempotent producer, `acks=all`); when it does not within the produce
//! timeout, or the memory for requests in flight is used up, the answer is
//! `503` with `Retry-After`, never an accept-and-drop (`produce.rs`). Records
//! refused for their content go to the bad-records topic with the reason, and
//! the client is told which and why. Server-side fields (received time, client
//! address, user agent, an optional visitor cookie) are added to every event
//! (`client.rs`). The user's documentation is `docs/collect.md`.

mod client;
mod hit;
mod ingest;
mod produce;
pub mod tail;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::api::ApiError;
use crate::http::HttpLimits;
pub use client::ClientRules;
pub use produce::{CollectMetrics, Front};

/// The `[collect]` section of the service's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// Run the collector (default true).
    pub enabled: bool,
    /// Address of the public listener (default `127.0.0.1:8090`).
    pub listen: String,
    /// Topic of tracking hits (pixel and Matomo); default the first topic the
    /// pipeline consumes, so a first run needs no configuration.
    pub topic: Option<String>,
    /// Topic of records refused for their content, with the reason.
    pub bad_topic: String,
    /// JSON streams: `POST /collect/<name>` goes to the stream's topic. Default:
    /// `events` (the hits topic), `logs` (`logs.raw`), `activities`
    /// (`events.activity`).
    pub streams: BTreeMap<String, StreamConfig>,
    /// Networks of proxies whose `X-Forwarded-For` is believed (CIDR, e.g.
    /// `127.0.0.1/32`); from any other peer the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// Zero the last octet of IPv4 client addresses and the last 80 bits of
    /// IPv6 ones before anything is stored.
    pub anonymize_ip: bool,
    /// Name of a first-party cookie holding a visitor id, set on tracking
    /// answers when absent; its value becomes the `visitor_id` field. None: no
    /// cookie (the default).
    pub visitor_cookie: Option<String>,
    /// Send the visitor cookie `SameSite=None; Secure` so that pages on other
    /// sites may set it (needs HTTPS in front); default `SameSite=Lax`.
    pub visitor_cookie_cross_site: bool,
    /// Origins allowed to call from a browser (CORS); `["*"]`, the default,
    /// allows any and answers with the caller's origin and credentials.
    pub cors_origins: Vec<String>,
    /// Largest request body, bytes (default 1 MiB); larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest record of a JSON stream or bulk request, bytes (default 64 KiB).
    pub max_record_bytes: usize,
    /// Most tracking requests in one Matomo bulk request (default 1,000; the
    /// JavaScript tracker sends 50); more get 413.
    pub max_bulk_requests: usize,
    /// Largest request target (path and query), bytes (default 8 KiB); longer
    /// ones get 414.
    pub max_query_bytes: usize,
    /// Largest request head, bytes (default 16 KiB); larger ones get 431.
    pub max_header_bytes: usize,
    /// Headers must arrive within this many ms, and idle keep-alive connections
    /// close after it (default 10,000).
    pub header_timeout_ms: u64,
    /// A whole request, body included, must be read and answered within this
    /// many ms (default 15,000); slower ones get 408.
    pub request_timeout_ms: u64,
    /// Most connections open at once (default 4096).
    pub max_connections: usize,
    /// Most requests handled at once; past it, 503 at once (default 1024).
    pub max_concurrent_requests: usize,
    /// Most request bytes held while waiting for the broker (default 64 MiB);
    /// past it, 503.
    pub max_in_flight_bytes: usize,
    /// How long the broker has to acknowledge a request's records before the
    /// client gets 503, ms (default 5,000).
    pub produce_timeout_ms: u64,
    /// The `Retry-After` of 503 answers, seconds (default 5).
    pub retry_after_secs: u64,
    /// Extra librdkafka producer settings (e.g. `compression.type`).
    pub kafka: BTreeMap<String, String>,
    /// Log files to follow into Kafka (`[[collect.tail]]`).
    pub tail: Vec<tail::TailConfig>,
}

/// One JSON stream of `[collect.streams.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Kafka topic the stream's records go to.
    pub topic: String,
    /// A shared key senders must present (`Authorization: Bearer <key>` or
    /// `X-Weir-Key`); such trusted senders may also set the server-side fields
    /// themselves (forwarding what they know of their own clients).
    pub key: Option<String>,
    /// A record field whose text becomes the Kafka record key.
    pub key_field: Option<String>,
}

impl Default for CollectConfig {
    fn default() -> Self {
        let stream = |topic: &str| StreamConfig {
            topic: topic.into(),
            key: None,
            key_field: None,
        };
        Self {
            enabled: true,
            listen: "127.0.0.1:8090".into(),
            topic: None,
            bad_topic: "weir.collect.bad".into(),
            streams: BTreeMap::from([
                ("logs".into(), stream("logs.raw")),
                ("activities".into(), stream("events.activity")),
            ]),
            trusted_proxies: Vec::new(),
            anonymize_ip: false,
            visitor_cookie: None,
            visitor_cookie_cross_site: false,
            cors_origins: vec!["*".into()],
            max_body_bytes: 1 << 20,
            max_record_bytes: 64 << 10,
            max_bulk_requests: 1_000,
            max_query_bytes: 8 << 10,
            max_header_bytes: 16 << 10,
            header_timeout_ms: 10_000,
            request_timeout_ms: 15_000,
            max_connections: 4096,
            max_concurrent_requests: 1024,
            max_in_flight_bytes: 64 << 20,
            produce_timeout_ms: 5_000,
            retry_after_secs: 5,
            kafka: BTreeMap::new(),
            tail: Vec::new(),
        }
    }
}

/// The name of the default stream that goes to the hits topic.
pub const EVENTS_STREAM: &str = "events";

impl CollectConfig {
    /// The streams with the defaults filled in: `events` goes to `hits_topic`
    /// unless configured otherwise.
    pub fn streams_with(&self, hits_topic: &str) -> BTreeMap<String, StreamConfig> {
        let mut streams = self.streams.clone();
        streams
            .entry(EVENTS_STREAM.into())
            .or_insert_with(|| StreamConfig {
                topic: hits_topic.into(),
                key: None,
                key_field: None,
            });
        streams
    }

    /// Every topic the collector writes, given the hits topic.
    pub fn topics(&self, hits_topic: &str) -> Vec<String> {
        let mut topics = vec![hits_topic.to_owned(), self.bad_topic.clone()];
        topics.extend(self.tail.iter().map(|t| t.topic.clone()));
        for stream in self.streams_with(hits_topic).into_values() {
            if !topics.contains(&stream.topic) {
                topics.push(stream.topic);
            }
        }
        topics
    }

    /// Every problem with this section, as `collect.<field>: reason`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "collect.listen = {:?}: expected an IP address and port, e.g. 127.0.0.1:8090",
                self.listen
            ));
        }
        let topic_ok = |t: &str| crate::registry::valid_topic(t);
        if let Some(topic) = &self.topic
            && !topic_ok(topic)
        {
            problems.push(format!("collect.topic = {topic:?}: not a Kafka topic name"));
        }
        if !topic_ok(&self.bad_topic) {
            problems.push(format!(
                "collect.bad_topic = {:?}: not a Kafka topic name",
                self.bad_topic
            ));
        }
        for (name, stream) in &self.streams {
            if !client::valid_name(name) {
                problems.push(format!(
                    "collect.streams.{name}: a stream name is 1-64 letters, digits, `.`, `_` or `-`"
                ));
            }
            if !topic_ok(&stream.topic) {
                problems.push(format!(
                    "collect.streams.{name}.topic = {:?}: not a Kafka topic name",
                    stream.topic
                ));
            }
            if let Some(key) = &stream.key
                && (key.len() < crate::api::MIN_TOKEN_LEN
                    || !key.bytes().all(|b| b.is_ascii_graphic()))
            {
                problems.push(format!(
                    "collect.streams.{name}.key: must be at least {} printable ASCII characters \
                     without spaces",
                    crate::api::MIN_TOKEN_LEN
                ));
            }
        }
        for proxy in &self.trusted_proxies {
            if client::parse_network(proxy).is_none() {
                problems.push(format!(
                    "collect.trusted_proxies: {proxy:?} is not an address or network \
                     (e.g. 10.0.0.0/8, ::1/128)"
                ));
            }
        }
        if let Some(name) = &self.visitor_cookie
            && !client::valid_name(name)
        {
            problems.push(format!(
                "collect.visitor_cookie = {name:?}: a cookie name is 1-64 letters, digits, `.`, \
                 `_` or `-`"
            ));
        }
        for origin in &self.cors_origins {
            if origin != "*" && HeaderValue::from_str(origin).is_err() {
                problems.push(format!("collect.cors_origins: {origin:?} is not an origin"));
            }
        }
        let at_least = |field: &str, value: u64, min: u64, problems: &mut Vec<String>| {
            if value < min {
                problems.push(format!("collect.{field} = {value}: use at least {min}"));
            }
        };
        at_least(
            "max_body_bytes",
            self.max_body_bytes as u64,
            1024,
            &mut problems,
        );
        at_least(
            "max_record_bytes",
            self.max_record_bytes as u64,
            256,
            &mut problems,
        );
        at_least(
            "max_query_bytes",
            self.max_query_bytes as u64,
            256,
            &mut problems,
        );
        at_least(
            "max_header_bytes",
            self.max_header_bytes as u64,
            8192,
            &mut problems,
        );
        at_least(
            "header_timeout_ms",
            self.header_timeout_ms,
            100,
            &mut problems,
        );
        at_least(
            "request_timeout_ms",
            self.request_timeout_ms,
            100,
            &mut problems,
        );
        at_least(
            "max_connections",
            self.max_connections as u64,
            1,
            &mut problems,
        );
        at_least(
            "max_concurrent_requests",
            self.max_concurrent_requests as u64,
            1,
            &mut problems,
        );
        at_least(
            "max_in_flight_bytes",
            self.max_in_flight_bytes as u64,
            self.max_body_bytes as u64,
            &mut problems,
        );
        at_least(
            "produce_timeout_ms",
            self.produce_timeout_ms,
            100,
            &mut problems,
        );
        for (index, tail) in self.tail.iter().enumerate() {
            problems.extend(tail.problems(index));
        }
        problems
    }

    /// The listener's connection limits.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections,
            ..HttpLimits::default()
        }
    }
}

/// The collector's routes over `front`, with its limits as tower layers.
pub fn router(front: Arc<Front>) -> Router {
    let config = front.config();
    let cors = cors(&config.cors_origins);
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let max_query = config.max_query_bytes;
    let max_header = config.max_header_bytes;
    let concurrency = config.max_concurrent_requests;
    let retry_after = config.retry_after_secs;
    let telemetry = front.metrics().telemetry.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/matomo.php",
            get(hit::matomo).post(hit::matomo).head(hit::matomo),
        )
        .route(
            "/piwik.php",
            get(hit::matomo).post(hit::matomo).head(hit::matomo),
        )
        .route("/collect/{stream}", post(ingest::collect))
        .route("/{scenario_id}", get(hit::pixel).head(hit::pixel))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint: the collector takes GET /{scenario_id}?…, \
                 GET|POST /matomo.php and POST /collect/{stream}",
            )
        })
        .with_state(front)
        .layer(
            ServiceBuilder::new()
                // Outermost first: every answer is counted, then CORS answers
                // preflights before any limit.
                .layer(axum::middleware::from_fn(move |request, next| {
                    count_request(request, next, telemetry.clone())
                }))
                .layer(cors)
                .layer(axum::middleware::from_fn(move |request, next| {
                    limit_head(request, next, max_query, max_header)
                }))
                .layer(HandleErrorLayer::new(
                    move |_: tower::BoxError| async move {
                        unavailable(
                            retry_after,
                            "the collector is handling as many requests as it may; try again",
                        )
                    },
                ))
                .load_shed()
                .concurrency_limit(concurrency)
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    timeout,
                )),
        )
}

/// Counts the answer to `request` by endpoint and status
/// (`weir_collect_requests_total`).
async fn count_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    telemetry: crate::telemetry::Telemetry,
) -> axum::response::Response {
    let endpoint = endpoint_of(request.uri().path());
    let response = next.run(request).await;
    telemetry
        .counter(
            "weir_collect_requests_total",
            &[
                ("endpoint", endpoint),
                ("status", response.status().as_str()),
            ],
        )
        .increment(1);
    response
}

/// The endpoint a path names, for metrics (never the path itself: a pixel's
/// path is a scenario id, and anyone may send any path).
fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/healthz" => "healthz",
        "/matomo.php" | "/piwik.php" => "matomo",
        p if p.starts_with("/collect/") => "collect",
        p if p.len() > 1 && !p[1..].contains('/') => "pixel",
        _ => "other",
    }
}

/// CORS for browsers: any origin (mirrored, with credentials, as Matomo answers)
/// or the configured ones.
fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(3600))
}

/// 414 for a request target longer than the limit, 431 for headers larger
/// than theirs.
async fn limit_head(request: Request, next: Next, max: usize, max_header: usize) -> Response {
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > max_header {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!("the request's headers have {headers} bytes; the collector takes at most {max_header}"),
        )
        .into_response();
    }
    let len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if len > max {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            format!("the request target has {len} bytes; the collector takes at most {max} (send large hits as POST bodies)"),
        )
        .into_response();
    }
    next.run(request).await
}

/// 503 with `Retry-After`.
pub(crate) fn unavailable(retry_after_secs: u64, detail: impl Into<String>) -> Response {
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}
