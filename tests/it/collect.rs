//! The collector against a real Kafka: tracking hits (pixel, Matomo single,
//! beacon and bulk), JSON batches with bad records mixed in, the limits, CORS,
//! a stopped broker, and the whole service from an HTTP hit to a scenario's
//! counts.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weir::collect::{CollectConfig, CollectMetrics, Front, StreamConfig};
use weir_integration::{PrivateStack, Service, unique};

use crate::pipeline::{create_topics, read_committed};

/// A collector on a free port over the shared Kafka, with topics of its own.
struct Collector {
    addr: SocketAddr,
    hits: String,
    bad: String,
    logs: String,
    metrics: Arc<CollectMetrics>,
    stop: CancellationToken,
    brokers: String,
}

impl Collector {
    async fn start(brokers: &str, tune: impl FnOnce(&mut CollectConfig)) -> Self {
        let u = unique("collect");
        let (hits, bad, logs) = (format!("{u}-hits"), format!("{u}-bad"), format!("{u}-logs"));
        create_topics(brokers, &[&hits, &bad, &logs]).await;
        let mut config = CollectConfig {
            listen: "127.0.0.1:0".into(),
            bad_topic: bad.clone(),
            streams: [
                (
                    "logs".to_owned(),
                    StreamConfig {
                        topic: logs.clone(),
                        key: None,
                        key_field: Some("service".into()),
                    },
                ),
                (
                    "partners".to_owned(),
                    StreamConfig {
                        topic: logs.clone(),
                        key: Some("partner-key-0123456789".into()),
                        key_field: None,
                    },
                ),
            ]
            .into(),
            trusted_proxies: vec!["10.9.9.9/32".into()],
            ..CollectConfig::default()
        };
        tune(&mut config);
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let front = Arc::new(
            Front::new(
                config.clone(),
                brokers,
                &hits,
                weir::telemetry::Telemetry::new(),
            )
            .expect("producer"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(weir::http::serve(
            listener,
            weir::collect::router(front.clone()),
            config.http_limits(),
            stop.clone().cancelled_owned(),
        ));
        Self {
            addr,
            hits,
            bad,
            logs,
            metrics: front.metrics(),
            stop,
            brokers: brokers.to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every record of `topic` as JSON, once `want` arrived and no more came.
    fn read(&self, topic: &str, want: usize) -> Vec<Value> {
        read_committed(&self.brokers, &[topic], want)
            .iter()
            .map(|r| serde_json::from_slice(r.value()).expect("a JSON record"))
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent("weir-test/1")
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_hits_arrive_once_with_server_fields_and_matomo_answers() {
    let c = Collector::start(&Service::Kafka.addr(), |_| {}).await;
    let http = client();

    // The pixel: every query parameter a field, scenario_id from the path.
    let pixel = http
        .get(c.url("/5?e_c=buttonClick&e_a=Clicked&e_n=buy%20now&url=https%3A%2F%2Fshop%2Fa&_idn=0&cookie=1&res=1920x1080&memberId=123456&client_ip=6.6.6.6"))
        .header("x-forwarded-for", "7.7.7.7")
        .send()
        .await
        .unwrap();
    assert_eq!(pixel.status(), 200);
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    let gif = pixel.bytes().await.unwrap();
    assert_eq!((gif.len(), &gif[..6]), (43, &b"GIF89a"[..]));

    // Matomo: GET, POST form, sendBeacon's text/plain, send_image=0, no rec.
    let single = http
        .get(c.url("/matomo.php?idsite=7&rec=1&action_name=Home&_id=0123456789abcdef&token_auth=secret&rand=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(single.status(), 200);
    assert_eq!(single.headers()["content-type"], "image/gif");
    let form = http
        .post(c.url("/piwik.php?idsite=7"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body("idsite=99&rec=1&e_c=form&send_image=0")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 204, "send_image=0");
    let beacon = http
        .post(c.url("/matomo.php"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body("idsite=7&rec=1&e_c=beacon&uid=ana")
        .send()
        .await
        .unwrap();
    assert_eq!(beacon.status(), 200);
    let unrecorded = http
        .get(c.url("/matomo.php?idsite=7&e_c=norec"))
        .send()
        .await
        .unwrap();
    assert_eq!(unrecorded.status(), 200, "answered as Matomo answers");

    // Bulk, as the JavaScript tracker's queue sends it (a form body type).
    let bulk = http
        .post(c.url("/matomo.php"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(
            json!({"requests": [
                "?idsite=7&rec=1&e_c=bulk1",
                "?idsite=abc&rec=1&e_c=bad",
                {"idsite": 8, "rec": 1, "e_c": "bulk3"},
                "?rec=1&e_c=nosite"
            ]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.status(), 200);
    let summary: Value = bulk.json().await.unwrap();
    assert_eq!(summary["status"], "success");
    assert_eq!(summary["tracked"], 2, "{summary}");
    assert_eq!(summary["invalid_indices"], json!([1, 3]), "{summary}");
    let beacon_bulk = http
        .post(c.url("/matomo.php"))
        .body(json!({"requests": ["?idsite=7&rec=1&e_c=bulk5"], "send_image": 0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(beacon_bulk.status(), 204);

    // A bad single hit: 400 problem, and the record on the bad topic.
    let bad = http
        .get(c.url("/matomo.php?idsite=0&rec=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");

    let hits = c.read(&c.hits, 7);
    assert_eq!(hits.len(), 7, "each hit once: {hits:#?}");
    let by = |field: &str, value: &str| {
        hits.iter()
            .find(|h| h[field] == value)
            .unwrap_or_else(|| panic!("a hit with {field}={value}: {hits:#?}"))
    };
    let p = by("e_n", "buy now");
    assert_eq!(p["scenario_id"], "5");
    assert_eq!(p["memberId"], "123456");
    assert_eq!(p["url"], "https://shop/a");
    assert_eq!(
        p["client_ip"], "127.0.0.1",
        "neither a parameter nor an untrusted X-Forwarded-For sets it"
    );
    assert_eq!(p["user_agent"], "weir-test/1");
    assert!(p["received_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let m = by("action_name", "Home");
    assert_eq!(
        (&m["scenario_id"], &m["idsite"]),
        (&json!("7"), &json!("7"))
    );
    assert!(m.get("token_auth").is_none() && m.get("rand").is_none());
    assert_eq!(by("e_c", "form")["idsite"], "7", "GET wins over the body");
    by("e_c", "beacon");
    by("e_c", "bulk1");
    assert_eq!(by("e_c", "bulk3")["scenario_id"], "8");
    by("e_c", "bulk5");
    assert!(
        hits.iter()
            .all(|h| h["e_c"] != "norec" && h["e_c"] != "bad")
    );

    let bad = c.read(&c.bad, 3);
    let mut reasons: Vec<&str> = bad.iter().map(|b| b["reason"].as_str().unwrap()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["invalid_idsite", "invalid_idsite", "missing_idsite"],
        "{bad:#?}"
    );
    assert!(bad.iter().all(|b| b["endpoint"] == "matomo"));
    let refused = c.metrics.refused.lock().unwrap().clone();
    assert_eq!(refused.values().sum::<u64>(), 3, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_batches_deliver_the_good_records_once_and_name_each_refused_one() {
    let c = Collector::start(&Service::Kafka.addr(), |config| {
        config.max_body_bytes = 64 << 10;
        config.max_record_bytes = 1024;
    })
    .await;
    let http = client();

    let ndjson = format!(
        "{}\n{}\n\n[1,2]\n{{broken\n{}\n{}\n",
        json!({"service": "auth", "level": "INFO", "msg": "login"}),
        json!({"service": "order", "level": "ERROR", "msg": "failed"}),
        json!({"service": "pay", "msg": "x".repeat(2000)}),
        json!({"service": "notify", "msg": "sent", "client_ip": "6.6.6.6"}),
    );
    let answer = http
        .post(c.url("/collect/logs"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["accepted"], 3, "{answer}");
    let refused: Vec<(u64, u64, &str)> = answer["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (2, 4, "not_an_object"),
            (3, 5, "not_json"),
            (4, 6, "record_too_large")
        ]
    );

    let array = http
        .post(c.url("/collect/logs"))
        .json(&json!([{"service": "auth", "n": 1}, "text", {"service": "auth", "n": 2}]))
        .send()
        .await
        .unwrap();
    assert_eq!(array.status(), 202);
    let array: Value = array.json().await.unwrap();
    assert_eq!(
        (
            array["accepted"].as_u64(),
            array["refused"][0]["index"].as_u64()
        ),
        (Some(2), Some(1))
    );

    // Nothing good: a 400 problem naming each record.
    let none = http
        .post(c.url("/collect/logs"))
        .body("1\n\"two\"\n")
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 400);
    assert_eq!(none.headers()["content-type"], "application/problem+json");
    let none: Value = none.json().await.unwrap();
    assert_eq!(none["errors"].as_array().unwrap().len(), 2, "{none}");

    // Too large, unknown stream, missing key; a trusted sender keeps its fields.
    let huge = http
        .post(c.url("/collect/logs"))
        .body(vec![b' '; 65 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(
        huge.headers()["connection"],
        "close",
        "the unread body ends the connection, and the answer says so"
    );
    assert_eq!(
        http.post(c.url("/collect/nope"))
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.post(c.url("/collect/partners"))
            .body("{}")
            .bearer_auth("wrong-key-0123456789")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let partner = http
        .post(c.url("/collect/partners"))
        .bearer_auth("partner-key-0123456789")
        .json(&json!({"service": "partner", "client_ip": "203.0.113.5"}))
        .send()
        .await
        .unwrap();
    assert_eq!(partner.status(), 202);

    let records = c.read(&c.logs, 6);
    assert_eq!(records.len(), 6, "each good record once: {records:#?}");
    let notify = records.iter().find(|r| r["service"] == "notify").unwrap();
    assert_eq!(
        notify["client_ip"], "127.0.0.1",
        "an open stream's sender cannot set it"
    );
    let partner = records.iter().find(|r| r["service"] == "partner").unwrap();
    assert_eq!(
        partner["client_ip"], "203.0.113.5",
        "a keyed sender forwards its own"
    );
    let bad = c.read(&c.bad, 6);
    assert_eq!(
        bad.len(),
        6,
        "every refused record, with its reason: {bad:#?}"
    );
    assert!(
        bad.iter()
            .all(|b| b["stream"] == "logs" && b["reason"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_cors_and_slow_or_oversized_clients_are_cut_off() {
    let c = Collector::start(&Service::Kafka.addr(), |config| {
        config.header_timeout_ms = 500;
        config.request_timeout_ms = 1_000;
        config.max_query_bytes = 2048;
        config.max_bulk_requests = 3;
    })
    .await;
    let http = client();

    let preflight = http
        .request(reqwest::Method::OPTIONS, c.url("/collect/logs"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let hit = http
        .get(c.url("/5?a=1"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hit.headers()["access-control-allow-origin"],
        "https://shop.example"
    );

    let long = http
        .get(c.url(&format!("/5?a={}", "x".repeat(3000))))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 414);
    let big_header = http
        .get(c.url("/5?a=1"))
        .header("x-filler", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(big_header.status(), 431);
    let bulk = http
        .post(c.url("/matomo.php"))
        .body(json!({"requests": vec!["?idsite=1&rec=1"; 4]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        bulk.status(),
        413,
        "more tracking requests than a bulk may hold"
    );

    // Headers a byte at a time: the connection is closed at the header timeout.
    let mut slow = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    slow.write_all(b"GET /5?a=1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a slow client is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A body that never ends: 408 at the request timeout.
    let mut trickle = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    trickle
        .write_all(b"POST /collect/logs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // An idle keep-alive connection is closed too.
    let mut idle = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "an idle connection is closed");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_gets_503s_and_loses_no_acknowledged_hit() {
    // A broker of the test's own, so stopping it stalls no other test.
    let kafka = tokio::task::spawn_blocking(|| PrivateStack::start(&["kafka"], 19_092))
        .await
        .expect("join");
    let brokers = format!("127.0.0.1:{}", 19_092 + kafka.offset);
    let c = Collector::start(&brokers, |config| {
        config.produce_timeout_ms = 2_000;
        // Room for two pixel hits waiting on the broker at once.
        config.max_body_bytes = 1024;
        config.max_in_flight_bytes = 2_200;
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let send = |i: u32| {
        let request = http.get(c.url(&format!("/5?n={i}")));
        async move {
            request
                .send()
                .await
                .map(|r| (r.status(), r.headers().get("retry-after").cloned()))
        }
    };

    let mut acknowledged = Vec::new();
    for i in 0..200 {
        if send(i).await.unwrap().0 == 200 {
            acknowledged.push(i);
        }
    }
    assert_eq!(acknowledged.len(), 200, "all taken while the broker runs");

    kafka.signal("kafka", "-STOP");
    let mut unavailable = 0;
    for i in 200..210 {
        let started = Instant::now();
        let (status, retry_after) = send(i).await.expect("an answer, not a hang");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            started.elapsed()
        );
        match status.as_u16() {
            200 => acknowledged.push(i),
            503 => {
                unavailable += 1;
                assert!(retry_after.is_some(), "503 carries Retry-After");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        unavailable >= 8,
        "{unavailable} of 10 answered 503 while the broker was stopped"
    );
    // Four at once while the broker is stopped: two wait on it, the others find
    // no room among the bytes in flight and are turned away after a second.
    let waits: Vec<_> = (0..4)
        .map(|i| {
            let request = http.get(c.url(&format!("/5?held={i}")));
            tokio::spawn(async move {
                let started = Instant::now();
                let response = request.send().await.expect("an answer");
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                (status, body, started.elapsed())
            })
        })
        .collect();
    let mut no_room = 0;
    for wait in waits {
        let (status, body, took) = wait.await.unwrap();
        assert_eq!(status, 503, "{body}");
        if body.contains("request bytes") {
            no_room += 1;
            assert!(
                took < Duration::from_millis(1_900),
                "turned away at once: {took:?}"
            );
        }
    }
    assert!(no_room >= 2, "{no_room} of 4 turned away for lack of room");
    kafka.signal("kafka", "-CONT");

    // Back: hits are taken again (the producer reconnects by itself).
    let back = Instant::now();
    let mut i = 210;
    loop {
        let (status, _) = send(i).await.unwrap();
        if status == 200 {
            acknowledged.push(i);
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "taken again after SIGCONT"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for j in i + 1..i + 50 {
        if send(j).await.unwrap().0 == 200 {
            acknowledged.push(j);
        }
    }
    let stored: std::collections::BTreeSet<u32> = c
        .read(&c.hits, acknowledged.len())
        .iter()
        .map(|h| h["n"].as_str().unwrap().parse().unwrap())
        .collect();
    let missing: Vec<&u32> = acknowledged
        .iter()
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert!(
        c.metrics
            .unavailable
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_over_every_endpoint_are_counted_by_their_scenario() {
    use weir::archive::ArchiveConfig;
    use weir::pipeline::PipelineConfig;
    use weir::registry::PutMode;
    use weir::service::{CountersSection, PipelinePlan, demo};

    let brokers = Service::Kafka.addr();
    let u = unique("collect-e2e");
    let dir = std::env::temp_dir().join(&u);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let registry = crate::pipeline::registry_in(&dir).await;
    registry
        .import_members(&demo::members())
        .await
        .expect("members");
    registry
        .put_scenario(demo::scenario(), None, PutMode::Create, "test")
        .await
        .expect("scenario 5");
    let (hits, dlq, bad) = (format!("{u}-hits"), format!("{u}-dlq"), format!("{u}-bad"));
    create_topics(&brokers, &[&hits, &dlq, &bad]).await;
    let stop = CancellationToken::new();
    let plan = PipelinePlan {
        pipeline: PipelineConfig {
            brokers: brokers.clone(),
            group_id: u.clone(),
            topics: vec![hits.clone()],
            dlq_topic: dlq,
            batch_linger_ms: 20,
            registry_poll_ms: 100,
            ..PipelineConfig::default()
        },
        counters: CountersSection::default(),
        archive: ArchiveConfig {
            root: dir.join("archive").display().to_string(),
            ..ArchiveConfig::default()
        },
        collect: CollectConfig {
            listen: "127.0.0.1:0".into(),
            bad_topic: bad,
            streams: Default::default(),
            ..CollectConfig::default()
        },
        data_dir: dir.clone(),
        demo: false,
        demo_events: None,
        alerts: Default::default(),
    };
    let service = weir::service::start(plan, registry, Default::default(), stop.clone())
        .await
        .expect("service");
    let (addr, _) = service.collect.clone().expect("the collector runs");

    // The expected count, from the members the scenario is enriched from.
    let members: std::collections::HashMap<String, (u64, String)> = demo::members()
        .into_iter()
        .map(|m| {
            let age = m.attributes["age"].as_u64().unwrap();
            (
                m.member_id,
                (age, m.attributes["gender"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    let matches = |i: u64| {
        let hit = demo::hit(i, 0);
        let (age, gender) = &members[&hit[0].1];
        *age > 20 && gender == "MALE" && hit[1].1.parse::<u64>().unwrap() >= 9
    };
    let http = client();
    let base = format!("http://{addr}");
    let mut sent = 0u64;
    let mut matched = 0u64;
    // 40 pixel hits, 40 Matomo hits, one bulk of 40, one NDJSON batch of 40.
    for i in 0..40 {
        let r = http
            .get(format!("{base}/5"))
            .query(&demo::hit(i, 0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for i in 40..80 {
        let mut query = demo::hit(i, 0);
        query.extend([("idsite", "5".to_owned()), ("rec", "1".to_owned())]);
        let r = http
            .get(format!("{base}/matomo.php"))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let bulk: Vec<String> = (80..120)
        .map(|i| {
            let mut query = form(&demo::hit(i, 0));
            query.push_str("&idsite=5&rec=1");
            format!("?{query}")
        })
        .collect();
    let r = http
        .post(format!("{base}/matomo.php"))
        .body(json!({ "requests": bulk }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ndjson: String = (120..160)
        .map(|i| {
            let mut record: serde_json::Map<String, Value> = demo::hit(i, 0)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::from(v)))
                .collect();
            record.insert("scenario_id".into(), json!(5));
            format!("{}\n", Value::Object(record))
        })
        .collect();
    let r = http
        .post(format!("{base}/collect/events"))
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for i in 0..160 {
        sent += 1;
        matched += u64::from(matches(i));
    }

    let started = Instant::now();
    loop {
        let totals = service
            .counters
            .totals(demo::SCENARIO_ID)
            .await
            .expect("totals");
        if totals.total >= sent {
            assert_eq!(
                (totals.total, totals.matched, totals.errors),
                (sent, matched, 0)
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "counted {totals:?} of {sent}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matched > 0 && matched < sent, "{matched} of {sent}");
    stop.cancel();
    service
        .finish(Duration::from_secs(30))
        .await
        .expect("drained");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Parameters as a query string.
fn form(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.bytes().map(|b| format!("%{b:02X}")).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// nginx from apt on a free port of 127.0.0.1, its access log in
/// `<dir>/access.log`; stopped when dropped.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Nginx {
    /// A reverse proxy in front of `upstream`, connecting to it from 127.0.0.2.
    fn proxy(upstream: SocketAddr) -> Self {
        Self::start(&format!(
            "proxy_pass http://{upstream};\n      proxy_bind 127.0.0.2;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
        ))
    }

    /// `location /` doing `location`.
    fn start(location: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("weir-nginx"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      {location}\n    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx from apt (`tests/stack install` installs it)");
        let nginx = Self { child, dir, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nginx did not listen; its log: {}",
                std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }
}

impl Nginx {
    /// `nginx -s <signal>` to this nginx (e.g. `reopen` after a rotation).
    fn signal(&self, signal: &str) {
        let done = Command::new("nginx")
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-p")
            .arg(&self.dir)
            .args(["-s", signal])
            .status()
            .expect("nginx -s");
        assert!(done.success(), "nginx -s {signal}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_client_address_comes_from_the_trusted_proxy_only() {
    let c = Collector::start(&Service::Kafka.addr(), |config| {
        config.trusted_proxies = vec!["127.0.0.2/32".into()];
    })
    .await;
    let nginx = Nginx::proxy(c.addr);
    // The client speaks from 127.0.0.3, nginx to the collector from 127.0.0.2.
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    for (via, base) in [
        ("nginx", format!("http://127.0.0.1:{}", nginx.port)),
        ("direct", format!("http://{}", c.addr)),
    ] {
        for spoof in [None, Some("6.6.6.6")] {
            let mut request = http.get(format!("{base}/5?via={via}&spoof={}", spoof.is_some()));
            if let Some(ip) = spoof {
                request = request.header("x-forwarded-for", ip);
            }
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 200, "{via}");
        }
    }
    let hits = c.read(&c.hits, 4);
    assert_eq!(hits.len(), 4, "{hits:#?}");
    for hit in &hits {
        assert_eq!(
            hit["client_ip"], "127.0.0.3",
            "the real client, neither the proxy nor a spoofed address: {hit}"
        );
    }
    assert!(
        hits.iter().filter(|h| h["via"] == "nginx").count() == 2,
        "two hits came through nginx: {hits:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_generate_feeds_the_collector_and_kafka_repeatably() {
    let c = Collector::start(&Service::Kafka.addr(), |_| {}).await;
    let generate = |args: &[&str]| {
        let output = Command::new(crate::archive::weir_binary())
            .arg("generate")
            .args(args)
            .env_remove("WEIR_KAFKA")
            .output()
            .expect("weir generate");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "weir generate failed:\n{stderr}");
        stderr
    };
    let to = format!("http://{}", c.addr);
    let said = generate(&[
        "--count",
        "300",
        "--rate",
        "1000",
        "--to",
        &to,
        "--scenario",
        "5",
        "--scenario",
        "6",
    ]);
    assert!(said.contains("300 sent, 0 failed"), "{said}");
    let hits = c.read(&c.hits, 300);
    assert_eq!(hits.len(), 300);
    assert!(
        hits.iter()
            .all(|h| h["scenario_id"] == "5" || h["scenario_id"] == "6")
    );
    assert!(
        hits.iter()
            .all(|h| h["client_ip"] == "127.0.0.1" && h["memberId"].is_string())
    );
    let said = generate(&[
        "--profile",
        "services",
        "--count",
        "200",
        "--rate",
        "1000",
        "--to",
        &to,
    ]);
    assert!(said.contains("200 sent, 0 failed"), "{said}");
    assert_eq!(
        c.read(&c.logs, 200).len(),
        200,
        "the service mix through the logs stream"
    );

    // Straight to Kafka: the same seed gives the same events.
    let topics = [unique("gen-a"), unique("gen-b")];
    create_topics(&c.brokers, &[&topics[0], &topics[1]]).await;
    for topic in &topics {
        generate(&[
            "--profile",
            "services",
            "--count",
            "500",
            "--rate",
            "5000",
            "--seed",
            "42",
            "--kafka",
            &c.brokers,
            "--topic",
            topic,
        ]);
    }
    let strip = |topic: &str| {
        let mut events: Vec<String> = c
            .read(topic, 500)
            .into_iter()
            .map(|mut e| {
                e.as_object_mut().unwrap().remove("ts");
                e.to_string()
            })
            .collect();
        events.sort();
        events
    };
    let (a, b) = (strip(&topics[0]), strip(&topics[1]));
    assert_eq!(a.len(), 500);
    assert_eq!(a, b, "one seed, one run");
    let errors = a.iter().filter(|e| e.contains("\"ERROR\"")).count();
    assert!(errors < 50, "about 2% errors: {errors}");
}

/// Lines `text` holds, counted by line.
fn line_counts<'a>(
    lines: impl Iterator<Item = &'a str>,
) -> std::collections::BTreeMap<&'a str, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for line in lines {
        *counts.entry(line).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_access_log_rotated_and_weir_killed_arrives_whole_and_parsed() {
    use weir::registry::PutMode;

    let brokers = Service::Kafka.addr();
    let u = unique("tail");
    let data = std::env::temp_dir().join(&u);
    std::fs::create_dir_all(&data).unwrap();
    let (lines_topic, parsed, dlq) = (
        format!("{u}-lines"),
        format!("{u}-parsed"),
        format!("{u}-dlq"),
    );
    create_topics(&brokers, &[&lines_topic, &parsed, &dlq]).await;
    // The access-log scenario parses the tailed lines in the same weir.
    let registry_url = format!("sqlite://{}", data.join("registry.db").display());
    {
        let registry = crate::pipeline::registry_in(&data).await;
        registry
            .put_scenario(
                json!({"scenario_id": "nginx", "plugin": "access-log", "source": [lines_topic], "output_topic": parsed}),
                None,
                PutMode::Create,
                "test",
            )
            .await
            .expect("scenario");
        registry.close().await;
    }
    let nginx = Nginx::start("return 204;");
    let log = nginx.dir.join("access.log");
    let config = data.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\ndatabase = {registry_url:?}\nlisten = \"127.0.0.1:0\"\n\
             [pipeline]\nbrokers = {brokers:?}\ngroup_id = {u:?}\ntopics = [{lines_topic:?}]\n\
             dlq_topic = {dlq:?}\n[pipeline.kafka]\n\"session.timeout.ms\" = \"6000\"\n\
             [archive]\nroot = {:?}\n[collect]\nlisten = \"127.0.0.1:0\"\nbad_topic = \"{u}-bad\"\n\
             [[collect.tail]]\npath = {:?}\ntopic = {lines_topic:?}\n",
            data.join("archive").display().to_string(),
            log.display().to_string(),
        ),
    )
    .unwrap();
    let serve_log = |n: u32| data.join(format!("weir-{n}.log"));
    // Ready once the tailer runs: the API serves before the pipeline, and the
    // collector and its tailer start with the pipeline.
    let serving = |n: u32| {
        let started = Instant::now();
        while !std::fs::read_to_string(serve_log(n))
            .unwrap_or_default()
            .contains("weir: tailing ")
        {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "weir serve did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut weir = crate::archive::serve(&config, &serve_log(1));
    serving(1);
    let url = format!("http://127.0.0.1:{}/goods?id=7", nginx.port);
    let hey = || {
        Command::new("hey")
            .args(["-n", "50000", "-c", "20", &url])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("hey from apt (`tests/stack install` installs it)")
    };

    // 50,000 requests, the log rotated (mv, then nginx reopens) during them.
    let mut load = hey();
    tokio::time::sleep(Duration::from_millis(800)).await;
    std::fs::rename(&log, nginx.dir.join("access.log.1")).unwrap();
    nginx.signal("reopen");
    assert!(load.wait().unwrap().success());
    // 50,000 more, weir killed during them and started again.
    let mut load = hey();
    tokio::time::sleep(Duration::from_millis(800)).await;
    weir.kill().unwrap();
    let _ = weir.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut weir = crate::archive::serve(&config, &serve_log(2));
    assert!(load.wait().unwrap().success());

    let mut written = std::fs::read_to_string(nginx.dir.join("access.log.1")).unwrap();
    written.push_str(&std::fs::read_to_string(&log).unwrap());
    let written_counts = line_counts(written.lines());
    let total: u64 = written_counts.values().sum();
    assert_eq!(total, 100_000, "nginx logged every request");

    let read = read_committed(&brokers, &[&lines_topic], total as usize);
    let got: Vec<String> = read
        .iter()
        .map(|r| String::from_utf8(r.value().to_vec()).expect("a UTF-8 line"))
        .collect();
    let got_counts = line_counts(got.iter().map(String::as_str));
    let missing: Vec<(&str, u64)> = written_counts
        .iter()
        .filter(|(line, n)| got_counts.get(*line).copied().unwrap_or(0) < **n)
        .map(|(line, n)| (*line, *n))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "lines missing from Kafka: {missing:?}");
    let extra = got.len() as u64 - total;
    let second = std::fs::read_to_string(serve_log(2)).unwrap_or_default();
    let reported: u64 = second
        .lines()
        .filter_map(|l| l.split_once(" lines were in flight"))
        .filter_map(|(before, _)| before.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        extra <= reported,
        "{extra} lines came twice, more than the {reported} reported in flight"
    );
    println!("{total} lines, {extra} twice ({reported} reported in flight)");

    // The access-log plugin parsed every line: one output each, no dead letter.
    let outputs = read_committed(&brokers, &[&parsed, &dlq], got.len());
    let dead = read_committed(&brokers, &[&dlq], 0);
    assert_eq!(dead.len(), 0, "no line failed to parse");
    assert_eq!(outputs.len(), got.len(), "one parsed output per line");
    let _ = weir.kill();
    let _ = weir.wait();
    let _ = std::fs::remove_dir_all(&data);
}
