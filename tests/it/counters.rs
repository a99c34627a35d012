//! Exactly-once scenario counters against a real redis-server: independent counts,
//! replays with the same and with other batch boundaries, and the dashboard JSON.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use redis::AsyncCommands;
use weir::aggregate::{BatchTally, Counters, CountersConfig, SuccessRatio, Tallied, Totals};
use weir_integration::{Service, unique};

/// A deterministic stream: event `i` of partition `p` goes to one of three scenarios,
/// matches, fails or is dropped by a fixed rule, and falls in one of a few minutes.
#[derive(Debug, Clone)]
struct Event {
    partition: i32,
    offset: i64,
    scenario: String,
    time_ms: i64,
    tallied: Tallied,
    matched: bool,
}

fn stream(tag: &str, partitions: i32, per_partition: i64) -> Vec<Event> {
    let base = Utc
        .with_ymd_and_hms(2026, 11, 26, 9, 0, 0)
        .unwrap()
        .timestamp_millis();
    let mut events = Vec::new();
    for partition in 0..partitions {
        for offset in 0..per_partition {
            let n = offset as u64 * 7 + partition as u64 * 13;
            let tallied = match n % 10 {
                0 => Tallied::Failed,
                1 | 2 => Tallied::Dropped,
                _ => Tallied::Emitted,
            };
            events.push(Event {
                partition,
                offset,
                scenario: format!("{tag}-{}", n % 3),
                time_ms: base + offset * 1_000,
                tallied,
                matched: !n.is_multiple_of(4),
            });
        }
    }
    events
}

/// Tallies `events` (one partition's, in offset order) cut into batches at `cuts`.
fn batches(topic: &str, events: &[Event], size: usize) -> Vec<BatchTally> {
    events
        .chunks(size)
        .map(|chunk| {
            let mut tally = BatchTally::new(topic, chunk[0].partition);
            for e in chunk {
                tally
                    .record(
                        &e.scenario,
                        "scenario@1",
                        e.offset,
                        e.time_ms,
                        e.tallied,
                        e.matched,
                    )
                    .expect("tally");
            }
            tally
        })
        .collect()
}

fn expected(events: &[Event]) -> BTreeMap<String, Totals> {
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    for e in events {
        let t = totals.entry(e.scenario.clone()).or_insert(Totals {
            total: 0,
            matched: 0,
            errors: 0,
            dropped: 0,
        });
        t.total += 1;
        t.matched += u64::from(e.matched);
        t.errors += u64::from(e.tallied == Tallied::Failed);
        t.dropped += u64::from(e.tallied == Tallied::Dropped);
    }
    totals
}

async fn counters(prefix: &str) -> Counters {
    counters_of(prefix, "weir-test").await
}

/// Counters on the stack's Redis under key prefix `prefix`, for consumer group `group`.
pub(crate) async fn counters_of(prefix: &str, group: &str) -> Counters {
    let config = CountersConfig {
        url: Service::Redis.addr(),
        key_prefix: prefix.into(),
        ..CountersConfig::default()
    };
    Counters::connect(&config, group)
        .await
        .expect("connect counters")
}

async fn observed(
    counters: &Counters,
    scenarios: impl Iterator<Item = &String>,
) -> BTreeMap<String, Totals> {
    let mut got = BTreeMap::new();
    for s in scenarios {
        got.insert(s.clone(), counters.totals(s).await.expect("totals"));
    }
    got
}

