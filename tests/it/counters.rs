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

/// Counters on the stack's Redis under key prefix `prefix`, for a consumer group
/// of their own.
async fn counters(prefix: &str) -> Counters {
    counters_of(prefix, &unique("group")).await
}

/// Counters on the stack's Redis under key prefix `prefix`, for consumer group
/// `group`, which also writes the success-ratio views.
pub(crate) async fn counters_of(prefix: &str, group: &str) -> Counters {
    let config = CountersConfig {
        url: Service::Redis.addr(),
        key_prefix: prefix.into(),
        success_ratio_group: group.into(),
        ..CountersConfig::default()
    };
    Counters::connect(&config, group)
        .await
        .expect("connect counters")
}

/// A plain connection to the stack's Redis, to read keys as dashboards do.
async fn raw_redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(Service::Redis.addr())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
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
        &unique("another-group"),
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

    let mut conn = raw_redis().await;
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

/// Copies `from` to `to`, holding every chunk for `delay`.
async fn pass_late(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// A TCP proxy to `upstream` that holds every chunk for `delay` in both directions:
/// a replica whose Redis writes arrive late. Returns its port.
async fn delaying_proxy(upstream: String, delay: std::time::Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream)
                .await
                .expect("upstream");
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pass_late(client_read, server_write, delay));
            tokio::spawn(pass_late(server_read, client_write, delay));
        }
    });
    port
}

/// Two replicas of one group count one scenario from different partitions; one
/// replica's Redis traffic is held back 150 ms each way, so its success-ratio
/// views are computed from older counts than the other's when they arrive. The
/// view read by dashboards never goes back, and ends equal to the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_success_ratio_view_never_goes_back_when_a_replica_is_slow() {
    let tag = unique("ratio");
    let group = unique("group");
    let scenario = format!("{tag}-s");
    let fast = counters_of("weirtest", &group).await;
    let addr = Service::Redis.addr();
    let upstream = addr
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let port = delaying_proxy(upstream, std::time::Duration::from_millis(150)).await;
    let slow = Counters::connect(
        &CountersConfig {
            url: format!("redis://127.0.0.1:{port}/"),
            key_prefix: "weirtest".into(),
            success_ratio_group: group.clone(),
            ..CountersConfig::default()
        },
        &group,
    )
    .await
    .expect("connect through the proxy");

    let batch = |partition: i32, from: i64| {
        let mut tally = BatchTally::new("events", partition);
        for offset in from..from + 10 {
            tally
                .record(
                    &scenario,
                    "scenario@1",
                    offset,
                    0,
                    Tallied::Emitted,
                    offset % 3 == 0,
                )
                .expect("tally");
        }
        tally
    };
    let key = format!("scenario:{scenario}:success_ratio");
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let key = key.clone();
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut conn = raw_redis().await;
            let mut seen = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let raw: Option<String> = conn.get(&key).await.expect("GET");
                if let Some(raw) = raw {
                    let view: SuccessRatio = serde_json::from_str(&raw).expect("JSON");
                    if seen.last() != Some(&view.total_count) {
                        seen.push(view.total_count);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            seen
        })
    };
    let now = Utc::now();
    let slow_side = {
        let (slow, batches) = (
            slow.clone(),
            (0..20).map(|i| batch(1, i * 10)).collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            for b in &batches {
                slow.apply(b, now).await.expect("slow apply");
            }
        })
    };
    for i in 0..200 {
        fast.apply(&batch(0, i * 10), now)
            .await
            .expect("fast apply");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    slow_side.await.expect("slow side");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.expect("watcher");
    assert!(seen.len() > 10, "the view was watched moving: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the view went back: {seen:?}"
    );
    let totals = fast.totals(&scenario).await.expect("totals");
    assert_eq!(totals.total, 2_200);
    let mut conn = raw_redis().await;
    let raw: String = conn.get(&key).await.expect("GET");
    let view: SuccessRatio = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(
        (view.total_count, view.success_count),
        (totals.total, totals.matched),
        "the view ends equal to the counts"
    );
}

/// Two consumer groups on one topic, one Redis, the default key prefix: each
/// group counts every event once in keys of its own, and only the group named by
/// `success_ratio_group` writes the dashboards' view.
#[tokio::test]
async fn two_consumer_groups_on_one_topic_each_count_every_event_once() {
    let tag = unique("groups");
    let events = stream(&tag, 2, 2_000);
    let want = expected(&events);
    let (blue, green) = (unique("blue"), unique("green"));
    let connect = |group: String, ratio: String| async move {
        Counters::connect(
            &CountersConfig {
                url: Service::Redis.addr(),
                success_ratio_group: ratio,
                ..CountersConfig::default()
            },
            &group,
        )
        .await
        .expect("connect")
    };
    let blue_counters = connect(blue.clone(), blue.clone()).await;
    let green_counters = connect(green.clone(), blue.clone()).await;
    let now = Utc::now();
    for partition in 0..2 {
        let part: Vec<Event> = events
            .iter()
            .filter(|e| e.partition == partition)
            .cloned()
            .collect();
        // Each group reads the topic with batches of its own.
        for batch in batches("events", &part, 300) {
            blue_counters.apply(&batch, now).await.expect("blue");
        }
        for batch in batches("events", &part, 170) {
            green_counters.apply(&batch, now).await.expect("green");
        }
    }
    assert_eq!(observed(&blue_counters, want.keys()).await, want, "blue");
    assert_eq!(observed(&green_counters, want.keys()).await, want, "green");

    let mut conn = raw_redis().await;
    for (scenario, totals) in &want {
        let raw: String = conn
            .get(format!("scenario:{scenario}:success_ratio"))
            .await
            .expect("GET");
        let view: SuccessRatio = serde_json::from_str(&raw).expect("JSON");
        assert_eq!(
            view.total_count, totals.total,
            "the view shows one group's counts"
        );
    }
}
