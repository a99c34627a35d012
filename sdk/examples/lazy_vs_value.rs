//! Measures the cost of reading three fields of a ~310-byte JSON event with
//! [`weir_sdk::Event`] (lazy, borrowed) against parsing the whole event into a
//! `serde_json::Value`. Run with
//! `cargo run --release -p weir-sdk --example lazy_vs_value`.

use std::hint::black_box;
use std::time::Instant;

const EVENT: &str = r#"{"memberId":184467,"age":31,"gender":"MALE","h":21,"e_n":"구매","url":"/shop/product/8841?ref=main_banner&utm_source=app","referrer":"/shop/category/12","device":"android","app_version":"5.12.3","session_id":"9f3c2a1e-77b4-4c3e-9a5d-0b8e1f2c3d4e","timestamp":"2024-05-01T21:14:07.123+09:00","price":129000,"currency":"KRW"}"#;

fn main() {
    let rounds: u32 = 500_000;
    println!("event bytes: {}", EVENT.len());

    let start = Instant::now();
    let mut hits = 0u64;
    for _ in 0..rounds {
        let event = weir_sdk::Event::new(black_box(EVENT.as_bytes()));
        let age = event.i64("age").unwrap().unwrap_or(0);
        let male = event.str("gender").unwrap().as_deref() == Some("MALE");
        let h = event.i64("h").unwrap().unwrap_or(0);
        hits += u64::from(age > 20 && male && h >= 9);
    }
    let lazy = start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds);

    let start = Instant::now();
    for _ in 0..rounds {
        let value: serde_json::Value = serde_json::from_slice(black_box(EVENT.as_bytes())).unwrap();
        let age = value["age"].as_i64().unwrap_or(0);
        let male = value["gender"].as_str() == Some("MALE");
        let h = value["h"].as_i64().unwrap_or(0);
        hits += u64::from(age > 20 && male && h >= 9);
    }
    let full = start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds);

    println!("lazy Event access:        {lazy:7.0} ns/event");
    println!("serde_json::Value parse:  {full:7.0} ns/event");
    println!("ratio value/lazy:         {:7.2}", full / lazy);
    assert_eq!(hits, 2 * u64::from(rounds));
}
