//! What one store holds on the host side: a deny-all WASI context with a
//! virtual clock and seeded randomness, the memory limiter, and the guest's
//! stdout/stderr forwarded to the log under a cap.
//!
//! What a guest can observe (documented for plugin authors in `wit/plugin.wit`
//! and the SDK): both clocks are virtual. At the start of every call they read
//! zero (the wall clock 1970-01-01T00:00:00Z) and they move only when the guest
//! sleeps or waits on a clock, by exactly the time it asked for, without any
//! real waiting: no host call can hold a thread (see `Runtime::new`, which
//! links the non-blocking clock subscriptions). Randomness (`wasi:random`, the
//! secure and the insecure generator alike) comes from a generator seeded at
//! the start of each call from what the call is about (scenario, topic,
//! partition, first offset and size of the batch), so a replay of the same
//! batch sees the same numbers. Neither is secret, which a sandboxed filter has
//! no use for.
//!
//! Guest output is logged with target `weir::guest` (silence it with
//! `RUST_LOG=weir::guest=warn`, say). Cap: per call (one batch), each of stdout
//! and stderr forwards at most `guest_log_bytes_per_call` bytes to `tracing`,
//! one event per line, lines cut at [`MAX_LINE`] bytes. Anything beyond is dropped and counted; one warning
//! after the call says how much. Batches arrive at a bounded rate, so this bounds
//! the log rate per instance as well as its size.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

/// Longest guest output line forwarded to the log, in bytes.
pub(crate) const MAX_LINE: usize = 1024;

/// How many recent guest stderr lines are kept to explain a trap.
const RECENT_LINES: usize = 3;

/// Largest `get-random-bytes` request, in bytes (WASI's default is 64 MiB,
/// allocated on the host before the guest's memory limit applies).
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// The data of one plugin store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) clock: VirtualClock,
    random: SeededRandom,
    stdout: GuestLog,
    stderr: GuestLog,
}

impl HostState {
    /// A state with no files, no sockets, no environment, no arguments, a
    /// virtual clock and seeded randomness.
    pub(crate) fn new(plugin: &str, version: &str, memory_limit: usize, log_budget: usize) -> Self {
        let stdout = GuestLog::new(plugin, version, "stdout", log_budget);
        let stderr = GuestLog::new(plugin, version, "stderr", log_budget);
        let clock = VirtualClock::default();
        let random = SeededRandom::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_blocking_current_thread(true)
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .secure_random(random.clone())
            .insecure_random(random.clone())
            .insecure_random_seed(0)
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(super::limits::MAX_HOST_HANDLES);
        Self {
            wasi,
            table,
            limiter: MemoryLimiter::new(memory_limit),
            clock,
            random,
            stdout,
            stderr,
        }
    }

    /// Called before each guest call: fresh log budgets, no limit hit yet,
    /// the clocks back at zero, randomness seeded with `seed`.
    pub(crate) fn begin_call(&mut self, seed: u64) {
        self.limiter.hit = false;
        self.clock.reset();
        self.random.reseed(seed);
        self.stdout.begin_call();
        self.stderr.begin_call();
    }

    /// Called after each guest call: flushes partial lines, reports drops.
    pub(crate) fn end_call(&mut self) {
        self.stdout.end_call();
        self.stderr.end_call();
    }

    /// What the guest wrote to stderr during the last call (a panic message,
    /// typically), to put next to a trap.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        self.stderr.recent()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The monotonic clock interface as `wasmtime_wasi` links it (guests built
/// against any 0.2.x release resolve to it).
pub(crate) const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A pollable that is always ready: what a guest's clock wait turns into.
pub(crate) struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// The guest's clocks: virtual time in nanoseconds, shared by the wall and the
/// monotonic clock, zero at the start of each call, advanced only by the
/// guest's own waits (see the module doc).
#[derive(Clone, Default)]
pub(crate) struct VirtualClock(Arc<AtomicU64>);

impl VirtualClock {
    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The guest waits `nanos`: time moves on by that much, at once.
    pub(crate) fn advance(&self, nanos: u64) {
        let now = self.now_nanos();
        self.0.store(now.saturating_add(nanos), Ordering::Relaxed);
    }

