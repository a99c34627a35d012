//! The window on a running weir: a real Prometheus scraping `/metrics` under
//! load, `promtool` on the metrics and the rules, the Grafana dashboard's
//! queries, alerts posted to local webhooks, and the dashboard page driven by
//! headless Chromium through the DevTools protocol.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weir_integration::{Service, unique};

pub(crate) const ADMIN: &str = "window-admin-token-0123456789";
const VIEWER: &str = "window-viewer-token-0123456789";

/// The repository's top directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An apt program the tests need, or a failure that says how to get it.
fn program(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: install it with `tests/stack install` (apt package {})",
        path.display(),
        if name == "promtool" {
            "prometheus"
        } else {
            name
        }
    );
    path
}

/// The test S3 server's keys as the variables `weir serve` reads (none when the
/// stack's variables are not loaded: only an `s3://` archive needs them).
fn s3_credentials() -> Vec<(&'static str, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "WEIR_TEST_S3_ACCESS_KEY"),
        ("AWS_SECRET_ACCESS_KEY", "WEIR_TEST_S3_SECRET_KEY"),
    ]
    .into_iter()
    .filter_map(|(aws, ours)| Some((aws, std::env::var(ours).ok()?)))
    .chain([("AWS_REGION", "us-east-1".to_owned())])
    .collect()
}

