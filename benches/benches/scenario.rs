//! The `scenario` plugin's per-event cost through the WebAssembly boundary,
//! with the runtime's limits on, against the same logic compiled natively;
//! plus the cost of the limits themselves and of loading a plugin.
//!
//! After criterion's report it prints stable, parseable lines:
//!
//! ```text
//! scenario batch=256 wasm_ns_per_event=.. native_ns_per_event=.. ratio=.. events_per_s=..
//! boundary plugin=passthrough batch=.. wasm_ns_per_event=..
//! limits mode=epoch batch=256 wasm_ns_per_event=.. overhead_pct=..
//! load compile_ms=.. disk_cache_ms=.. memory_cache_us=.. instantiate_us=..
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use weir::runtime::{Batch, Instance, Runtime, RuntimeConfig};
use weir_benches::{SCENARIO_5, tracking_events};

const BATCH_SIZES: [usize; 4] = [1, 64, 256, 1024];
const EVENTS: usize = 4096;

fn main() {
    let events = tracking_events(EVENTS, 42);
    let wasm = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("scenario plugin built");

    // WEIR_BENCH_PROFILE=1: only run the wasm side at batch 256 (or
    // WEIR_BENCH_BATCH) for 10 s, with a perf map, under `perf record`;
    // WEIR_BENCH_PROFILE=passthrough: the same with the passthrough fixture,
    // to look at the boundary alone.
    let profile = std::env::var("WEIR_BENCH_PROFILE").ok();
    let runtime = Runtime::new(RuntimeConfig {
        perf_map: profile.is_some(),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let mut instance = configured(&runtime, &wasm);
    let native = native::Scenario::new(SCENARIO_5);
    check_same_answers(&mut instance, &native, &events);
    if let Some(which) = profile {
        if which == "passthrough" {
            instance = passthrough(&runtime);
        }
        let size =
            std::env::var("WEIR_BENCH_BATCH").map_or(256, |s| s.parse().expect("batch size"));
        let batches = batches(&events, size);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            for batch in &batches {
                black_box(instance.process(batch).expect("process"));
            }
        }
        return;
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    {
        let mut group = criterion.benchmark_group("scenario");
        for &size in &BATCH_SIZES {
            let batches = batches(&events, size);
            group.throughput(Throughput::Elements(size as u64));
            let mut next = 0;
            group.bench_with_input(BenchmarkId::new("wasm", size), &batches, |b, batches| {
                b.iter(|| {
                    next = (next + 1) % batches.len();
                    black_box(instance.process(&batches[next]).expect("process"))
                })
            });
            let native_batches = native_batches(&events, size);
            let mut next = 0;
            group.bench_with_input(
                BenchmarkId::new("native", size),
                &native_batches,
                |b, batches| {
                    b.iter(|| {
                        next = (next + 1) % batches.len();
                        black_box(native.process(&batches[next]))
                    })
                },
            );
        }
        group.finish();
    }
    criterion.final_summary();

    println!();
    for &size in &BATCH_SIZES {
        let batches = batches(&events, size);
        let native_batches = native_batches(&events, size);
        let wasm_ns = ns_per_event(EVENTS, || {
            for batch in &batches {
                black_box(instance.process(batch).expect("process"));
            }
        });
        let native_ns = ns_per_event(EVENTS, || {
            for batch in &native_batches {
                black_box(native.process(batch));
            }
        });
        println!(
            "scenario batch={size} wasm_ns_per_event={wasm_ns:.0} native_ns_per_event={native_ns:.0} \
             ratio={:.2} events_per_s={:.0}",
            wasm_ns / native_ns,
            1e9 / wasm_ns
        );
    }

    let batches = batches(&events, 256);
    // The contract's own per-event cost: a guest that copies each value to
    // its output untouched, so what remains is the boundary (lowering the
    // batch, lifting the output) and the SDK-free glue.
    let mut neighbour = passthrough(&runtime);
    for size in [1, 256] {
        let batches = self::batches(&events, size);
        let ns = ns_per_event(EVENTS, || {
            for batch in &batches {
                black_box(neighbour.process(batch).expect("process"));
            }
        });
        println!("boundary plugin=passthrough batch={size} wasm_ns_per_event={ns:.0}");
    }

    let modes = [
        ("off", None, None),
        ("epoch", Some(500), None),
        ("fuel", None, Some(u64::MAX / 4)),
        ("epoch+fuel", Some(500), Some(u64::MAX / 4)),
    ];
    let mut off_ns = f64::NAN;
    for (mode, cpu_limit_ms, fuel_per_call) in modes {
        let runtime = Runtime::new(RuntimeConfig {
            cpu_limit_ms,
            fuel_per_call,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let mut instance = configured(&runtime, &wasm);
        let ns = ns_per_event(EVENTS, || {
            for batch in &batches {
                black_box(instance.process(batch).expect("process"));
            }
        });
        if mode == "off" {
            off_ns = ns;
        }
        println!(
            "limits mode={mode} batch=256 wasm_ns_per_event={ns:.0} overhead_pct={:.1}",
            (ns / off_ns - 1.0) * 100.0
        );
    }

    print_load_costs(&wasm);
}

fn configured(runtime: &Runtime, wasm: &[u8]) -> Instance {
    runtime
        .load(wasm)
        .expect("scenario loads")
        .instantiate(SCENARIO_5)
        .expect("scenario 5 configures")
}

/// The passthrough test fixture: each value copied to the output untouched.
fn passthrough(runtime: &Runtime) -> Instance {
    let wasm = std::fs::read(weir_artifacts::FIXTURE_PASSTHROUGH).expect("fixture built");
    runtime
        .load(&wasm)
        .expect("passthrough loads")
        .instantiate("{}")
        .expect("passthrough configures")
}

fn batches(events: &[Vec<u8>], size: usize) -> Vec<Batch> {
    events
        .chunks(size)
        .enumerate()
        .map(|(n, chunk)| {
            let mut batch = Batch::new("5", "events", 0);
            for (i, value) in chunk.iter().enumerate() {
                batch.push((n * size + i) as i64, value).expect("batch");
            }
            batch
        })
        .collect()
}

fn native_batches(events: &[Vec<u8>], size: usize) -> Vec<weir_sdk::Batch> {
    events.chunks(size).map(native::Scenario::batch).collect()
}

/// Best of five rounds of at least 300 ms each; `run` handles `events` events.
fn ns_per_event(events: usize, mut run: impl FnMut()) -> f64 {
    run();
    (0..5)
        .map(|_| {
            let started = Instant::now();
            let mut rounds = 0u32;
            while started.elapsed() < Duration::from_millis(300) {
                run();
                rounds += 1;
            }
            started.elapsed().as_nanos() as f64 / (f64::from(rounds) * events as f64)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Compile (empty disk cache), load from the disk cache (as after a restart),
/// load again in the same process, and instantiate + configure.
fn print_load_costs(wasm: &[u8]) {
    let dir = std::env::temp_dir().join(format!("weir-bench-cache-{}", std::process::id()));
    let config = RuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(config.clone()).expect("runtime");
    let started = Instant::now();
    let plugin = first.load(wasm).expect("load");
    let compile = started.elapsed();
    let started = Instant::now();
    first.load(wasm).expect("load");
    let memory_cache = started.elapsed();

    let restarted = Runtime::new(config).expect("runtime");
    let started = Instant::now();
    restarted.load(wasm).expect("load");
    let disk_cache = started.elapsed();

    let rounds = 200u32;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(plugin.instantiate(SCENARIO_5).expect("instantiate"));
    }
    let instantiate = started.elapsed() / rounds;
    println!(
        "load compile_ms={:.1} disk_cache_ms={:.2} memory_cache_us={:.1} instantiate_us={:.1} wasm_bytes={}",
        compile.as_secs_f64() * 1e3,
        disk_cache.as_secs_f64() * 1e3,
        memory_cache.as_secs_f64() * 1e6,
        instantiate.as_secs_f64() * 1e6,
        wasm.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Both sides must compute the same thing, or the ratio means nothing.
fn check_same_answers(instance: &mut Instance, native: &native::Scenario, events: &[Vec<u8>]) {
    let batch = &batches(&events[..256], 256)[0];
    let result = instance.process(batch).expect("process");
    let expected = native.process(&native::Scenario::batch(&events[..256]));
    let mut matched = 0;
    for (i, outcome) in result.outcomes().iter().enumerate() {
        let records: Vec<&[u8]> = result.records(outcome).collect();
        assert_eq!(
            outcome.matched,
            expected.outcomes()[i].matched,
            "event {i}: matched differs"
        );
        assert_eq!(records.len(), 1, "event {i}: {:?}", outcome.error);
        assert_eq!(
            Some(records[0]),
            expected.record(i),
            "event {i}: records differ"
        );
        matched += usize::from(outcome.matched);
    }
    assert!(
        matched > 0 && matched < 256,
        "scenario 5 should match some events, not all"
    );
}

mod native {
    //! The same scenario logic compiled natively: the plugin crate's rlib run
    //! through the SDK's native harness, which executes the same batch code
    //! the component does, minus the WebAssembly boundary.

    use weir_plugin_scenario::ScenarioPlugin;
    use weir_sdk::{Batch, Harness};

    pub struct Scenario {
        harness: Harness,
    }

    impl Scenario {
        pub fn new(config: &str) -> Self {
            let harness = Harness::scenario::<ScenarioPlugin>(config)
                .expect("scenario 5 configures natively")
                .with_scenario_id("5");
            Scenario { harness }
        }

        pub fn batch(events: &[Vec<u8>]) -> Batch {
            let mut batch = Batch::new("5");
            for value in events {
                batch.push(value);
            }
            batch
        }

        pub fn process(&self, batch: &Batch) -> weir_sdk::Output {
            self.harness.process(batch)
        }
    }
}
