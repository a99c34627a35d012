//! The runtime against real components: every fixture of `tests/fixtures/`
//! (hostile ones included) and every shipped plugin, built by `weir-artifacts`.
//!
//! Each hostile fixture must be contained with a clear reason while a
//! well-behaved plugin loaded in the same runtime keeps producing correct
//! output. A fixture or plugin without a test here is a compile error (see
//! the `foreach_*` checks at the bottom).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use weir_runtime::{
    Batch, BatchResult, EventInput, FailureKind, Plugin, PluginKind, Runtime, RuntimeConfig,
    RuntimeError, Status,
};

/// One runtime for the whole test binary, like one process in production.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(cache_dir()),
            cpu_limit_ms: Some(200),
            memory_limit_bytes: 32 << 20,
            output_limit_bytes: 1 << 20,
            ..RuntimeConfig::default()
        })
        .expect("runtime")
    })
}

fn cache_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-wasm-cache")
}

fn load(path: &str) -> Result<Plugin, RuntimeError> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    runtime().load(&bytes)
}

fn event(i: usize) -> String {
    format!(
        r#"{{"memberId":"m{i}","age":{},"gender":"MALE","h":{}}}"#,
        18 + i % 40,
        i % 24
    )
}

fn batch_of(values: &[String]) -> Batch {
    let mut batch = Batch::new("5", "events", 0);
    for (i, value) in values.iter().enumerate() {
        batch.push(1000 + i as i64, value.as_bytes()).unwrap();
    }
    batch
}

fn records(result: &BatchResult, index: usize) -> Vec<Vec<u8>> {
    result
        .records(&result.outcomes()[index])
        .map(<[u8]>::to_vec)
        .collect()
}

/// The well-behaved neighbour still echoes every event exactly.
fn assert_passthrough_still_works() {
    let plugin = load(weir_artifacts::FIXTURE_PASSTHROUGH).expect("passthrough loads");
    let mut instance = plugin.instantiate("{}").expect("passthrough configures");
    let values: Vec<String> = (0..50).map(event).collect();
    let result = instance
        .process(&batch_of(&values))
        .expect("passthrough runs");
    assert_eq!(result.outcomes().len(), values.len());
    for (i, value) in values.iter().enumerate() {
        assert_eq!(result.outcomes()[i].status, Status::Emitted, "event {i}");
        assert_eq!(
            records(&result, i),
            vec![value.as_bytes().to_vec()],
            "event {i}"
        );
    }
    assert_eq!(result.failed_calls(), 0);
}

/// Loads a hostile fixture, configures it and runs `values` through it.
fn run_hostile(path: &str, values: &[String]) -> BatchResult {
    let plugin = load(path).expect("hostile fixture loads");
    let mut instance = plugin
        .instantiate("{}")
        .expect("hostile fixture configures");
    instance
        .process(&batch_of(values))
        .expect("the runtime survives the fixture")
}

fn failure_kinds(result: &BatchResult) -> Vec<Option<FailureKind>> {
    result
        .outcomes()
        .iter()
        .map(|o| o.error.as_ref().map(|e| e.kind))
        .collect()
}

