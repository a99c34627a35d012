//! Configuration of the plugin runtime: where compiled code is cached and the
//! limits every plugin instance runs under.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the plugin runtime is set up. Every field has a default, so `{}` is a
/// valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Directory of wasmtime's on-disk compilation cache. A component whose
    /// bytes were compiled before (by any process using the same directory and
    /// the same engine settings) loads from here instead of being recompiled.
    /// `None` turns the on-disk cache off.
    pub cache_dir: Option<PathBuf>,
    /// Largest linear memory one plugin instance may grow to, in bytes. Growing
    /// beyond it fails inside the guest, which usually aborts; the event is then
    /// failed with `memory limit exceeded`.
    pub memory_limit_bytes: u64,
    /// How many plugin instances may be alive at once in this process (the size
    /// of the pooling allocator). Instantiating beyond it fails.
    pub max_instances: u32,
    /// Wall-clock budget of one guest call (one batch), in milliseconds,
    /// enforced by epoch interruption. `None` turns the deadline off.
    pub cpu_limit_ms: Option<u64>,
    /// Period of the epoch ticker thread, in milliseconds. The CPU deadline is
    /// accurate to about one tick.
    pub epoch_tick_ms: u64,
    /// Fuel (roughly, WebAssembly instructions) one guest call may spend.
    /// `None` (the default) turns fuel metering off: it costs more than the
    /// epoch deadline and bounds the same thing.
    pub fuel_per_call: Option<u64>,
    /// Largest sum of output record bytes one guest call may return. A call over
    /// it is retried on halves of its batch; an event that alone passes it fails
    /// with `output limit exceeded`.
    pub output_limit_bytes: u64,
    /// Most output records one guest call may return; handled like
    /// `output_limit_bytes`.
    pub output_limit_records: u64,
    /// Largest single output record, in bytes. An event with a larger record
    /// fails alone with `output limit exceeded`. Kafka's producer refuses any
    /// message over its `message.max.bytes` (1,000,000 by default, key and
    /// headers included), so the default leaves room for weir's headers.
    pub max_record_bytes: u64,
    /// Longest failure reason a plugin may give, in bytes; a longer one is cut
    /// at a character boundary and marked with its full length.
    pub max_error_bytes: usize,
    /// Wall-clock budget of one batch, in milliseconds, including every retry
    /// while the runtime isolates the events that make calls fail. No call
    /// runs past what is left of it; once it is spent, the events not yet
    /// isolated fail with the last reason seen. At least `cpu_limit_ms`.
    pub batch_budget_ms: u64,
    /// Bytes of guest stdout and of guest stderr forwarded to the log per call;
    /// the rest is counted and reported in one warning.
    pub guest_log_bytes_per_call: usize,
    /// Wall-clock budget for compiling one component in the compile worker,
    /// in milliseconds (see `compile_program`). A component that takes longer
    /// is refused at upload.
    pub compile_time_limit_ms: u64,
    /// Memory the compile worker may use for one component, in bytes (its
    /// `RLIMIT_DATA`). A component that needs more is refused at upload.
    pub compile_memory_limit_bytes: u64,
    /// Program that compiles components under the two budgets above, run as
    /// `<program> __compile-plugin` (see `compile.rs`); `weir serve` names its
    /// own binary. Not read from configuration. `None` compiles in-process,
    /// bounded only by the shape checks.
    #[serde(skip)]
    pub compile_program: Option<PathBuf>,
    /// Write `/tmp/perf-<pid>.map` as plugins are compiled, so that Linux
    /// `perf` names guest functions in its profiles. For profiling only.
    pub perf_map: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            memory_limit_bytes: 64 << 20,
            max_instances: 256,
            cpu_limit_ms: Some(500),
            epoch_tick_ms: 10,
            fuel_per_call: None,
            output_limit_bytes: 16 << 20,
            output_limit_records: 1 << 18,
            max_record_bytes: 900_000,
            max_error_bytes: 4096,
            batch_budget_ms: 1000,
            compile_time_limit_ms: 30_000,
            compile_memory_limit_bytes: 2 << 30,
            compile_program: None,
            guest_log_bytes_per_call: 4096,
            perf_map: false,
        }
    }
}