    /// The guest waits until `instant`: time moves on to it, if it is later.
    pub(crate) fn advance_to(&self, instant: u64) {
        self.0.fetch_max(instant, Ordering::Relaxed);
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.now_nanos()
    }
}

/// The guest's random numbers: SplitMix64 from a seed set per call, so the
/// same call on the same batch sees the same numbers.
#[derive(Clone, Default)]
struct SeededRandom(Arc<AtomicU64>);

impl SeededRandom {
    fn reseed(&self, seed: u64) {
        self.0.store(seed, Ordering::Relaxed);
    }
}

impl rand_core::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        // One store is used by one thread at a time: no other writer races this.
        let state = self
            .0
            .load(Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.store(state, Ordering::Relaxed);
        Ok(mix64(state))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let word = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

/// SplitMix64's output function; also how call seeds are folded together.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One budget for every memory and table of a store: refuses growth that
/// would take their sum past the cap, and remembers that it did, so the trap
/// that usually follows is reported as a memory limit. Tables count at the
/// pointer's worth of host memory each element takes.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    /// Bytes granted so far to every memory and table of the store.
    used: usize,
    /// The last growth granted, taken back if the allocation then fails.
    last_grant: usize,
    /// Whether a growth was refused during the current call.
    pub(crate) hit: bool,
}

/// Host bytes per table element.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            last_grant: 0,
            hit: false,
        }
    }

    /// Grants `current -> desired` bytes if the store's total stays within the cap.
    fn grow(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> bool {
        let extra = desired.saturating_sub(current);
        let total = self.used.saturating_add(extra);
        let allowed = total <= self.limit && maximum.is_none_or(|max| desired <= max);
        if allowed {
            self.used = total;
            self.last_grant = extra;
        } else {
            self.hit = true;
        }
        allowed
    }

    fn grow_failed(&mut self) {
        self.used -= std::mem::take(&mut self.last_grant);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired, maximum))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(maximum.is_none_or(|max| desired <= max)
            && self.grow(bytes(current), bytes(desired), None))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        super::limits::MAX_CORE_INSTANCES
    }

    fn memories(&self) -> usize {
        super::limits::MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        super::limits::MAX_TABLES
    }
}

/// One guest output stream forwarded to `tracing`.
#[derive(Clone)]
pub(crate) struct GuestLog(Arc<Mutex<LogState>>);

struct LogState {
    plugin: String,
    version: String,
    stream: &'static str,
    budget: usize,
    left: usize,
    line: Vec<u8>,
    dropped: u64,
    /// The last few lines forwarded during the current call, to explain a trap.
    recent: Vec<String>,
}