#[tokio::test]
async fn counts_equal_an_independent_count_and_replays_change_nothing() {
    let tag = unique("cnt");
    let counters = counters("weirtest").await;
    let events = stream(&tag, 3, 33_334); // 100,002 events
    let want = expected(&events);
    let now = Utc::now();

    let mut all_batches = Vec::new();
    for partition in 0..3 {
        let part: Vec<Event> = events
            .iter()
            .filter(|e| e.partition == partition)
            .cloned()
            .collect();
        all_batches.extend(batches("events", &part, 500));
    }
    for batch in &all_batches {
        counters.apply(batch, now).await.expect("apply");
    }
    assert_eq!(
        observed(&counters, want.keys()).await,
        want,
        "counts equal the independent count"
    );
    for (scenario, totals) in &want {
        let version = counters
            .version_totals(scenario, "scenario@1")
            .await
            .expect("version");
        assert_eq!(&version, totals);
        let versions = counters.by_version(scenario).await.expect("versions");
        assert_eq!(
            versions.into_iter().collect::<Vec<_>>(),
            [("scenario@1".to_owned(), *totals)]
        );
    }

    // The same batches again: every one is skipped by the fences.
    for batch in &all_batches {
        let applied = counters.apply(batch, now).await.expect("apply again");
        assert!(
            applied.iter().all(|a| a.newly_counted == 0),
            "a replayed batch counted again"
        );
    }
    assert_eq!(
        observed(&counters, want.keys()).await,
        want,
        "replays leave every counter unchanged"
    );

    // The per-minute buckets add up to the totals.
    for (scenario, totals) in &want {
        let from = events[0].time_ms - 60_000;
        let to = from + 24 * 3_600_000;
        let minutes = counters
            .minutes(scenario, from, to, 24 * 60)
            .await
            .expect("minutes");
        let sum: u64 = minutes.iter().map(|m| m.total).sum();
        let success: u64 = minutes.iter().map(|m| m.success).sum();
        let errors: u64 = minutes.iter().map(|m| m.errors).sum();
        assert_eq!(
            (sum, success, errors),
            (totals.total, totals.matched, totals.errors),
            "{scenario}"
        );
    }
}

#[tokio::test]
async fn a_replay_with_other_batch_boundaries_counts_each_event_once() {
    let tag = unique("cnt");
    let counters = counters("weirtest").await;
    let events = stream(&tag, 1, 3_000);
    let want = expected(&events);
    let now = Utc::now();

    // The first run applies 1,700 events in batches of 100, then "crashes" before
    // committing the last 700 of them.
    for batch in batches("events", &events[..1_700], 100) {
        counters.apply(&batch, now).await.expect("apply");
    }
    // The restart resumes from the last commit (offset 1,000) with batches of 450,
    // which straddle what was applied and what was not.
    let mut newly = 0;
    for batch in batches("events", &events[1_000..], 450) {
        newly += counters
            .apply(&batch, now)
            .await
            .expect("apply")
            .iter()
            .map(|a| a.newly_counted)
            .sum::<u64>();
    }
    assert_eq!(
        newly, 1_300,
        "only the events beyond the fence were counted on replay"
    );
    assert_eq!(observed(&counters, want.keys()).await, want);

    // Another consumer group has fences of its own.
    let other = Counters::connect(
        &CountersConfig {
            url: Service::Redis.addr(),
            key_prefix: "weirtest".into(),
            ..CountersConfig::default()
        },
        "another-group",
    )
    .await
    .expect("connect");
    let applied = other
        .apply(&batches("events", &events[..10], 10)[0], now)
        .await
        .expect("apply");
    assert_eq!(applied.iter().map(|a| a.newly_counted).sum::<u64>(), 10);
}

#[tokio::test]
async fn success_ratio_json_matches_the_dashboard_format() {
    let tag = unique("ratio");
    let counters = counters("weirtest").await;
    let scenario = format!("{tag}-5");
    let mut tally = BatchTally::new("events", 0);
    for offset in 0..100 {
        let matched = offset < 85;
        tally
            .record(
                &scenario,
                "scenario@1",
                offset,
                0,
                Tallied::Emitted,
                matched,
            )
            .expect("tally");
    }
    let now = Utc.with_ymd_and_hms(2025, 6, 18, 12, 50, 10).unwrap();
    counters.apply(&tally, now).await.expect("apply");

    let mut conn = redis::Client::open(Service::Redis.addr())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let raw: String = conn
        .get(format!("scenario:{scenario}:success_ratio"))
        .await
        .expect("GET");
    assert_eq!(
        raw,
        r#"{"success_ratio":0.85,"total_count":100,"success_count":85,"updated_at":"2025-06-18 12:50:10"}"#
    );
    let value: serde_json::Value = serde_json::from_str(&raw).expect("JSON");
    assert!(
        value["success_ratio"].is_f64()
            && value["total_count"].is_u64()
            && value["success_count"].is_u64()
    );
    assert!(value["updated_at"].is_string());
    let parsed: SuccessRatio = serde_json::from_str(&raw).expect("round trip");
    assert_eq!(parsed.total_count, 100);
}
