//! weir-runtime, the plugin runtime: runs scenario plugins (WebAssembly components
//! implementing `weir:plugin@0.1.0`, see `wit/plugin.wit`) in a sandbox.
//!
//! It owns the one wasmtime [`Engine`] of the process, the compiled-code cache,
//! the limits every instance runs under, and the translation between host
//! batches and the WIT records.
//!
//! Data flow: bytes of a `.wasm` enter through [`Runtime::load`], which
//! validates them (a component, the right world and version, only granted
//! imports, a sane `describe`) and returns a [`Plugin`]. [`Plugin::instantiate`]
//! configures an [`Instance`] with a scenario's JSON configuration. A [`Batch`]
//! built on the host goes through [`Instance::process`] and comes back as a
//! [`BatchResult`]: one [`Outcome`] per event plus the output records.
//!
//! Containment: each call runs under a CPU deadline (epoch interruption,
//! optionally fuel), a memory cap (pooling allocator slot size plus a
//! [`wasmtime::ResourceLimiter`]) and an output cap. A call that traps or hits
//! a limit leaves the instance unusable: it is replaced from its
//! `InstancePre` and configured again, and the batch is split in halves until
//! the events responsible are isolated; only they fail, with the reason, and
//! every other event gets its normal outcome. The search is bounded in time,
//! not in calls: no call runs past what is left of the batch's
//! [`RuntimeConfig::batch_budget_ms`], and once it is spent the events not yet
//! isolated fail with the last reason seen. [`BatchResult::failed_call_time`]
//! tells the caller what the failures cost, to set a costly plugin aside.
//!
//! Output: the plugin's answer is checked against the contract (one outcome
//! per event; records only for emitted events, and at least one; `matched`
//! only with `emitted`; every record UTF-8) and against the caps that what
//! follows can take (bytes and records per call, bytes per record, bytes per
//! failure reason). A breach of the whole answer fails the call with
//! `invalid plugin output`; a breach by one event fails that event alone.
//!
//! Host calls: no WASI call can block (see `link_virtual_clock`), so the
//! epoch deadline, which fires only in guest code, bounds every call. What a
//! guest can observe of time and randomness is in `state.rs`.
//!
//! WASI: guests built for `wasm32-wasip2` import `wasi:io`, `wasi:cli`,
//! `wasi:clocks`, `wasi:random` and `wasi:filesystem` interfaces even when they
//! use none of them. Those are linked to a context with no preopened
//! directories, no environment, no arguments and no network; guest stdout and
//! stderr go to the log under a per-call cap (see `state.rs`). Any other import,
//! `wasi:sockets` included, is refused when the plugin is loaded.
//!
//! CPU limit choice: epoch interruption, on by default (`cpu_limit_ms`, 500 ms
//! per call, 10 ms ticks). Measured with `cargo bench -p weir-benches` on the
//! `scenario` plugin, epoch costs less than fuel (the figures, with and
//! without each, are in docs/performance.md) and bounds wall time, which is
//! what protects the pipeline; fuel stays available (`fuel_per_call`) for
//! deterministic budgets. Either check runs at every loop back-edge and
//! function entry of the guest, so its share shrinks as guest code does more
//! per iteration.
//!
//! Compilation: a component compiles once; with `cache_dir` set, a restarted
//! process loads it from wasmtime's on-disk cache (read, decompress, no
//! compile). Loading the same bytes again in one process costs only their
//! sha256. Instantiate plus `configure` start from the `InstancePre`, with the
//! pooling allocator. What each costs: docs/performance.md, "Compile, load,
//! instantiate".
//!
//! Calls are synchronous and may run for up to the CPU limit: async callers
//! run them on a blocking thread (`tokio::task::spawn_blocking`).

#![warn(missing_docs)]

mod batch;
mod bindings;
pub mod compile;
mod config;
mod instance;
pub mod limits;
mod plugin;
mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime::{Cache, CacheConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use batch::{Batch, BatchResult, EventError, EventInput, FailureKind, Outcome, Status};
pub use bindings::WIT_VERSION;
pub use config::RuntimeConfig;
pub use instance::Instance;
pub use plugin::{Plugin, PluginInfo, PluginKind};

use state::HostState;

// Workers share plugins and move instances into blocking tasks.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Runtime>();
    send_sync::<Plugin>();
    send::<Instance>();
    send_sync::<Batch>();
    send_sync::<BatchResult>();
};

