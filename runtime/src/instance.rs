//! A configured plugin instance and the batch call with its containment:
//! limits armed before each call, a trapped instance replaced, and a failed
//! batch split until the events responsible are isolated.

use std::ops::Range;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use super::batch::{Batch, BatchResult, EventError, FailureKind, OutputCaps, check_output};
use super::bindings::{self, WeirPlugin};
use super::plugin::Plugin;
use super::state::{HostState, mix64};
use super::{RuntimeError, RuntimeInner};

/// A plugin instance configured for one scenario. Not shared between threads
/// at once: give each worker its own.
pub struct Instance {
    plugin: Plugin,
    config: String,
    /// `None` after a trap until the next call re-creates it.
    live: Option<Live>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.plugin.info().name)
            .field("version", &self.plugin.info().version)
            .field("live", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

/// A store and the instance living in it.
pub(crate) struct Live {
    pub(crate) store: Store<HostState>,
    pub(crate) bindings: WeirPlugin,
}

impl Live {
    /// Resets per-call state (clocks, randomness from `seed`) and sets the CPU
    /// budget for the next guest call: the CPU limit, or `left` if shorter.
    pub(crate) fn arm(&mut self, runtime: &RuntimeInner, seed: u64, left: Option<Duration>) {
        self.store.data_mut().begin_call(seed);
        if let Some(ticks) = runtime.deadline_ticks(left) {
            self.store.set_epoch_deadline(ticks);
        }
        if let Some(fuel) = runtime.config.fuel_per_call {
            // Only fails when fuel is off in the engine, and it is on here.
            let _ = self.store.set_fuel(fuel);
        }
    }
}

/// State of the search for the events that make calls fail.
struct Isolation {
    /// When the batch's budget is spent.
    deadline: Instant,
    /// The reason of the last failed call that was split.
    last: Option<EventError>,
}

/// Why one guest call produced no usable output.
struct CallFailure {
    error: EventError,
    /// Whether splitting the batch can isolate the cause (false when the
    /// plugin's answer is malformed, which splitting would only repeat).
    split: bool,
}

impl Instance {
    pub(crate) fn new(plugin: Plugin, config: String) -> Result<Self, RuntimeError> {
        let live = plugin.live(&config)?;
        Ok(Self {
            plugin,
            config,
            live: Some(live),
        })
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Runs one batch. Every event gets an outcome: the plugin's, or a failure
    /// naming the trap or limit that the event caused. Errs only when a
    /// trapped instance cannot be re-created, which leaves the batch undone.
    ///
    /// Blocks for up to the CPU limit per guest call; see the module doc.
    pub fn process(&mut self, batch: &Batch) -> Result<BatchResult, RuntimeError> {
        let mut result = BatchResult::default();
        if batch.is_empty() {
            return Ok(result);
        }
        let config = &self.plugin.inner.runtime.config;
        let mut isolation = Isolation {
            deadline: Instant::now() + Duration::from_millis(config.batch_budget_ms),
            last: None,
        };
        self.run(batch, 0..batch.len(), &mut result, &mut isolation)?;
        Ok(result)
    }

    /// Runs `range` of `batch`; on a failed call, splits it in halves and runs
    /// each, down to single events, while the failed-call budget lasts.
    fn run(
        &mut self,
        batch: &Batch,
        range: Range<usize>,
        result: &mut BatchResult,
        isolation: &mut Isolation,
    ) -> Result<(), RuntimeError> {
        let left = isolation.deadline.saturating_duration_since(Instant::now());
        if let Some(last) = &isolation.last
            && left.is_zero()
        {
            // Every further call may burn a whole CPU budget again: stop here.
            let error = EventError {
                kind: last.kind,
                message: format!(
                    "{} (not isolated: the batch's {} ms budget was spent after {} failed calls)",
                    last.message,
                    self.plugin.inner.runtime.config.batch_budget_ms,
                    result.failed_calls()
                ),
            };
            self.report(batch, &range, &error);
            result.push_failed(&error, range.len());
            return Ok(());
        }
        let started = Instant::now();
        let answer = if range.len() == batch.len() {
            self.call(&batch.inner, left)?
        } else {
            self.call(&batch.slice(range.clone()), left)?
        };
        let failure = match answer {
            Ok(output) => {
                result.push_output(output, &OutputCaps::of(&self.plugin.inner.runtime.config));
                return Ok(());
            }
            Err(failure) => failure,
        };
        result.note_failed_call(started.elapsed());
        if range.len() == 1 || !failure.split {
            self.report(batch, &range, &failure.error);
            result.push_failed(&failure.error, range.len());
            return Ok(());
        }
        isolation.last = Some(failure.error);
        let middle = range.start + range.len() / 2;
        self.run(batch, range.start..middle, result, isolation)?;
        self.run(batch, middle..range.end, result, isolation)
    }

    fn report(&self, batch: &Batch, range: &Range<usize>, error: &EventError) {
        let info = self.plugin.info();
        tracing::warn!(
            plugin = %info.name,
            version = %info.version,
            events = range.len(),
            first_offset = batch.offset(range.start),
            reason = %error,
            "plugin failed events"
        );
    }

    /// One guest call. The outer error means no instance could be made; the
    /// inner one that this call failed (and the instance, if it trapped, is gone).
    fn call(
        &mut self,
        batch: &bindings::Batch,
        left: Duration,
    ) -> Result<Result<bindings::Output, CallFailure>, RuntimeError> {
        let runtime = self.plugin.inner.runtime.clone();
        let live = match &mut self.live {
            Some(live) => live,
            None => self.live.insert(self.plugin.live(&self.config)?),
        };
        live.arm(&runtime, call_seed(batch), Some(left));
        let answer = live
            .bindings
            .weir_plugin_plugin()
            .call_process(&mut live.store, batch);
        live.store.data_mut().end_call();

        let config = &runtime.config;
        match answer {
            Ok(output) => {
                if let Some(reason) = check_output(&output, batch.offsets.len()) {
                    return Ok(Err(CallFailure {
                        error: EventError {
                            kind: FailureKind::InvalidOutput,
                            message: reason,
                        },
                        split: false,
                    }));
                }
                let over = |what: &str, count: usize, limit: u64| {
                    (count as u64 > limit).then(|| {
                        format!(
                            "{count} {what} for {} events; the limit is {limit} per call",
                            batch.offsets.len()
                        )
                    })
                };
                let breach = over(
                    "bytes of output records",
                    output.records.len(),
                    config.output_limit_bytes,
                )
                .or_else(|| {
                    over(
                        "output records",
                        output.record_ends.len(),
                        config.output_limit_records,
                    )
                });
                if let Some(message) = breach {
                    return Ok(Err(CallFailure {
                        error: EventError {
                            kind: FailureKind::OutputLimit,
                            message,
                        },
                        split: true,
                    }));
                }
                Ok(Ok(output))
            }
            Err(error) => {
                let state = live.store.data();
                let failure = classify(&error, state.limiter.hit, state.stderr_tail(), &runtime);
                // A trapped instance cannot be entered again.
                self.live = None;
                Ok(Err(CallFailure {
                    error: failure,
                    split: true,
                }))
            }
        }
    }
}

/// The seed of a call's randomness: what the call is about, so that a replay
/// of the same events sees the same numbers (see `state.rs`).
fn call_seed(batch: &bindings::Batch) -> u64 {
    let text = |seed: u64, text: &str| {
        text.bytes()
            .fold(seed, |seed, byte| mix64(seed ^ u64::from(byte)))
    };
    let seed = text(text(0, &batch.scenario_id), &batch.topic);
    let first = batch.offsets.first().copied().unwrap_or_default();
    let seed = mix64(seed ^ batch.partition as u64);
    let seed = mix64(seed ^ first as u64);
    mix64(seed ^ batch.offsets.len() as u64)
}

/// Names the cause of a failed guest call.
fn classify(
    error: &wasmtime::Error,
    memory_hit: bool,
    stderr: Option<String>,
    runtime: &RuntimeInner,
) -> EventError {
    let config = &runtime.config;
    let with_stderr = |message: String| match &stderr {
        Some(tail) => format!("{message} (guest stderr: {tail})"),
        None => message,
    };
    let trap = error.downcast_ref::<Trap>();
    let (kind, message) = match trap {
        Some(Trap::Interrupt) => (
            FailureKind::CpuLimit,
            format!(
                "the call ran past its {} ms budget",
                config.cpu_limit_ms.unwrap_or_default()
            ),
        ),
        Some(Trap::OutOfFuel) => (
            FailureKind::CpuLimit,
            format!(
                "the call used up its {} fuel",
                config.fuel_per_call.unwrap_or_default()
            ),
        ),
        _ if matches!(
            error.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) =>
        {
            (
                FailureKind::MemoryLimit,
                format!(
                    "the guest held more than {} host handles (pollables, streams) at once",
                    super::limits::MAX_HOST_HANDLES
                ),
            )
        }
        _ if memory_hit => (
            FailureKind::MemoryLimit,
            with_stderr(format!(
                "the guest tried to grow its memory past {} bytes",
                config.memory_limit_bytes
            )),
        ),
        Some(trap) => (
            FailureKind::Trap,
            with_stderr(
                trap.to_string()
                    .trim_start_matches("wasm trap: ")
                    .to_owned(),
            ),
        ),
        None => match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => (
                FailureKind::Trap,
                with_stderr(format!("the plugin called exit({})", exit.0)),
            ),
            None => (FailureKind::Trap, with_stderr(format!("{error}"))),
        },
    };
    EventError { kind, message }
}
