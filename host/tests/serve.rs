//! `weir serve --demo` run as a process on its embedded defaults: it counts the
//! demo events, serves them, and stops cleanly on SIGTERM.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_counts_live_and_drains_on_sigterm() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = std::env::temp_dir().join(format!("weir-serve-test-{}-{port}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "serve",
            "--demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        // The collector on a free port: tests run side by side.
        .env("WEIR_COLLECT__LISTEN", "127.0.0.1:0")
        .env_remove("WEIR_KAFKA")
        .env_remove("WEIR_REDIS")
        .env_remove("WEIR_DATABASE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir serve");

    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut stats = Value::Null;
    while stats["total"].as_u64().unwrap_or(0) < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no live counts within 60 s: {stats}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "weir serve exited early"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(token) = std::fs::read_to_string(data.join("admin-token")) else {
            continue;
        };
        let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/api/scenarios/5/stats"))
            .bearer_auth(token.trim())
            .send()
            .await
        else {
            continue;
        };
        if response.status().is_success() {
            stats = serde_json::from_slice(&response.bytes().await.expect("stats body"))
                .expect("stats JSON");
        }
    }
    let ratio = stats["success_ratio"].as_f64().unwrap();
    assert!(
        ratio > 0.0 && ratio < 1.0,
        "scenario 5 matches some demo events: {stats}"
    );
    assert_eq!(stats["versions"][0]["plugin"], "scenario@1", "{stats}");
    assert_eq!(stats["errors"], 0);
    // The demo's events came in through the collector, as pixel hits.
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let pixel_hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_collect_events_total{endpoint=\"pixel\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        pixel_hits >= 500,
        "the demo feeds the collector over HTTP: {pixel_hits} pixel hits\n{metrics}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "no exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success(),
        "exit {status} after SIGTERM; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("scenario 5:"),
        "live counts on stderr:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&data);
}
