//! `weir serve --demo`: the example scenario 5 ("adult male users who clicked buy
//! after 9 o'clock"), the members it is enriched from, and a feed of generated
//! tracking hits sent to the collector over HTTP as a tracking pixel would
//! (`GET /5?memberId=…&h=…`), so a first run exercises the front door and shows
//! live counts within seconds.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::registry::Member;

/// Id of the demo scenario.
pub const SCENARIO_ID: &str = "5";

/// How many members the demo imports (`m0000` to `m0199`).
pub const MEMBERS: u64 = 200;

/// Scenario 5 as users write it, plus weir's fields: the shipped `scenario` plugin,
/// enrichment by `memberId`.
pub fn scenario() -> Value {
    json!({
        "scenario_id": 5,
        "title": "adult male users who clicked buy after 9 o'clock",
        "manager": "demo",
        "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1, "url": 1, "ts": 1},
        "filters": [
            {"left": "age", "operator": ">", "right": 20},
            {"left": "gender", "operator": "==", "right": "MALE"},
            {"left": "h", "operator": ">=", "right": 9}
        ],
        "logical_operator": "AND",
        "enrich": {"by": "memberId"},
        "enabled": true
    })
}

/// The demo's members: ages 14 to 63, alternating genders.
pub fn members() -> Vec<Member> {
    (0..MEMBERS)
        .map(|i| Member {
            member_id: format!("m{i:04}"),
            attributes: json!({
                "age": 14 + (i * 7) % 50,
                "gender": if i % 2 == 0 { "MALE" } else { "FEMALE" },
            })
            .as_object()
            .expect("an object")
            .clone(),
        })
        .collect()
}

/// Tracking event number `i`, at `now_ms`.
pub fn event(i: u64, now_ms: i64) -> Vec<u8> {
    let actions = ["조회", "장바구니", "구매"];
    let value = json!({
        "scenario_id": 5,
        "memberId": format!("m{:04}", (i * 37) % MEMBERS),
        "h": (i / 7) % 24,
        "e_n": actions[(i % 3) as usize],
        "url": format!("/goods/{}", i % 120),
        "ts": now_ms,
    });
    serde_json::to_vec(&value).expect("event JSON")
}

/// The query of demo hit number `i`, at `now_ms`: the fields of [`event`] as
/// tracking parameters.
pub fn hit(i: u64, now_ms: i64) -> Vec<(&'static str, String)> {
    let actions = ["조회", "장바구니", "구매"];
    vec![
        ("memberId", format!("m{:04}", (i * 37) % MEMBERS)),
        ("h", ((i / 7) % 24).to_string()),
        ("e_n", actions[(i % 3) as usize].to_owned()),
        ("url", format!("/goods/{}", i % 120)),
        ("ts", now_ms.to_string()),
    ]
}

/// Sends `rate` demo hits per second to the collector at `addr` until `stop`,
/// each a pixel request on a kept-alive connection.
pub async fn feed_http(
    addr: std::net::SocketAddr,
    rate: u32,
    limit: Option<u64>,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "demo feed could not start");
            return;
        }
    };
    let url = format!("http://{addr}/{SCENARIO_ID}");
    let period = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1) as u64;
    let mut i = 0u64;
    let mut warned = false;
    tracing::info!(%url, rate, "demo feed started (through the collector)");
    while !stop.is_cancelled() && limit.is_none_or(|n| i < n) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let per_tick = limit.map_or(per_tick, |n| per_tick.min(n - i));
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..per_tick {
            let request = client.get(&url).query(&hit(i, now_ms));
            sends.spawn(async move { request.send().await.map(|r| r.status()) });
            i += 1;
        }
        while let Some(sent) = sends.join_next().await {
            let failed = match sent {
                Ok(Ok(status)) if status.is_success() => None,
                Ok(Ok(status)) => Some(status.to_string()),
                Ok(Err(err)) => Some(err.to_string()),
                Err(err) => Some(err.to_string()),
            };
            if let Some(reason) = failed
                && !warned
            {
                warned = true;
                tracing::warn!(%reason, "a demo hit was not taken (further ones are not logged)");
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Produces `rate` demo events per second to `topic` until `stop` (when the
/// collector is turned off).
pub async fn feed(
    brokers: String,
    topic: String,
    rate: u32,
    limit: Option<u64>,
    stop: CancellationToken,
) {
    let producer: ThreadedProducer<DefaultProducerContext> = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()
    {
        Ok(producer) => producer,
        Err(err) => {
            tracing::error!(error = %err, "demo feed could not start");
            return;
        }
    };
    let period = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1) as u64;
    let mut i = 0u64;
    tracing::info!(topic = %topic, rate, "demo feed started");
    while !stop.is_cancelled() && limit.is_none_or(|n| i < n) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let per_tick = limit.map_or(per_tick, |n| per_tick.min(n - i));
        for _ in 0..per_tick {
            let value = event(i, now_ms);
            let key = format!("m{:04}", (i * 37) % MEMBERS);
            let record = BaseRecord::to(&topic).payload(&value).key(&key);
            if let Err((err, _)) = producer.send(record) {
                tracing::warn!(error = %err, "demo event not sent");
            }
            i += 1;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
}
