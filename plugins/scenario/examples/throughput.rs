//! Native throughput of the scenario plugin's batch logic (scenario 5, ~310
//! byte events, batch 256), through the same `weir_sdk` batch loop the
//! component runs; time is this thread's CPU time where Linux reports it.
//! Run with
//! `cargo run --release -p weir-plugin-scenario --example throughput`.

use std::time::Instant;

/// Nanoseconds this thread has spent on a CPU (Linux), so other processes
/// competing for the cores do not inflate the figure; `None` elsewhere.
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

use weir_plugin_scenario::ScenarioPlugin;
use weir_sdk::{Batch, Harness};

const CONFIG: &str = r#"{"scenario_id":5,"log_format":{"memberId":1,"age":1,"gender":1,"h":1,"e_n":1,"url":0},
 "filters":[{"left":"age","operator":">","right":20},{"left":"gender","operator":"==","right":"MALE"},
            {"left":"h","operator":">=","right":9}],"logical_operator":"AND"}"#;

/// Scenario 5 plus a `regex` condition on the URL.
const CONFIG_REGEX: &str = r#"{"scenario_id":5,"log_format":{"memberId":1,"age":1,"gender":1,"h":1,"e_n":1,"url":0},
 "filters":[{"left":"url","operator":"regex","right":"^/shop/product/[0-9]+\\?ref=[a-z_]+"},
            {"left":"age","operator":">","right":20},{"left":"gender","operator":"==","right":"MALE"},
            {"left":"h","operator":">=","right":9}],"logical_operator":"AND"}"#;

fn main() {
    for (name, config) in [("scenario-5", CONFIG), ("scenario-5+regex", CONFIG_REGEX)] {
        println!("{name}");
        run(&Harness::scenario::<ScenarioPlugin>(config).unwrap());
    }
}

fn run(harness: &Harness) {
    for batch_size in [1usize, 64, 256, 1024] {
        let mut batch = Batch::new("5");
        for i in 0..batch_size {
            let event = format!(
                r#"{{"memberId":{},"age":{},"gender":"{}","h":{},"e_n":"구매","url":"/shop/product/8841?ref=main_banner&utm_source=app","referrer":"/shop/category/12","device":"android","app_version":"5.12.3","session_id":"9f3c2a1e-77b4-4c3e-9a5d-0b8e1f2c3d4e","timestamp":"2024-05-01T21:14:07.123+09:00","price":129000}}"#,
                100_000 + i,
                18 + i % 40,
                if i % 2 == 0 { "MALE" } else { "FEMALE" },
                i % 24
            );
            batch.push(event.as_bytes()).timestamp_ms(1_714_565_647_123);
        }
        let events_total = 2_000_000usize;
        let rounds = events_total / batch_size;
        let start = Instant::now();
        let cpu_start = cpu_ns();
        let mut records = 0usize;
        for _ in 0..rounds {
            records += harness.process(std::hint::black_box(&batch)).record_count();
        }
        let secs = match (cpu_start, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e9,
            _ => start.elapsed().as_secs_f64(),
        };
        assert_eq!(records, rounds * batch_size);
        let per_event = secs * 1e9 / (rounds * batch_size) as f64;
        println!(
            "batch={batch_size:5} ns/event={per_event:6.0} events/s={:9.0}",
            1e9 / per_event
        );
    }
}