#[test]
fn passthrough() {
    let plugin = load(weir_artifacts::FIXTURE_PASSTHROUGH).unwrap();
    let info = plugin.info();
    assert_eq!(info.name, "passthrough");
    assert_eq!(info.version, "0.1.0");
    assert_eq!(info.sha256.len(), 64);
    // Loading the same bytes again returns the plugin already validated.
    let again = load(weir_artifacts::FIXTURE_PASSTHROUGH).unwrap();
    assert_eq!(again.info(), info);
    assert_passthrough_still_works();

    let mut instance = plugin.instantiate("{}").unwrap();
    let empty = instance.process(&Batch::new("5", "events", 0)).unwrap();
    assert!(empty.outcomes().is_empty());
    let refused = plugin.instantiate("{not json").unwrap_err();
    assert!(
        matches!(refused, RuntimeError::ConfigJson { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("passthrough@0.1.0"),
        "{refused}"
    );
}

/// Keys (present, absent, empty), headers and timestamps reach the guest for
/// each event, in the whole batch and in the slices retried around a trap.
#[test]
fn event_metadata_reaches_the_guest_also_after_a_trap() {
    const ECHO: &[u8] = br#"{"echo":true}"#;
    let headers: [(&str, &[u8]); 2] = [("a", b"1"), ("b", b"2")];
    let events = [
        (ECHO, Some(&b"k0"[..]), Some(1_000), &headers[..1]),
        (&b"{}"[..], None, Some(2_000), &[][..]),
        (ECHO, None, None, &[][..]),
        (
            &br#"{"trap":true}"#[..],
            Some(&b"kt"[..]),
            Some(3_000),
            &headers[..],
        ),
        (ECHO, Some(&b""[..]), Some(-5), &headers[1..]),
        (ECHO, Some(&b"k5"[..]), None, &[][..]),
    ];
    let mut batch = Batch::new("5", "clicks", 7);
    for (i, &(value, key, timestamp_ms, headers)) in events.iter().enumerate() {
        batch
            .push_event(EventInput {
                offset: 100 + i as i64,
                value,
                key,
                timestamp_ms,
                headers,
            })
            .unwrap();
    }
    let plugin = load(weir_artifacts::FIXTURE_TRAP_AT).unwrap();
    let mut instance = plugin.instantiate("{}").unwrap();
    let result = instance.process(&batch).unwrap();
    assert!(result.failed_calls() > 0, "the trap splits the batch");

    let echoed = |i: usize| -> serde_json::Value {
        let records = records(&result, i);
        assert_eq!(
            records.len(),
            1,
            "event {i}: {:?}",
            result.outcomes()[i].error
        );
        serde_json::from_slice(&records[0]).unwrap()
    };
    let expected = |offset: i64, timestamp: serde_json::Value, key, headers| {
        serde_json::json!({"offset": offset, "timestamp": timestamp, "key": key,
            "headers": headers, "topic": "clicks", "partition": 7})
    };
    assert_eq!(
        echoed(0),
        expected(
            100,
            1_000.into(),
            "k0".into(),
            serde_json::json!([["a", "1"]])
        )
    );
    assert_eq!(records(&result, 1), vec![b"{}".to_vec()]);
    assert_eq!(
        echoed(2),
        expected(
            102,
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::json!([])
        )
    );
    assert_eq!(failure_kinds(&result)[3], Some(FailureKind::Trap));
    assert_eq!(
        echoed(4),
        expected(104, (-5).into(), "".into(), serde_json::json!([["b", "2"]]))
    );
    assert_eq!(
        echoed(5),
        expected(
            105,
            serde_json::Value::Null,
            "k5".into(),
            serde_json::json!([])
        )
    );
}

#[test]
fn trap_at() {
    const K: usize = 37;
    let mut values: Vec<String> = (0..100).map(event).collect();
    values[K] = r#"{"trap":true}"#.to_owned();

    let plugin = load(weir_artifacts::FIXTURE_TRAP_AT).unwrap();
    let mut instance = plugin.instantiate("{}").unwrap();
    let result = instance.process(&batch_of(&values)).unwrap();

    assert_eq!(result.outcomes().len(), 100);
    for (i, outcome) in result.outcomes().iter().enumerate() {
        if i == K {
            assert_eq!(outcome.status, Status::Failed);
            let error = outcome.error.as_ref().unwrap();
            assert_eq!(error.kind, FailureKind::Trap);
            assert!(error.to_string().starts_with("trap: "), "{error}");
            assert!(error.message.contains("unreachable"), "{error}");
        } else {
            assert_eq!(
                outcome.status,
                Status::Emitted,
                "event {i}: {:?}",
                outcome.error
            );
            assert_eq!(
                records(&result, i),
                vec![values[i].as_bytes().to_vec()],
                "event {i}"
            );
        }
    }
    // Bisection: the first call plus one per level of halving.
    assert!(result.failed_calls() <= 8, "{}", result.failed_calls());

    // The instance was replaced transparently: the next batch runs normally.
    let clean: Vec<String> = (0..10).map(event).collect();
    let next = instance.process(&batch_of(&clean)).unwrap();
    assert!(next.outcomes().iter().all(|o| o.status == Status::Emitted));
    assert_eq!(next.failed_calls(), 0);
    assert_passthrough_still_works();
}

#[test]
fn wrong_world() {
    let err = load(weir_artifacts::FIXTURE_WRONG_WORLD).unwrap_err();
    assert!(matches!(err, RuntimeError::WrongWorld { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("weir:plugin/plugin@0.2.0"), "{message}");
    assert!(
        message.contains("this host accepts `weir:plugin/plugin@0.1.0`"),
        "{message}"
    );
    assert_passthrough_still_works();
}

#[test]
fn describe_trap() {
    let err = load(weir_artifacts::FIXTURE_DESCRIBE_TRAP).unwrap_err();
    assert!(matches!(err, RuntimeError::Describe { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("`describe` failed"), "{message}");
    assert_passthrough_still_works();
}

#[test]
fn core_module() {
    let err = load(weir_artifacts::FIXTURE_CORE_MODULE).unwrap_err();
    assert!(matches!(err, RuntimeError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("not a component"), "{err}");
    assert_passthrough_still_works();
}

#[test]
fn compiled_code_is_reused_from_the_disk_cache() {
    let config = RuntimeConfig {
        cache_dir: Some(cache_dir()),
        ..RuntimeConfig::default()
    };
    let bytes = std::fs::read(weir_artifacts::FIXTURE_PASSTHROUGH).unwrap();
    // The first runtime compiles (or finds it cached by an earlier run) ...
    Runtime::new(config.clone()).unwrap().load(&bytes).unwrap();
    // ... so a second one, as after a restart, must find it on disk.
    let restarted = Runtime::new(config).unwrap();
    restarted.load(&bytes).unwrap();
    let (hits, _misses) = restarted.cache_stats().unwrap();
    assert!(hits >= 1, "no cache hit after a restart");
}

#[test]
fn batches_are_isolated_per_instance() {
    // Two instances of one plugin in one runtime do not share state or fate.
    let plugin = load(weir_artifacts::FIXTURE_TRAP_AT).unwrap();
    let mut a = plugin.instantiate("{}").unwrap();
    let mut b = plugin.instantiate("{}").unwrap();
    let poisoned = a
        .process(&batch_of(&[r#"{"trap":true}"#.to_owned()]))
        .unwrap();
    assert_eq!(failure_kinds(&poisoned), vec![Some(FailureKind::Trap)]);
    let fine = b.process(&batch_of(&[event(1)])).unwrap();
    assert_eq!(fine.outcomes()[0].status, Status::Emitted);
}

#[test]
fn endless_loop() {
    let values: Vec<String> = (0..4).map(event).collect();
    let result = run_hostile(weir_artifacts::FIXTURE_ENDLESS_LOOP, &values);
    assert_eq!(failure_kinds(&result), vec![Some(FailureKind::CpuLimit); 4]);
    let error = result.outcomes()[0].error.as_ref().unwrap();
    assert!(
        error
            .to_string()
            .starts_with("cpu limit exceeded: the call ran past its 200 ms budget"),
        "{error}"
    );
    assert_passthrough_still_works();
}

/// Runs 64 events through `path` under a CPU limit and a batch budget (ms);
/// returns the result and how long the batch took.
fn timed_batch_of_64(path: &str, cpu_ms: u64, budget_ms: u64) -> (BatchResult, Duration) {
    let runtime = Runtime::new(RuntimeConfig {
        cpu_limit_ms: Some(cpu_ms),
        batch_budget_ms: budget_ms,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let bytes = std::fs::read(path).unwrap();
    let mut instance = runtime.load(&bytes).unwrap().instantiate("{}").unwrap();
    let values: Vec<String> = (0..64).map(event).collect();
    let started = Instant::now();
    let result = instance.process(&batch_of(&values)).unwrap();
    (result, started.elapsed())
}

#[test]
fn batch_budget_bounds_the_cost_of_a_hopeless_batch() {
    let (result, took) = timed_batch_of_64(weir_artifacts::FIXTURE_ENDLESS_LOOP, 20, 50);
    // Whole batch (20 ms), first half (20 ms), first quarter (the 10 ms left):
    // then the budget is spent, however many calls that took.
    assert!(took < Duration::from_millis(250), "{took:?}");
    assert!(
        (2..=4).contains(&result.failed_calls()),
        "{}",
        result.failed_calls()
    );
    assert_eq!(
        failure_kinds(&result),
        vec![Some(FailureKind::CpuLimit); 64]
    );
    let last = result.outcomes()[63].error.as_ref().unwrap();
    assert!(
        last.message
            .contains("not isolated: the batch's 50 ms budget was spent after"),
        "{last}"
    );
}

/// Failures that are each cheap enough for the CPU limit still cost no more
/// than the batch's budget in all.
#[test]
fn slow_trap() {
    let (result, took) = timed_batch_of_64(weir_artifacts::FIXTURE_SLOW_TRAP, 200, 500);
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert!(
        result.outcomes().iter().all(|o| o.status == Status::Failed),
        "{:?}",
        failure_kinds(&result)
    );
    // Isolating 64 events one by one takes 127 calls: far more than the budget.
    assert!(
        result.outcomes().iter().any(|o| o
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("budget was spent"))),
        "{:?}",
        result.outcomes()[63]
    );
    assert!(
        result.failed_call_time() >= Duration::from_millis(400),
        "{:?}",
        result.failed_call_time()
    );
    assert_passthrough_still_works();
}

/// Sleeping in any export holds no thread: the guest's clock is virtual, it
/// moves by exactly the time asked for, and randomness repeats for a replay.
#[test]
fn sleeper() {
    let started = Instant::now();
    let plugin = load(weir_artifacts::FIXTURE_SLEEPER).expect("sleeper loads");
    let loaded = started.elapsed();
    // `describe` sleeps 2 s; compiling the small component takes far less.
    assert!(loaded < Duration::from_secs(2), "load took {loaded:?}");
    let started = Instant::now();
    let mut first = plugin.instantiate("{}").expect("configure returns");
    let mut replay = plugin.instantiate("{}").expect("configure returns");
    let configured = started.elapsed();
    assert!(
        configured < Duration::from_secs(1),
        "configure took {configured:?}"
    );

    let values: Vec<String> = (0..64).map(event).collect();
    let batch = batch_of(&values);
    let started = Instant::now();
    let result = first.process(&batch).unwrap();
    let processed = started.elapsed();
    // 64 sleeps of 2 s each, under a 200 ms budget.
    assert!(
        processed < Duration::from_secs(1),
        "process took {processed:?}"
    );
    assert!(
        result
            .outcomes()
            .iter()
            .all(|o| o.status == Status::Emitted)
    );
    for i in 0..64 {
        let record: serde_json::Value =
            serde_json::from_slice(&records(&result, i)[0]).expect("the probe's JSON");
        assert_eq!(record["slept_ns"], 2_000_000_000u64, "{record}");
        // The clocks start at zero each call and move only by the sleeps.
        assert_eq!(
            record["wall_ns"],
            2_000_000_000u64 * (i as u64 + 1),
            "{record}"
        );
    }

    // Another instance on the same batch sees exactly the same world.
    let again = replay.process(&batch).unwrap();
    assert_eq!(again, result);
    // A batch of other events draws other numbers.
    let mut other = Batch::new("5", "events", 1);
    for (i, value) in values[..4].iter().enumerate() {
        other.push(2000 + i as i64, value.as_bytes()).unwrap();
    }
    let different = replay.process(&other).unwrap();
    let random = |result: &BatchResult| {
        let record: serde_json::Value = serde_json::from_slice(&records(result, 0)[0]).unwrap();
        record["random"].clone()
    };
    assert_ne!(random(&different), random(&result));
}

#[test]
fn bad_output() {
    let plugin = load(weir_artifacts::FIXTURE_BAD_OUTPUT).unwrap();

    // A 20 MiB reason is cut to the 4 KiB the runtime keeps, and marked.
    let mut giant = plugin.instantiate(r#"{"mode":"giant-error"}"#).unwrap();
    let result = giant.process(&batch_of(&[event(0)])).unwrap();
    let error = result.outcomes()[0].error.as_ref().unwrap();
    assert_eq!(error.kind, FailureKind::Plugin);
    assert!(error.message.len() < 4200, "{}", error.message.len());
    assert!(error.message.ends_with("… [cut: 20971520 bytes in all]"));

    // A million records for one event: that event fails alone.
    let mut flood = plugin.instantiate(r#"{"mode":"record-flood"}"#).unwrap();
    let values: Vec<String> = (0..4).map(event).collect();
    let result = flood.process(&batch_of(&values)).unwrap();
    assert_eq!(
        failure_kinds(&result),
        [Some(FailureKind::OutputLimit), None, None, None]
    );
    let error = result.outcomes()[0].error.as_ref().unwrap();
    assert!(
        error
            .message
            .contains("1000000 output records for 1 events; the limit is 262144 per call"),
        "{error}"
    );
    for i in 1..4 {
        assert_eq!(records(&result, i), [b"{}".to_vec()]);
    }

    // Contract breaches, one per event, each named.
    let mut contract = plugin.instantiate(r#"{"mode":"contract"}"#).unwrap();
    let values: Vec<String> = (0..8).map(event).collect();
    let result = contract.process(&batch_of(&values)).unwrap();
    let reasons: Vec<String> = result
        .outcomes()
        .iter()
        .map(|o| {
            o.error
                .as_ref()
                .map_or("ok".to_owned(), ToString::to_string)
        })
        .collect();
    for (i, reason) in reasons.iter().enumerate() {
        let expected = match (1000 + i) % 4 {
            0 => "invalid plugin output: the event is emitted but has no records",
            1 => "invalid plugin output: the event is matched but not emitted",
            2 => "invalid plugin output: record 0 of the event is not UTF-8 (at byte 0)",
            _ => "ok",
        };
        assert_eq!(reason, expected, "event {i}");
    }
    assert!(result.outcomes()[3].matched);
    assert_passthrough_still_works();
}

#[test]
fn schema_cycle() {
    let err = load(weir_artifacts::FIXTURE_SCHEMA_CYCLE).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::InvalidInfo {
                field: "config-schema",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("`$ref` at /$ref: references are not accepted"),
        "{err}"
    );
}

#[test]
fn schema_fan_out() {
    let started = Instant::now();
    let err = load(weir_artifacts::FIXTURE_SCHEMA_FAN_OUT).unwrap_err();
    assert!(
        err.to_string()
            .contains("config-schema: the schema has more than 2000 objects"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Nine memories under a cap of four: refused before compiling, by name.
#[test]
fn many_memories() {
    let err = load(weir_artifacts::FIXTURE_MANY_MEMORIES).unwrap_err();
    assert!(matches!(err, RuntimeError::TooCostly { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("it defines 9 linear memories; at most 4 are accepted"),
        "{err}"
    );
}

/// Two memories of 24 MiB each: each fits the 32 MiB cap, together they do
/// not, and the second growth is refused.
#[test]
fn two_memories() {
    let result = run_hostile(weir_artifacts::FIXTURE_TWO_MEMORIES, &[event(0)]);
    assert_eq!(failure_kinds(&result), [Some(FailureKind::MemoryLimit)]);
    assert_passthrough_still_works();
}

/// Host handles cost host memory outside the guest's budget: a store may
/// hold 10,000 at once, and the guest that asks for more fails with the reason.
#[test]
fn handle_flood() {
    let result = run_hostile(weir_artifacts::FIXTURE_HANDLE_FLOOD, &[event(0), event(1)]);
    assert_eq!(
        failure_kinds(&result),
        vec![Some(FailureKind::MemoryLimit); 2]
    );
    let error = result.outcomes()[0].error.as_ref().unwrap();
    assert_eq!(
        error.to_string(),
        "memory limit exceeded: the guest held more than 10000 host handles (pollables, streams) at once"
    );
    assert_passthrough_still_works();
}

/// A runtime that compiles in the compile worker, with its own cache.
fn with_worker(config: RuntimeConfig) -> Runtime {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("weir-worker-cache-{}", std::process::id()))
        .join(config.compile_memory_limit_bytes.to_string());
    Runtime::new(RuntimeConfig {
        cache_dir: Some(dir),
        compile_program: Some(env!("CARGO_BIN_EXE_weir-compile-worker").into()),
        ..config
    })
    .unwrap()
}

/// 400 functions at the nesting cap pass the shape checks and would compile
/// for seconds; the compile worker's time budget refuses them, soon after it.
#[test]
fn slow_compile() {
    let bytes = std::fs::read(weir_artifacts::FIXTURE_SLOW_COMPILE).unwrap();
    assert!(weir_runtime::limits::check_component(&bytes).is_ok());
    let runtime = with_worker(RuntimeConfig {
        compile_time_limit_ms: 300,
        ..RuntimeConfig::default()
    });
    let started = Instant::now();
    let err = runtime.load(&bytes).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(matches!(err, RuntimeError::TooCostly { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("compiling ran past its 300 ms budget"),
        "{err}"
    );
}

/// The worker compiles into the cache, where the service then finds it; with
/// too little memory it is stopped and the component refused.
#[test]
fn the_compile_worker_compiles_into_the_cache_and_caps_memory() {
    let bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).unwrap();
    let runtime = with_worker(RuntimeConfig::default());
    let plugin = runtime
        .load(&bytes)
        .expect("the scenario plugin compiles in the worker");
    assert_eq!(plugin.info().name, "scenario");
    let (hits, _) = runtime.cache_stats().unwrap();
    assert!(
        hits >= 1,
        "the service compiled again instead of using the worker's result"
    );

    let starved = with_worker(RuntimeConfig {
        compile_memory_limit_bytes: 16 << 20,
        ..RuntimeConfig::default()
    });
    let err = starved.load(&bytes).unwrap_err();
    assert!(matches!(err, RuntimeError::TooCostly { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("compiling needed more than its 16777216 bytes of memory"),
        "{err}"
    );
}

/// One function nested 100,000 deep: refused at once instead of a long,
/// gigabyte-sized compile.
#[test]
fn compile_bomb() {
    let started = Instant::now();
    let err = load(weir_artifacts::FIXTURE_COMPILE_BOMB).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, RuntimeError::TooCostly { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("a function nests blocks 2001 deep; at most 2000 are accepted"),
        "{err}"
    );
}

#[test]
fn memory_bomb() {
    let values: Vec<String> = (0..2).map(event).collect();
    let result = run_hostile(weir_artifacts::FIXTURE_MEMORY_BOMB, &values);
    assert_eq!(
        failure_kinds(&result),
        vec![Some(FailureKind::MemoryLimit); 2]
    );
    let error = result.outcomes()[0].error.as_ref().unwrap();
    assert!(
        error.to_string().starts_with(
            "memory limit exceeded: the guest tried to grow its memory past 33554432 bytes"
        ),
        "{error}"
    );
    assert_passthrough_still_works();
}

#[test]
fn huge_output() {
    let plugin = load(weir_artifacts::FIXTURE_HUGE_OUTPUT).unwrap();
    let values: Vec<String> = (0..3).map(event).collect();

    // 2 MiB per event against a 1 MiB output cap: each event alone is too much.
    let mut over_cap = plugin.instantiate(r#"{"bytes": 2097152}"#).unwrap();
    let result = over_cap.process(&batch_of(&values)).unwrap();
    assert_eq!(
        failure_kinds(&result),
        vec![Some(FailureKind::OutputLimit); 3]
    );
    let error = result.outcomes()[0].error.as_ref().unwrap();
    assert!(
        error
            .message
            .contains("bytes of output records for 1 events; the limit is 1048576 per call"),
        "{error}"
    );

    // 400 KiB per event: two fit, three do not. Splitting delivers all three.
    let mut splittable = plugin.instantiate(r#"{"bytes": 409600}"#).unwrap();
    let result = splittable.process(&batch_of(&values)).unwrap();
    assert!(
        result
            .outcomes()
            .iter()
            .all(|o| o.status == Status::Emitted)
    );
    assert_eq!(result.output_bytes(), 3 * 409600);
    assert_eq!(result.failed_calls(), 1);

    // 950,000 bytes: within the 1 MiB a call may return, over what Kafka takes
    // in one message: each event fails alone, by the per-record cap.
    let mut over_record = plugin.instantiate(r#"{"bytes": 950000}"#).unwrap();
    let result = over_record.process(&batch_of(&values[..1])).unwrap();
    assert_eq!(failure_kinds(&result), vec![Some(FailureKind::OutputLimit)]);
    let error = result.outcomes()[0].error.as_ref().unwrap();
    assert_eq!(
        error.to_string(),
        "output limit exceeded: record 0 of the event is 950000 bytes; the limit is 900000 per record"
    );

    // The default (64 MiB) cannot even be built inside a 32 MiB memory.
    let mut default = plugin.instantiate("{}").unwrap();
    let result = default.process(&batch_of(&values[..1])).unwrap();
    assert_eq!(failure_kinds(&result), vec![Some(FailureKind::MemoryLimit)]);
    assert_passthrough_still_works();
}

#[test]
fn panic() {
    let values: Vec<String> = (0..3).map(event).collect();
    let result = run_hostile(weir_artifacts::FIXTURE_PANIC, &values);
    assert_eq!(failure_kinds(&result), vec![Some(FailureKind::Trap); 3]);
    let error = result.outcomes()[0].error.as_ref().unwrap();
    // The guest's panic message, captured from its stderr, explains the trap.
    assert!(
        error
            .message
            .contains("the panic fixture panics on every event"),
        "{error}"
    );
    assert_passthrough_still_works();
}

#[test]
fn forbidden_import() {
    let err = load(weir_artifacts::FIXTURE_FORBIDDEN_IMPORT).unwrap_err();
    match &err {
        RuntimeError::ForbiddenImport { import, .. } => {
            assert!(import.starts_with("wasi:sockets/"), "{err}")
        }
        other => panic!("expected ForbiddenImport, got {other}"),
    }
    assert!(
        err.to_string().contains("which plugins are not granted"),
        "{err}"
    );
    assert_passthrough_still_works();
}

/// Scenario 5: "adult male users who clicked buy after 9 o'clock".
const SCENARIO_5: &str = r#"{
  "scenario_id": 5,
  "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1, "url": 0},
  "filters": [
    {"left": "age", "operator": ">", "right": 20},
    {"left": "gender", "operator": "==", "right": "MALE"},
    {"left": "h", "operator": ">=", "right": 9}
  ],
  "logical_operator": "AND"
}"#;

#[test]
fn scenario() {
    let plugin = load(weir_artifacts::PLUGIN_SCENARIO).unwrap();
    assert_eq!(plugin.info().name, "scenario");
    assert_eq!(plugin.info().kind, PluginKind::Scenario);
    let mut instance = plugin.instantiate(SCENARIO_5).unwrap();

    let values = [
        r#"{"memberId":7,"age":31,"gender":"MALE","h":10,"e_n":"구매하기","url":"/buy","timestamp":"2024-05-01T10:00:00Z"}"#,
        r#"{"memberId":8,"age":31,"gender":"FEMALE","h":10,"e_n":"구매하기","url":"/buy","timestamp":"2024-05-01T10:00:00Z"}"#,
        r#"{"memberId":9,"age":20,"gender":"MALE","h":23,"e_n":"구매하기","timestamp":"2024-05-02T23:00:00Z"}"#,
        r#"{"memberId":10,"age":"45","gender":"MALE","h":9,"e_n":"장바구니","timestamp":"2024-05-03T09:00:00Z"}"#,
        r#"{"memberId":11,"gender":"MALE","h":12,"timestamp":"2024-05-04T12:00:00Z"}"#,
        "not json at all",
    ];
    let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    let result = instance.process(&batch_of(&values)).unwrap();
    let matched: Vec<bool> = result.outcomes().iter().map(|o| o.matched).collect();
    assert_eq!(matched, [true, false, false, true, false, false]);

    let record = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&records(&result, i)[0]).unwrap()
    };
    let first = record(0);
    assert_eq!(first["memberId"], 7);
    assert_eq!(first["e_n"], "구매하기");
    assert_eq!(first["success"], 1);
    assert_eq!(first["scenario_id"], 5);
    assert_eq!(first["date"], "2024-05-01");
    assert!(first.get("url").is_none(), "url is dropped by log_format");
    assert_eq!(
        record(1)["success"],
        0,
        "unmatched events still emit a record"
    );
    assert_eq!(record(4)["age"], serde_json::Value::Null);

    let bad = &result.outcomes()[5];
    assert_eq!(bad.status, Status::Failed);
    assert_eq!(bad.error.as_ref().unwrap().kind, FailureKind::Plugin);
    assert_eq!(result.failed_calls(), 0);

    // A value that is not UTF-8 makes the batch cross as bytes: that event
    // fails with the reason, the others read as before.
    let mut mixed = Batch::new("5", "events", 0);
    mixed.push(0, values[0].as_bytes()).unwrap();
    mixed.push(1, b"{\"e_n\":\"\xea\xb5\"}").unwrap();
    mixed.push(2, values[3].as_bytes()).unwrap();
    let result = instance.process(&mixed).unwrap();
    let statuses: Vec<Status> = result.outcomes().iter().map(|o| o.status).collect();
    assert_eq!(statuses, [Status::Emitted, Status::Failed, Status::Emitted]);
    let reason = result.outcomes()[1].error.as_ref().unwrap().to_string();
    assert!(reason.contains("not UTF-8"), "{reason}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&records(&result, 0)[0]).unwrap(),
        first
    );
    assert!(result.outcomes()[2].matched);

    // Refused by the host against the plugin's schema, naming the field ...
    let refused = plugin
        .instantiate(r#"{"filters":[{"left":"age","operator":"=~","right":1}]}"#)
        .unwrap_err();
    assert!(
        matches!(refused, RuntimeError::ConfigSchema { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("/filters/0/operator"),
        "{refused}"
    );
    // ... or by the plugin itself, for what a schema cannot say.
    let refused = plugin
        .instantiate(r#"{"filters":[{"left":"e_n","operator":"regex","right":"("}]}"#)
        .unwrap_err();
    assert!(
        matches!(refused, RuntimeError::Configure { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("scenario@"), "{refused}");
}

#[test]
fn access_log() {
    let plugin = load(weir_artifacts::PLUGIN_ACCESS_LOG).unwrap();
    assert_eq!(plugin.info().name, "access-log");
    let mut instance = plugin.instantiate("{}").unwrap();
    let values = vec![
        r#"203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://x/" "curl/8.0""#.to_owned(),
        "garbage".to_owned(),
        r#"{"level":"INFO","message":"started","ts":1700000000}"#.to_owned(),
    ];
    let result = instance.process(&batch_of(&values)).unwrap();
    let access: serde_json::Value = serde_json::from_slice(&records(&result, 0)[0]).unwrap();
    assert_eq!(access["ip_address"], "203.0.113.9");
    assert_eq!(access["status_code"], 200);
    assert_eq!(access["timestamp"], "2000-10-10T13:55:36-07:00");
    assert_eq!(result.outcomes()[1].status, Status::Failed);
    assert_eq!(
        result.outcomes()[1].error.as_ref().unwrap().kind,
        FailureKind::Plugin
    );
    let app: serde_json::Value = serde_json::from_slice(&records(&result, 2)[0]).unwrap();
    assert_eq!(app["log_type"], "application");
    assert_eq!(app["message"], "started");
}

mod every_artifact_has_a_test {
    #![allow(unused_imports)]
    macro_rules! fixture_has_test {
        ($name:ident) => {
            use super::$name as _;
        };
    }
    weir_artifacts::foreach_fixture!(fixture_has_test);
    weir_artifacts::foreach_plugin!(fixture_has_test);
}
