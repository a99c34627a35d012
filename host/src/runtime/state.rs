//! What one store holds on the host side: a deny-all WASI context, the memory
//! limiter, and the guest's stdout/stderr forwarded to the log under a cap.
//!
//! Guest output is logged with target `weir::guest` (silence it with
//! `RUST_LOG=weir::guest=warn`, say). Cap: per call (one batch), each of stdout
//! and stderr forwards at most `guest_log_bytes_per_call` bytes to `tracing`,
//! one event per line, lines cut at [`MAX_LINE`] bytes. Anything beyond is dropped and counted; one warning
//! after the call says how much. Batches arrive at a bounded rate, so this bounds
//! the log rate per instance as well as its size.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Longest guest output line forwarded to the log, in bytes.
pub(crate) const MAX_LINE: usize = 1024;

/// How many recent guest stderr lines are kept to explain a trap.
const RECENT_LINES: usize = 3;

/// The data of one plugin store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    stdout: GuestLog,
    stderr: GuestLog,
}

impl HostState {
    /// A state with no files, no sockets, no environment and no arguments.
    pub(crate) fn new(plugin: &str, version: &str, memory_limit: usize, log_budget: usize) -> Self {
        let stdout = GuestLog::new(plugin, version, "stdout", log_budget);
        let stderr = GuestLog::new(plugin, version, "stderr", log_budget);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_blocking_current_thread(true)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            stdout,
            stderr,
        }
    }

    /// Called before each guest call: fresh log budgets, no limit hit yet.
    pub(crate) fn begin_call(&mut self) {
        self.limiter.hit = false;
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

/// Refuses linear-memory growth beyond the configured cap and remembers that
/// it did, so the trap that usually follows is reported as a memory limit.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    /// Whether a growth was refused during the current call.
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        Self { limit, hit: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit && maximum.is_none_or(|max| desired <= max);
        if !allowed {
            self.hit = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
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
}
