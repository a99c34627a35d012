//! Shared pieces of weir's benchmarks: realistic input events and the
//! scenario configuration they are measured with.
//!
//! Run the benchmarks with `cargo bench -p weir-benches`. Each prints its
//! figures as stable `key=value` lines (see `benches/scenario.rs`) after
//! criterion's own report.
//!
//! # Figures (`scenario`, limits on: epoch deadline, 64 MiB memory cap, output cap)
//!
//! Release build on a 2-core machine shared with other work; two runs of the
//! bench's own summary, back to back (both sides built with the same release
//! profile: no LTO, 16 codegen units):
//!
//! | batch | wasm ns/event | native ns/event | wasm/native | wasm events/s |
//! |---|---|---|---|---|
//! | 1 | 2372-2400 | 475-478 | 4.99-5.02 | 417k-422k |
//! | 64 | 1068-1110 | 434-435 | 2.46-2.55 | 901k-936k |
//! | 256 | 1017 | 433-436 | 2.33-2.35 | 983k |
//! | 1024 | 1010-1019 | 430-434 | 2.33-2.37 | 981k-990k |
//!
//! Without any limit the wasm side runs 749-760 ns/event at batch 256 (1.75x
//! native); the epoch deadline adds 38-40 %, fuel 43 %, both 75 %.
//!
//! Where the rest goes (`perf` with `WEIR_BENCH_PROFILE=1`, which runs only
//! the wasm side and writes a perf map): about 12 % of the wasm time is the
//! host lowering and lifting the batch (the per-event `event` and `outcome`
//! records are converted field by field; a columnar layout of primitive
//! lists would make them plain copies), the rest is guest code, in which the
//! JSON split and field lookups dominate. Getting to 1.3x would take: no
//! per-iteration epoch check (wasmtime's MMU-based interruption, proposed
//! upstream, measured there at about 3 % instead of 14 %; not in wasmtime 48,
//! and wasmtime 49 needs a newer Rust), the columnar batch, and fewer, wider
//! loops in the guest (`simd128` scanning, which the precompiled wasm
//! standard library does not use). Fat LTO is not a way there: it makes the
//! native build about 10 % faster and the wasm build no faster (1098 against
//! 1005 ns/event; ratio 2.8 with both built that way), so shipped components
//! and the bench keep the same release profile on both sides.

/// The scenario every benchmark evaluates: scenario 5, "adult male users who
/// clicked buy after 9 o'clock" (`age > 20 AND gender == MALE AND h >= 9`),
/// keeping a handful of fields.
pub const SCENARIO_5: &str = r#"{
  "scenario_id": "5",
  "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1, "url": 0, "timestamp": 1},
  "filters": [
    {"left": "age", "operator": ">", "right": 20},
    {"left": "gender", "operator": "==", "right": "MALE"},
    {"left": "h", "operator": ">=", "right": 9}
  ],
  "logical_operator": "AND"
}"#;

/// Deterministic tracking events of about 310 bytes: member id, age, gender,
/// hour, a Korean event name, a URL and a timestamp, like the ones the
/// collector receives from the shop's pages.
pub fn tracking_events(count: usize, seed: u64) -> Vec<Vec<u8>> {
    const EVENT_NAMES: [&str; 6] = [
        "구매하기 버튼 클릭",
        "장바구니 담기",
        "상품 상세 보기",
        "검색 결과 클릭",
        "쿠폰 다운로드",
        "회원 가입 완료",
    ];
    const PAGES: [&str; 4] = ["products", "cart", "search", "events"];
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*: fast, deterministic, good enough to vary the fields.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..count)
        .map(|i| {
            let r = next();
            let age = 14 + r % 60;
            let gender = if (r >> 8) % 2 == 0 { "MALE" } else { "FEMALE" };
            let h = (r >> 16) % 24;
            let name = EVENT_NAMES[((r >> 24) % EVENT_NAMES.len() as u64) as usize];
            let page = PAGES[((r >> 32) % PAGES.len() as u64) as usize];
            let product = (r >> 36) % 100_000;
            let minute = (r >> 44) % 60;
            let second = (r >> 50) % 60;
            format!(
                r#"{{"memberId":"M{member:08}","age":{age},"gender":"{gender}","h":{h},"e_n":"{name}","event_type":"click","url":"https://shop.example.co.kr/{page}/{product}?ref=main_banner&utm_source=app","timestamp":"2026-11-26T{h:02}:{minute:02}:{second:02}.{ms:03}+09:00","device":"android","session":"s-{session:016x}"}}"#,
                member = (r >> 20) % 10_000_000,
                ms = i % 1000,
                session = r,
            )
            .into_bytes()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_of_realistic_size() {
        let events = tracking_events(1000, 7);
        let total: usize = events.iter().map(Vec::len).sum();
        let mean = total / events.len();
        assert!((280..=340).contains(&mean), "mean event size {mean}");
        for event in &events {
            let value: serde_json::Value = serde_json::from_slice(event).unwrap();
            assert!(value["e_n"].as_str().unwrap().chars().any(|c| c >= '가'));
        }
        assert_eq!(tracking_events(3, 7), tracking_events(3, 7));
        let config: serde_json::Value = serde_json::from_str(SCENARIO_5).unwrap();
        assert_eq!(config["filters"].as_array().unwrap().len(), 3);
    }
}