/// Everything that can go wrong in the runtime. Per-event failures are not
/// errors: they are [`Outcome`]s with [`Status::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime configuration cannot be used.
    #[error("invalid runtime configuration: {reason}")]
    Config {
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// The on-disk compilation cache could not be set up.
    #[error("cannot use compilation cache directory {dir}: {reason}")]
    Cache {
        /// The configured directory.
        dir: PathBuf,
        /// The underlying error.
        reason: String,
    },
    /// The bytes are not WebAssembly at all.
    #[error(
        "plugin {sha256}: not a WebAssembly binary (no `\\0asm` header); upload the `.wasm` file built for wasm32-wasip2"
    )]
    NotWasm {
        /// Short sha256 of the bytes.
        sha256: String,
    },
    /// The bytes are a core WebAssembly module, not a component.
    #[error(
        "plugin {sha256}: this is a core WebAssembly module, not a component; build the plugin for \
         the `wasm32-wasip2` target (or wrap it with `wasm-tools component new`) so it implements \
         the world weir:plugin/weir-plugin@{wit}"
    )]
    CoreModule {
        /// Short sha256 of the bytes.
        sha256: String,
        /// The WIT version accepted.
        wit: &'static str,
    },
    /// The component holds more than a plugin may (memories, tables,
    /// instances, functions, code size or nesting), checked before compiling.
    #[error("plugin {sha256}: refused before compiling: {reason}")]
    TooCostly {
        /// Short sha256 of the bytes.
        sha256: String,
        /// Which bound it passes, and the bound.
        reason: String,
    },
    /// The component failed to compile.
    #[error("plugin {sha256}: invalid component: {reason}")]
    Compile {
        /// Short sha256 of the bytes.
        sha256: String,
        /// The compiler's message.
        reason: String,
    },
    /// The component imports something plugins are not granted.
    #[error(
        "plugin {sha256}: imports `{import}`, which plugins are not granted; allowed imports are \
         wasi:io, wasi:cli, wasi:clocks, wasi:random, wasi:filesystem (no directories are \
         preopened) and weir:plugin/types@{wit}"
    )]
    ForbiddenImport {
        /// Short sha256 of the bytes.
        sha256: String,
        /// The refused import, e.g. `wasi:sockets/tcp@0.2.6`.
        import: String,
        /// The WIT version accepted.
        wit: &'static str,
    },
    /// The component does not implement the plugin world this host accepts.
    #[error("plugin {sha256}: does not implement weir:plugin/weir-plugin@{wit}: {reason}")]
    WrongWorld {
        /// Short sha256 of the bytes.
        sha256: String,
        /// What was found instead.
        reason: String,
        /// The WIT version accepted.
        wit: &'static str,
    },
    /// `describe` trapped or could not be called.
    #[error("plugin {sha256}: `describe` failed: {reason}")]
    Describe {
        /// Short sha256 of the bytes.
        sha256: String,
        /// The trap or error.
        reason: String,
    },
    /// `describe` returned something unusable.
    #[error("plugin {sha256}: `describe` returned an invalid {field}: {reason}")]
    InvalidInfo {
        /// Short sha256 of the bytes.
        sha256: String,
        /// Which field of `info` is wrong.
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// The configuration is not JSON.
    #[error("plugin {plugin}@{version}: configuration is not valid JSON: {reason}")]
    ConfigJson {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// The parser's message.
        reason: String,
    },
    /// The configuration does not satisfy the plugin's JSON Schema.
    #[error(
        "plugin {plugin}@{version}: configuration does not match the plugin's schema: {violations}"
    )]
    ConfigSchema {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// Up to five violations, each with its JSON pointer.
        violations: String,
    },
    /// The plugin refused the configuration, or trapped reading it.
    #[error("plugin {plugin}@{version}: configuration refused: {reason}")]
    Configure {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// The plugin's message, or the trap.
        reason: String,
    },
    /// A new instance could not be created (pool exhausted, start function trapped).
    #[error("plugin {plugin}@{version}: cannot instantiate: {reason}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// The underlying error.
        reason: String,
    },
    /// A batch buffer would pass the 4 GiB a WIT end offset can address.
    #[error("batch too large: {bytes} bytes in one buffer (at most 4 GiB)")]
    BatchTooLarge {
        /// The size that did not fit.
        bytes: usize,
    },
}