/// A `weir serve` process on free ports, its API address read from its log.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) api: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Serve {
    /// `weir serve` with `config` (TOML) in a fresh directory and `args`,
    /// once it is ready (`GET /readyz` answers 200).
    pub(crate) fn start(name: &str, config: &str, args: &[&str]) -> Self {
        let mut serve = Self::launch(name, config, args);
        let started = Instant::now();
        // The API answers before the pipeline runs: wait until it is ready.
        loop {
            crate::archive::still_serving(&mut serve.child, started, &serve.log, "not ready");
            let ready = std::net::TcpStream::connect(serve.api)
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
                    let mut head = [0u8; 12];
                    s.read_exact(&mut head).ok()?;
                    Some(head.ends_with(b"200"))
                });
            if ready == Some(true) {
                return serve;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `weir serve` with `config` (TOML) in a fresh directory and `args`, as
    /// soon as its API answers (with the tokens [`ADMIN`] and [`VIEWER`]).
    pub(crate) fn launch(name: &str, config: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weir.toml");
        std::fs::write(
            &file,
            format!(
                "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n{config}",
                dir.display().to_string()
            ),
        )
        .unwrap();
        let log = dir.join("weir.log");
        let child = Command::new(crate::archive::weir_binary())
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .args(args)
            .env("WEIR_COLLECT__LISTEN", "127.0.0.1:0")
            .env("WEIR_ADMIN_TOKEN", ADMIN)
            .env("WEIR_VIEWER_TOKEN", VIEWER)
            .env_remove("WEIR_KAFKA")
            .env_remove("WEIR_REDIS")
            .env_remove("WEIR_DATABASE")
            .envs(s3_credentials())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start weir serve");
        let mut serve = Self {
            child,
            api: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let started = Instant::now();
        loop {
            crate::archive::still_serving(&mut serve.child, started, &serve.log, "no API");
            let text = std::fs::read_to_string(&serve.log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split("dashboard on http://").nth(1))
                .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            {
                serve.api = addr;
                return serve;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn metrics(&self) -> String {
        let response = reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(VIEWER)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every metric name an expression names (histogram series by their base name).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("weir_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if before_ok {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| {
                    weir::telemetry::SERIES
                        .iter()
                        .any(|(n, k, _)| n == base && *k == weir::telemetry::Kind::Histogram)
                })
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

fn exported(name: &str) -> bool {
    weir::telemetry::SERIES.iter().any(|(n, ..)| *n == name)
}

/// The Grafana dashboard and the Prometheus rules in `compose/` name only
/// metrics weir exports, and promtool accepts the rules.
#[test]
fn the_grafana_dashboard_and_the_alert_rules_name_only_exported_metrics() {
    let text =
        std::fs::read_to_string(root().join("compose/grafana/dashboards/weir.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} names no weir metric");
            for name in names {
                assert!(
                    exported(&name),
                    "the dashboard queries {name}, which weir does not export"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 10, "only {queries} queries");

    let rules = root().join("compose/prometheus/weir-rules.yml");
    let check = Command::new(program("promtool"))
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for line in std::fs::read_to_string(&rules).unwrap().lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            for name in metric_names(expr) {
                assert!(
                    exported(&name),
                    "a rule names {name}, which weir does not export"
                );
            }
        }
    }
}

/// Waits until Prometheus at `base` answers `query` with at least one series
/// whose value passes `good`; returns the series.
async fn until_prometheus(base: &str, query: &str, good: impl Fn(f64) -> bool) -> Vec<Value> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer: Option<Value> = async {
            client
                .get(format!("{base}/api/v1/query"))
                .query(&[("query", query)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
        .await;
        let series: Vec<Value> = answer
            .as_ref()
            .and_then(|a| a["data"]["result"].as_array().cloned())
            .unwrap_or_default();
        let passes = series.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(&good)
        });
        if passes {
            return series;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "Prometheus never answered {query} as wanted; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A real Prometheus scrapes `weir serve --demo` (real Kafka and Redis) every
/// second: the events rate, the lag per partition and a stage histogram's
/// quantile come back through its query API, and `promtool check metrics`
/// accepts the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_weir_and_sees_its_series_move() {
    let brokers = Service::Kafka.addr();
    let redis = Service::Redis.addr();
    let u = unique("window-prom");
    let hits = format!("{u}-hits");
    crate::pipeline::create_topics(&brokers, &[&hits, &format!("{u}-dlq")]).await;
    let weir = Serve::start(
        "window-prom",
        &format!(
            "[pipeline]\nbrokers = {brokers:?}\ngroup_id = {u:?}\ntopics = [{hits:?}]\n\
             dlq_topic = \"{u}-dlq\"\n[counters]\nredis = {redis:?}\nkey_prefix = {u:?}\n\
             [collect]\nbad_topic = \"{u}-bad\"\n"
        ),
        &["--demo"],
    );

    let text = weir.metrics().await;
    let mut check = Command::new(program("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let dir = std::env::temp_dir().join(unique("prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("viewer-token");
    std::fs::write(&token, VIEWER).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: weir\n    \
             authorization:\n      type: Bearer\n      credentials_file: {}\n    \
             static_configs:\n      - targets: [\"{}\"]\n",
            token.display(),
            weir.api
        ),
    )
    .unwrap();
    let port = free_port();
    let prometheus = Killed(
        Command::new(program("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    let base = format!("http://127.0.0.1:{port}");

    until_prometheus(&base, "up{job=\"weir\"}", |v| v == 1.0).await;
    until_prometheus(&base, "rate(weir_events_total[1m])", |v| v > 0.0).await;
    until_prometheus(
        &base,
        "sum(rate(weir_scenario_events_total{scenario=\"5\"}[1m]))",
        |v| v > 0.0,
    )
    .await;
    let lag = until_prometheus(&base, "weir_consumer_lag", |v| v >= 0.0).await;
    let partitions: BTreeSet<String> = lag
        .iter()
        .filter(|s| s["metric"]["topic"] == hits.as_str())
        .filter_map(|s| s["metric"]["partition"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        partitions.len(),
        3,
        "a lag series per partition of {hits}: {lag:?}"
    );
    for stage in ["gather", "plugin", "commit", "sinks"] {
        until_prometheus(
            &base,
            &format!(
                "histogram_quantile(0.9, sum by (le) (rate(weir_cycle_stage_seconds_bucket{{stage=\"{stage}\"}}[1m])))"
            ),
            |v| v > 0.0 && v.is_finite(),
        )
        .await;
    }
    until_prometheus(
        &base,
        "histogram_quantile(0.5, sum by (le) (rate(weir_plugin_call_seconds_bucket{plugin=\"scenario@1\"}[1m])))",
        |v| v > 0.0 && v.is_finite(),
    )
    .await;
    until_prometheus(&base, "rate(weir_redis_script_seconds_count[1m])", |v| {
        v > 0.0
    })
    .await;
    until_prometheus(
        &base,
        "sum(rate(weir_collect_requests_total{endpoint=\"pixel\",status=\"200\"}[1m]))",
        |v| v > 0.0,
    )
    .await;
    until_prometheus(&base, "weir_build_info", |v| v == 1.0).await;
    drop(prometheus);
}

/// What a local webhook receiver got, and how it answers.
#[derive(Default)]
struct Received {
    bodies: Vec<Value>,
    /// Answer 500 to this many requests first.
    fail_first: usize,
    /// Never answer.
    hang: bool,
}

async fn receiver(state: Arc<Mutex<Received>>) -> SocketAddr {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let state = state.clone();
            async move {
                let (hang, fail) = {
                    let mut s = state.lock().unwrap();
                    s.bodies.push(body);
                    let fail = s.bodies.len() <= s.fail_first;
                    (s.hang, fail)
                };
                if hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                if fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A scenario's ratio rule fires when its events stop matching and resolves
/// when they match again; a webhook that fails gets the same notice again, and
/// one that never answers holds up nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_resolve_with_retries_and_never_block_the_pipeline() {
    use weir::alert::{AlertsConfig, Format, RuleConfig, RuleKind, WebhookConfig};
    use weir::registry::PutMode;

    let brokers = Service::Kafka.addr();
    let u = unique("window-alerts");
    let dir = std::env::temp_dir().join(&u);
    std::fs::create_dir_all(&dir).unwrap();
    let registry = crate::pipeline::registry_in(&dir).await;
    registry
        .put_scenario(
            json!({"scenario_id": "a1", "filters": [{"left": "ok", "operator": "==", "right": 1}]}),
            None,
            PutMode::Create,
            "test",
        )
        .await
        .expect("scenario");
    let (events, dlq) = (format!("{u}-events"), format!("{u}-dlq"));
    crate::pipeline::create_topics(&brokers, &[&events, &dlq]).await;

    let slack = Arc::new(Mutex::new(Received::default()));
    let flaky = Arc::new(Mutex::new(Received {
        fail_first: 2,
        ..Received::default()
    }));
    let stuck = Arc::new(Mutex::new(Received {
        hang: true,
        ..Received::default()
    }));
    // The answering webhooks get a timeout a loaded machine cannot run past
    // (with 500 ms, four attempts could all time out before the receiver, on
    // this test's two runtime threads, read the request: no notice arrived);
    // the stuck one keeps a short one.
    let hook = |name: &str, addr: SocketAddr, format: Format, timeout_ms: u64| WebhookConfig {
        name: name.into(),
        url: format!("http://{addr}/hook"),
        format,
        timeout_ms,
        max_attempts: 4,
        backoff_ms: 100,
    };
    let alerts = AlertsConfig {
        interval_secs: 1,
        repeat_secs: 3600,
        webhooks: vec![
            hook(
                "slack",
                receiver(slack.clone()).await,
                Format::Slack,
                10_000,
            ),
            hook("flaky", receiver(flaky.clone()).await, Format::Json, 10_000),
            hook("stuck", receiver(stuck.clone()).await, Format::Json, 500),
        ],
        rules: vec![RuleConfig {
            name: "a1 ratio low".into(),
            kind: RuleKind::RatioBelow,
            scenario: Some("a1".into()),
            threshold: 0.5,
            window_minutes: 1,
            min_events: 10,
            for_secs: 0,
            webhooks: Vec::new(),
        }],
    };
    assert!(alerts.problems().is_empty(), "{:?}", alerts.problems());
    let stop = CancellationToken::new();
    let plan = crate::pipeline::service_plan((&brokers, &u), (&events, &dlq), &dir, alerts);
    let service = weir::service::start(plan, registry, Default::default(), stop.clone())
        .await
        .expect("service");
    let event = |ok: u8, i: usize| {
        (
            Some(format!("m{i}")),
            json!({"scenario_id": "a1", "ok": ok, "i": i})
                .to_string()
                .into_bytes(),
        )
    };
    // Distinct notices: a webhook that answers later than its timeout (a
    // loaded machine) gets the same notice again, which is one notice.
    let notices = |who: &Arc<Mutex<Received>>, status: &str| {
        let who = who.lock().unwrap();
        let mut seen: Vec<&Value> = Vec::new();
        for b in &who.bodies {
            let says = b["status"] == status
                || b["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("[{}]", status.to_uppercase())));
            if says && !seen.contains(&b) {
                seen.push(b);
            }
        }
        seen.len()
    };
    // Waits without holding a runtime worker: the alerts, the webhooks and
    // the receivers share this test's two.
    async fn until(what: &str, done: &dyn Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what} did not happen in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Events that do not match: the ratio is 0, under 0.5.
    crate::pipeline::produce(&brokers, &events, (0..40).map(|i| event(0, i)).collect()).await;
    crate::pipeline::handled(&service.metrics, 40).await;
    until("a firing notice", &|| notices(&slack, "firing") == 1).await;
    let text = slack.lock().unwrap().bodies[0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.starts_with("[FIRING] weir alert a1 ratio low: scenario a1: success ratio 0.00 %"),
        "{text}"
    );
    // The flaky webhook got it after two 500s: three times the same notice.
    until("the flaky webhook's retries", &|| {
        flaky.lock().unwrap().bodies.len() >= 3
    })
    .await;
    {
        let flaky = flaky.lock().unwrap();
        assert_eq!(
            flaky.bodies[0], flaky.bodies[2],
            "a retry sends the same notice"
        );
        assert_eq!(flaky.bodies[2]["status"], "firing");
        assert_eq!(flaky.bodies[2]["rule"], "a1 ratio low");
        assert_eq!(flaky.bodies[2]["scenario"], "a1");
    }
    let firing = service.alerts.as_ref().expect("alerts run").firing();
    assert_eq!(firing.len(), 1, "{firing:?}");

    // The stuck webhook holds its notice for its whole timeout and retries:
    // meanwhile the pipeline handles the next events at once.
    crate::pipeline::produce(&brokers, &events, (40..400).map(|i| event(1, i)).collect()).await;
    crate::pipeline::handled(&service.metrics, 400).await;
    // 360 of 400 match now: 0.9, over the threshold.
    until("a resolved notice", &|| notices(&slack, "resolved") == 1).await;
    assert_eq!(
        notices(&slack, "firing"),
        1,
        "firing was said once (no repeat within repeat_secs)"
    );
    until("the flaky webhook's resolved notice", &|| {
        notices(&flaky, "resolved") == 1
    })
    .await;
    assert!(service.alerts.as_ref().unwrap().firing().is_empty());
    assert!(
        !stuck.lock().unwrap().bodies.is_empty(),
        "the stuck webhook was tried"
    );

    service.metrics.export();
    let text = service.metrics.telemetry.render();
    for line in [
        "weir_alert_firing{rule=\"a1 ratio low\"} 0",
        "weir_alert_notifications_total{webhook=\"flaky\",outcome=\"retried\"} 2",
        "weir_alert_notifications_total{webhook=\"slack\",outcome=\"sent\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    stop.cancel();
    service
        .finish(Duration::from_secs(30))
        .await
        .expect("drained");
}

/// A page of headless Chromium, driven over the DevTools protocol.
struct Browser {
    _chromium: Killed,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("chromium"));
        std::fs::create_dir_all(&dir).unwrap();
        let chromium = Killed(
            Command::new(program("chromium"))
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,1400",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", dir.display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("chromium.log")).unwrap())
                .spawn()
                .expect("start chromium"),
        );
        // Chromium writes the port it took into its profile directory.
        let started = Instant::now();
        let port = loop {
            if let Some(port) = std::fs::read_to_string(dir.join("DevToolsActivePort"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.parse::<u16>().ok()))
            {
                break port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromium did not start; see {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("devtools socket");
        let mut browser = Self {
            _chromium: chromium,
            socket,
            next_id: 1,
        };
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// Calls a DevTools method and returns its result (events are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        use tokio_tungstenite::tungstenite::Message;
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(Message::Text(request.into()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer in 30 s"))
                .expect("the devtools socket closed")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {}", answer["error"]);
                return answer["result"].clone();
            }
        }
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    async fn wait(&mut self, what: &str, expression: &str) {
        let started = Instant::now();
        // A page still loading (or navigating) has no such elements yet: false.
        let probe = format!(
            "(() => {{ try {{ return Boolean({expression}); }} catch (e) {{ return false; }} }})()"
        );
        while self.eval(&probe).await != json!(true) {
            if started.elapsed() > Duration::from_secs(60) {
                let shot = self.screenshot("failure.png").await;
                let page = self
                    .eval("location.href + '\\n' + document.body.innerText")
                    .await;
                panic!(
                    "the page never showed {what} ({expression}); it shows (screenshot {}):\n{}",
                    shot.display(),
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = root().join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// `weir serve --demo` in headless Chromium: logging in with the admin token,
/// the chart fills, the ratio shown is the stats API's, a rollback from the
/// page makes the other version current; with the viewer token (through a
/// token link) there are no admin controls. Screenshots go to
/// `target/screenshots/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_shows_the_apis_figures_and_rolls_back() {
    let weir = Serve::start("window-ui", "", &["--demo", "--demo-events", "3000"]);
    // A second version of the scenario plugin: the same component with a custom
    // section appended (a different digest, the same behaviour).
    let mut bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).unwrap();
    let name = b"weir-test";
    let payload = b"second version";
    bytes.push(0);
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let client = reqwest::Client::new();
    let uploaded = client
        .post(weir.url("/api/plugins?name=scenario"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert!(
        uploaded.status().is_success(),
        "upload: {}",
        uploaded.status()
    );
    let plugin = weir.get("/api/plugins/scenario", ADMIN).await;
    let newest = plugin["current_version"].as_i64().unwrap();
    assert!(newest >= 2, "{plugin}");

    // The demo feeds 3,000 events; wait until every one is counted.
    let started = Instant::now();
    let mut last = (0, Instant::now());
    let stats = loop {
        let stats = weir.get("/api/scenarios/5/stats", VIEWER).await;
        let total = stats["total"].as_u64().unwrap();
        if total != last.0 {
            last = (total, Instant::now());
        } else if total > 0 && last.1.elapsed() > Duration::from_secs(3) {
            break stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the demo's events were not counted: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // A daily report in the service's archive, as `weir report` writes them.
    let archive = weir::archive::ArchiveConfig {
        root: weir
            .log
            .parent()
            .unwrap()
            .join("archive")
            .display()
            .to_string(),
        ..weir::archive::ArchiveConfig::default()
    };
    weir::report::Archive::open(&archive)
        .expect("the archive")
        .write_daily(&[weir::report::ReportRow {
            scenario_id: "5".into(),
            period: "2026-12-06".into(),
            events: 1234,
            matched: 321,
            success_ratio: 0.2601,
            dead_letters: 2,
            top: Default::default(),
        }])
        .await
        .expect("a daily report");

    let mut browser = Browser::start().await;
    browser.goto(&weir.url("/")).await;
    browser
        .wait("the login form", "!document.getElementById('login').hidden")
        .await;
    browser
        .eval(&format!(
            "document.getElementById('token').value = {ADMIN:?}; document.getElementById('login-form').submit(); true"
        ))
        .await;
    browser.wait("the dashboard", "document.getElementById('role') && document.getElementById('role').textContent === 'admin'").await;
    browser
        .wait(
            "points on the chart",
            "document.querySelectorAll('#chart circle.pt').length > 0",
        )
        .await;
    browser
        .wait(
            "the daily history",
            "document.querySelector('#daily tbody tr') !== null",
        )
        .await;
    assert_eq!(
        browser
            .eval("[...document.querySelectorAll('#daily tbody tr td')].map(td => td.textContent)")
            .await,
        json!(["2026-12-06", "26.01 %", "1,234", "321", "2"]),
        "the day `weir report` wrote, under scenario 5"
    );
    let total = stats["total"].as_u64().unwrap();
    browser
        .wait(
            "the final count",
            &format!("document.querySelector('tr[data-scenario=\"5\"] td.ratio').dataset.total === '{total}'"),
        )
        .await;
    let shown = browser
        .eval("[document.querySelector('tr[data-scenario=\"5\"] td.ratio').dataset.ratio, document.querySelector('tr[data-scenario=\"5\"] td.ratio').textContent]")
        .await;
    let ratio = stats["success_ratio"].as_f64().unwrap();
    assert_eq!(
        shown[0].as_str().unwrap().parse::<f64>().unwrap(),
        ratio,
        "{shown}"
    );
    assert_eq!(shown[1], format!("{:.2} %", ratio * 100.0), "{shown}");
    let events = browser
        .eval("document.getElementById('events').textContent")
        .await;
    assert!(events.as_str().is_some_and(|e| e != "–"), "{events}");
    browser.screenshot("dashboard-admin.png").await;

    // Roll back from the page: choose the first version and press the button.
    browser
        .wait(
            "the rollback control",
            "document.querySelector('tr[data-plugin=\"scenario\"] button.rollback') !== null",
        )
        .await;
    browser
        .eval(
            "(() => { const row = document.querySelector('tr[data-plugin=\"scenario\"]'); \
             const select = row.querySelector('select.rollback-version'); select.value = '1'; \
             select.dispatchEvent(new Event('change')); row.querySelector('button.rollback').click(); return true; })()",
        )
        .await;
    browser
        .wait(
            "the rollback's message",
            "document.getElementById('message').textContent.includes('now at v1')",
        )
        .await;
    let plugin = weir.get("/api/plugins/scenario", VIEWER).await;
    assert_eq!(
        plugin["current_version"], 1,
        "the rollback took effect: {plugin}"
    );

    // Log out; a token link logs the viewer in, and the link's token is gone
    // from the address bar.
    browser
        .eval("document.getElementById('logout').submit(); true")
        .await;
    browser
        .wait(
            "the login form again",
            "!document.getElementById('login').hidden",
        )
        .await;
    browser.goto(&weir.url(&format!("/#token={VIEWER}"))).await;
    browser.wait("the viewer's dashboard", "document.getElementById('role') && document.getElementById('role').textContent === 'viewer'").await;
    browser
        .wait(
            "the plugins",
            "document.querySelector('tr[data-plugin=\"scenario\"]') !== null",
        )
        .await;
    assert_eq!(
        browser.eval("location.href.includes('token')").await,
        json!(false)
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('button.rollback, select.rollback-version').length")
            .await,
        json!(0),
        "a viewer sees no admin controls"
    );
    // The API refuses a viewer's write from the page too.
    let status = browser
        .eval(
            "fetch('/api/plugins/scenario/rollback', {method: 'POST', headers: {'content-type': 'application/json', 'x-weir-write': '1'}, body: '{\"to\": 2}'}).then(r => r.status)",
        )
        .await;
    assert_eq!(status, json!(403));
    browser.screenshot("dashboard-viewer.png").await;

    let log = std::fs::read_to_string(&weir.log).unwrap();
    assert!(
        !log.contains(ADMIN) && !log.contains(VIEWER),
        "a token is in the log"
    );
}