impl GuestLog {
    fn new(plugin: &str, version: &str, stream: &'static str, budget: usize) -> Self {
        Self(Arc::new(Mutex::new(LogState {
            plugin: plugin.to_owned(),
            version: version.to_owned(),
            stream,
            budget,
            left: budget,
            line: Vec::new(),
            dropped: 0,
            recent: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A poisoned lock only means a log line may be lost; keep going.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin_call(&self) {
        let mut state = self.lock();
        state.left = state.budget;
        state.recent.clear();
    }

    /// The last lines written during the current call, joined, if any.
    fn recent(&self) -> Option<String> {
        let state = self.lock();
        (!state.recent.is_empty()).then(|| state.recent.join(" | "))
    }

    fn end_call(&self) {
        let mut state = self.lock();
        state.emit_line();
        if state.dropped > 0 {
            tracing::warn!(
                plugin = %state.plugin,
                version = %state.version,
                stream = state.stream,
                dropped_bytes = state.dropped,
                "guest output over the per-call cap was dropped"
            );
            state.dropped = 0;
        }
    }

    fn write(&self, bytes: &[u8]) {
        self.lock().write(bytes);
    }
}

impl LogState {
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.append(&bytes[..newline]);
            self.emit_line();
            bytes = &bytes[newline + 1..];
        }
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len()).min(self.left);
        let taken = bytes.len().min(room);
        self.line.extend_from_slice(&bytes[..taken]);
        self.left -= taken;
        self.dropped += (bytes.len() - taken) as u64;
    }

    fn emit_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(
            target: "weir::guest",
            plugin = %self.plugin,
            version = %self.version,
            stream = self.stream,
            "{text}"
        );
        // Rust's panic hint says nothing about the failure; keep it out of reasons.
        if !text.starts_with("note: run with `RUST_BACKTRACE") {
            if self.recent.len() == RECENT_LINES {
                self.recent.remove(0);
            }
            self.recent.push(text.chars().take(256).collect());
        }
        self.line.clear();
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: what is over the cap is counted and dropped, so a
        // chatty guest never blocks on its own output.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        GuestLog::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(budget: usize) -> LogState {
        LogState {
            plugin: "p".into(),
            version: "1.0.0".into(),
            stream: "stdout",
            budget,
            left: budget,
            line: Vec::new(),
            dropped: 0,
            recent: Vec::new(),
        }
    }

    #[test]
    fn output_over_the_call_budget_is_counted_not_kept() {
        let mut log = state(10);
        log.write(b"hello\nworld, this is long\n");
        assert_eq!(log.left, 0);
        // "hello" fits (5 bytes), then 5 of "world, this is long" (19 bytes).
        assert_eq!(log.dropped, 14);
    }

    #[test]
    fn long_lines_are_cut() {
        let mut log = state(1 << 20);
        log.write(&vec![b'x'; MAX_LINE + 100]);
        assert_eq!(log.line.len(), MAX_LINE);
        assert_eq!(log.dropped, 100);
    }

    #[test]
    fn memory_growth_beyond_the_cap_is_refused_and_remembered() {
        let mut limiter = MemoryLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 19, None).unwrap());
        assert!(!limiter.hit);
        assert!(!limiter.memory_growing(0, 2 << 20, None).unwrap());
        assert!(limiter.hit);
    }

    #[test]
    fn every_memory_and_table_of_a_store_shares_one_budget() {
        let mut limiter = MemoryLimiter::new(1 << 20);
        // Two memories of 384 KiB each fit; a third growth to 384 KiB does not.
        assert!(limiter.memory_growing(0, 384 << 10, None).unwrap());
        assert!(limiter.memory_growing(0, 384 << 10, None).unwrap());
        assert!(!limiter.memory_growing(0, 384 << 10, None).unwrap());
        assert!(limiter.hit);
        // A granted growth that then fails is given back.
        assert!(limiter.memory_growing(384 << 10, 512 << 10, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::Error::msg("mmap"))
            .unwrap();
        assert_eq!(limiter.used, 768 << 10);
        // Table elements count too: 256 KiB left is 32768 elements of 8 bytes.
        assert!(limiter.table_growing(0, 32768, None).unwrap());
        assert!(!limiter.table_growing(32768, 32769, None).unwrap());
    }

    #[test]
    fn the_clock_moves_only_when_the_guest_waits_and_restarts_each_call() {
        let clock = VirtualClock::default();
        assert_eq!(HostMonotonicClock::now(&clock), 0);
        clock.advance(2_000_000_000);
        clock.advance_to(1_000);
        assert_eq!(HostWallClock::now(&clock), Duration::from_secs(2));
        clock.advance_to(3_000_000_000);
        assert_eq!(HostMonotonicClock::now(&clock), 3_000_000_000);
        clock.advance(u64::MAX);
        assert_eq!(HostMonotonicClock::now(&clock), u64::MAX);
        clock.reset();
        assert_eq!(HostMonotonicClock::now(&clock), 0);
    }

    #[test]
    fn randomness_repeats_for_the_same_seed_and_differs_for_another() {
        use rand_core::Rng as _;
        let mut random = SeededRandom::default();
        let draw = |random: &mut SeededRandom| {
            let mut bytes = [0u8; 20];
            random.fill_bytes(&mut bytes);
            (random.next_u64(), bytes)
        };
        random.reseed(7);
        let first = draw(&mut random);
        random.reseed(7);
        assert_eq!(draw(&mut random), first);
        random.reseed(8);
        assert_ne!(draw(&mut random), first);
    }
}