/// The plugin runtime of one process: an engine, a linker with deny-all WASI,
/// an epoch ticker and the loaded plugins. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
    /// Validated plugins by sha256 of their bytes. Kept apart from
    /// `RuntimeInner`, which plugins point to, so that no cycle keeps the
    /// engine (and its ticker thread) alive after the last user is gone.
    plugins: Arc<Mutex<HashMap<[u8; 32], Plugin>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    /// Compiled-code cache, when on (kept for its hit/miss counters).
    cache: Option<Cache>,
}

impl Runtime {
    /// Builds the engine, the linker and (if a CPU limit is set) the epoch
    /// ticker thread, which stops when the last clone of the runtime and of
    /// its plugins and instances is gone.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let memory_limit = usize::try_from(config.memory_limit_bytes)
            .ok()
            .filter(|&m| m >= 64 << 10)
            .ok_or_else(|| RuntimeError::Config {
                reason: format!(
                    "memory_limit_bytes = {} must be at least 65536 (one WebAssembly page)",
                    config.memory_limit_bytes
                ),
            })?;
        if config.max_instances == 0 {
            return Err(RuntimeError::Config {
                reason: "max_instances must be at least 1".to_owned(),
            });
        }
        if let Some(cpu) = config.cpu_limit_ms
            && config.batch_budget_ms < cpu
        {
            return Err(RuntimeError::Config {
                reason: format!(
                    "batch_budget_ms = {} must be at least cpu_limit_ms = {cpu}: a batch gets at least one whole call",
                    config.batch_budget_ms
                ),
            });
        }
        if config.epoch_tick_ms == 0 {
            return Err(RuntimeError::Config {
                reason: "epoch_tick_ms must be at least 1".to_owned(),
            });
        }

        let mut pool = PoolingAllocationConfig::new();
        let n = config.max_instances;
        // Every instance may use what one component may hold (`limits.rs`), so
        // no plugin can drain the pool that the others instantiate from.
        let per_instance = |cap: usize| n.saturating_mul(cap as u32);
        pool.total_component_instances(n)
            .total_core_instances(per_instance(limits::MAX_CORE_INSTANCES))
            .total_memories(per_instance(limits::MAX_MEMORIES))
            .total_tables(per_instance(limits::MAX_TABLES))
            .max_core_instances_per_component(limits::MAX_CORE_INSTANCES as u32)
            .max_memories_per_component(limits::MAX_MEMORIES as u32)
            .max_tables_per_component(limits::MAX_TABLES as u32)
            .max_memories_per_module(limits::MAX_MEMORIES as u32)
            .max_tables_per_module(limits::MAX_TABLES as u32)
            .total_stacks(n)
            .max_memory_size(memory_limit);

