//! Shared pieces of weir's benchmarks: realistic input events and the
//! scenario configuration they are measured with.
//!
//! Run the benchmarks with `cargo bench -p weir-benches`. Each prints its
//! figures as stable `key=value` lines (see `benches/scenario.rs`) after
//! criterion's own report.
//!
//! # Figures
//!
//! Every figure these benches print, with its command and the machine, is in
//! docs/performance.md: the `scenario` plugin at batches of 1 to 1,024 against
//! the same code built natively, with the runtime's limits on (epoch deadline,
//! 64 MiB memory cap, output cap) and off, and the boundary alone (the
//! passthrough fixture, which copies each value to its output). Both sides are
//! built with the same release profile (no LTO, 16 codegen units), and building
//! the batch is outside the timed call on both sides.
//!
//! What brought the wasm side closer to native, in order (each step's figure
//! is in docs/performance.md, "wasm side at batch 256, one change at a time"):
//!
//! - The SDK's own JSON split, inlined accessors and pre-rendered output;
//!   native got faster as much, so the ratio hardly moved.
//! - `weir_sdk::FieldSet` picks: each event name looked up once
//!   in a small table instead of each wanted name compared with every event
//!   name; names compared as overlapping words.
//! - Columns across the boundary: wasmtime converts a list of per-event
//!   records field by field (a memory lookup per field); lists of numbers are
//!   copied whole. A batch of one event costs a little more, as each list is
//!   an allocation in the guest.
//! - No allocation per event: the batch loop hands the split vector from one
//!   event to the next. In the guest an allocation is a chain of calls into
//!   dlmalloc, each with its stack and deadline checks.
//! - UTF-8 checked once, natively, by whoever fills the batch: values that
//!   all are UTF-8 cross as a WIT `string`, which the guest takes as `&str`
//!   without checking again. The host's native check costs about half of the
//!   guest's. Native skips the same check here, so the ratio moved the other
//!   way.
//!
//! Where the rest of the gap is (`perf record` with `WEIR_BENCH_PROFILE=1`,
//! which runs only the wasm side with a perf map, plus the compiled code read
//! back from the runtime's cache): every guest function does the same work
//! about twice as slowly as LLVM's native code, since Cranelift keeps loop
//! state, the heap base and the deadline in stack slots and spills
//! callee-saved registers on every call; the epoch check at every loop
//! back-edge and function entry adds a fifth to a quarter on top. Getting
//! closer would take an interruption without per-iteration checks (wasmtime's
//! MMU-based interruption, proposed upstream; not in wasmtime 48, and newer
//! releases need a newer Rust), and a backend that keeps hot loop state in
//! registers. Tried and not kept (docs/performance.md says by how much): a
//! columnar batch with nine lists always sent; copying short output pieces as
//! words instead of `memory.copy`; a word-wise backslash search in place of
//! `memchr`; fat LTO (native faster, wasm not, so shipped components and this
//! bench keep the same release profile on both sides); `opt-level = "s"` or
//! 2; `+simd128` (the code that would use it is in the precompiled standard
//! library); a tag per field name for lookups.

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

/// What the benches against a broker share: the tracking event they send,
/// a producer that never drops a record, and the latency read-back.
pub mod kafka {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use serde_json::json;

    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// Tracking event `i` for `scenario`, sent at `sent_ms` (about 220 bytes;
    /// about 270 with `user_agent`).
    pub fn event(scenario: &str, i: u64, sent_ms: i64, user_agent: bool) -> Vec<u8> {
        let mut event = json!({
            "scenario_id": scenario,
            "memberId": format!("m{}", i % 1000),
            "age": 15 + i % 40,
            "gender": if i.is_multiple_of(2) { "MALE" } else { "FEMALE" },
            "h": i % 24,
            "e_n": if i.is_multiple_of(3) { "구매" } else { "조회" },
            "url": format!("https://shop.example/goods/{}?ref=home&campaign=autumn", i % 977),
            "device": "mobile",
            "session": format!("s-{:08x}", i.wrapping_mul(2_654_435_761)),
            "sent_ms": sent_ms,
        });
        if user_agent {
            event["ua"] = json!("Mozilla/5.0 (Linux; Android 14; SM-S918N) Mobile");
        }
        serde_json::to_vec(&event).expect("event JSON")
    }

    /// Scenario 5 as the benches against a broker run it (keeping `sent_ms`
    /// for the latency read-back), its outputs to `output_topic`.
    pub fn scenario_5(output_topic: &str) -> serde_json::Value {
        json!({
            "scenario_id": "5",
            "title": "adult male users who clicked buy after 9",
            "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1, "sent_ms": 1, "url": 0},
            "filters": [
                {"left": "age", "operator": ">", "right": 20},
                {"left": "gender", "operator": "==", "right": "MALE"},
                {"left": "h", "operator": ">=", "right": 9}
            ],
            "logical_operator": "AND",
            "output_topic": output_topic,
        })
    }

    /// Makes `topics` with `partitions` partitions each, replication 1.
    pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin");
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .expect("create topics")
        {
            result.expect("topic");
        }
    }

    /// A producer that batches (5 ms, 1 MB, lz4), as a busy client would.
    pub fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("compression.type", "lz4")
            .create()
            .expect("producer")
    }

    /// Sends one record, waiting while the producer's queue is full.
    pub fn send(
        producer: &ThreadedProducer<DefaultProducerContext>,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
    ) {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
    }

    /// The `p` quantile of `sorted` (0 when empty).
    pub fn percentile(sorted: &[i64], p: f64) -> i64 {
        if sorted.is_empty() {
            return 0;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    /// Sends `rate` events a second for `seconds` to `input` (event `i` made
    /// by `make(i, now_ms)`) and returns, sorted, how long each output took
    /// from its send time (`sent_ms` in the output) to a `read_committed`
    /// reader of `output` in consumer group `group`.
    pub fn latencies(
        brokers: &str,
        (input, output, group): (&str, &str, &str),
        (rate, seconds): (u64, u64),
        make: impl Fn(u64, i64) -> (Option<Vec<u8>>, Vec<u8>) + Send + 'static,
    ) -> Vec<i64> {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "latest")
            .create()
            .expect("reader");
        reader.subscribe(&[output]).expect("subscribe");
        // Let the reader join and position itself at the end before timing.
        let join_deadline = Instant::now() + Duration::from_secs(15);
        while reader.assignment().map(|a| a.count()).unwrap_or(0) == 0
            && Instant::now() < join_deadline
        {
            reader.poll(Duration::from_millis(100));
        }
        let total = rate * seconds;
        let load = {
            let (brokers, input) = (brokers.to_owned(), input.to_owned());
            std::thread::spawn(move || {
                let producer = producer(&brokers);
                let started = Instant::now();
                for i in 0..total {
                    let due = Duration::from_micros(i * 1_000_000 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let (key, value) = make(i, now_ms());
                    send(&producer, &input, key.as_deref(), &value);
                }
                producer.flush(Duration::from_secs(60)).expect("flush");
            })
        };
        let mut latencies = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(seconds + 60);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let seen = now_ms();
                    let value: serde_json::Value =
                        serde_json::from_slice(message.payload().unwrap_or_default())
                            .expect("output JSON");
                    if let Some(sent) = value["sent_ms"].as_i64() {
                        latencies.push(seen - sent);
                    }
                    quiet_since = Instant::now();
                }
                _ if load.is_finished() && quiet_since.elapsed() > Duration::from_secs(3) => {
                    break;
                }
                _ => {}
            }
        }
        load.join().expect("load thread");
        latencies.sort_unstable();
        latencies
    }
}