        let (engine, cache) = engine(&config, Some(pool))?;
        let mut linker = Linker::new(&engine);
        let link_error = |e: wasmtime::Error| RuntimeError::Config {
            reason: format!("linking WASI: {e:#}"),
        };
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_error)?;
        link_virtual_clock(&mut linker).map_err(link_error)?;

        if config.cpu_limit_ms.is_some() {
            spawn_epoch_ticker(&engine, Duration::from_millis(config.epoch_tick_ms))?;
        }

        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                config,
                cache,
            }),
            plugins: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The configuration this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Validates and compiles a plugin (or returns the one already loaded from
    /// the same bytes). See [`RuntimeError`] for what is refused.
    pub fn load(&self, bytes: &[u8]) -> Result<Plugin, RuntimeError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(plugin) = self.plugins().get(&sha256) {
            return Ok(plugin.clone());
        }
        let plugin = Plugin::load(self.inner.clone(), bytes, sha256)?;
        self.plugins().insert(sha256, plugin.clone());
        Ok(plugin)
    }

    /// On-disk cache hits and misses so far, when the cache is on.
    pub fn cache_stats(&self) -> Option<(usize, usize)> {
        self.inner
            .cache
            .as_ref()
            .map(|c| (c.cache_hits(), c.cache_misses()))
    }

    fn plugins(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Plugin>> {
        self.plugins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RuntimeInner {
    /// Epoch ticks to allow for a call that may run `left` more (at most the
    /// CPU limit), or `None` when there is no deadline.
    fn deadline_ticks(&self, left: Option<Duration>) -> Option<u64> {
        let config = &self.config;
        config.cpu_limit_ms.map(|ms| {
            let ms = left.map_or(ms, |left| ms.min(left.as_millis() as u64));
            // One extra tick: the current tick may be nearly over when the call starts.
            ms.div_ceil(config.epoch_tick_ms) + 1
        })
    }
}

/// The engine for `config`: with the pooling allocator `pool` in the
/// service, without in the compile worker (which only compiles). Both share
/// every setting that compiled code depends on, so the worker's results are
/// found in the cache by the service.
pub(crate) fn engine(
    config: &RuntimeConfig,
    pool: Option<PoolingAllocationConfig>,
) -> Result<(Engine, Option<Cache>), RuntimeError> {
    let mut wasm = wasmtime::Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(config.cpu_limit_ms.is_some())
        .consume_fuel(config.fuel_per_call.is_some());
    if let Some(pool) = pool {
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    if config.perf_map {
        wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let cache = match &config.cache_dir {
        Some(dir) => {
            let cache_error = |reason: String| RuntimeError::Cache {
                dir: dir.clone(),
                reason,
            };
            let absolute = std::path::absolute(dir).map_err(|e| cache_error(e.to_string()))?;
            let mut cache_config = CacheConfig::new();
            cache_config.with_directory(absolute);
            let cache = Cache::new(cache_config).map_err(|e| cache_error(format!("{e:#}")))?;
            wasm.cache(Some(cache.clone()));
            Some(cache)
        }
        None => None,
    };
    let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Config {
        reason: format!("{e:#}"),
    })?;
    Ok((engine, cache))
}

/// Replaces WASI's clock subscriptions with ones that never wait: the guest's
/// clock (see `state.rs`) moves on by what it asked to wait for, and the
/// pollable is ready at once. A sleep, a `poll` on a timer or a busy wait on
/// the clock therefore never holds the host thread in a host call, where the
/// epoch deadline cannot reach; the only other pollables a guest can get
/// (stdin, which is closed, and stdout/stderr, which always accept) are ready
/// at once too.
fn link_virtual_clock(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime::StoreContextMut;
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;

    fn ready_pollable(state: &mut HostState) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let ready = state.table.push(state::Ready)?;
        Ok((wasmtime_wasi::p2::subscribe(&mut state.table, ready)?,))
    }

    linker.allow_shadowing(true);
    let mut clock = linker.instance(state::MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, HostState>, (nanos,): (u64,)| {
            let state = store.data_mut();
            state.clock.advance(nanos);
            ready_pollable(state)
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, HostState>, (instant,): (u64,)| {
            let state = store.data_mut();
            state.clock.advance_to(instant);
            ready_pollable(state)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Increments the engine's epoch every `tick` until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine, tick: Duration) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
        .map_err(|e| RuntimeError::Config {
            reason: format!("cannot start the epoch ticker thread: {e}"),
        })
}

/// The first 12 hex digits of a sha256, for messages.
fn short_hex(sha256: &[u8; 32]) -> String {
    sha256[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_unknown_fields_and_fills_defaults() {
        let config: RuntimeConfig = serde_json::from_str(r#"{"cpu_limit_ms": 50}"#).unwrap();
        assert_eq!(config.cpu_limit_ms, Some(50));
        assert_eq!(config.memory_limit_bytes, 64 << 20);
        let unknown = serde_json::from_str::<RuntimeConfig>(r#"{"cpu_limit": 50}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `cpu_limit`"),
            "{unknown}"
        );
    }

    #[test]
    fn impossible_limits_are_refused() {
        let err = Runtime::new(RuntimeConfig {
            memory_limit_bytes: 1000,
            ..RuntimeConfig::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("memory_limit_bytes = 1000"),
            "{err}"
        );
    }

    #[test]
    fn bytes_that_are_not_a_component_are_refused_precisely() {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let not_wasm = runtime.load(b"hello").unwrap_err();
        assert!(
            matches!(not_wasm, RuntimeError::NotWasm { .. }),
            "{not_wasm}"
        );
        // The smallest core module: magic and version 1, no sections.
        let core = runtime.load(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(matches!(core, RuntimeError::CoreModule { .. }), "{core}");
        assert!(core.to_string().contains("wasm32-wasip2"), "{core}");
        // A component header followed by garbage fails to compile.
        let garbage = runtime.load(b"\0asm\x0d\0\x01\0\xff\xff").unwrap_err();
        assert!(matches!(garbage, RuntimeError::Compile { .. }), "{garbage}");
    }
}
