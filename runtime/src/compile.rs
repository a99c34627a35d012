//! Compiling a component in a worker process, under a time and a memory
//! budget.
//!
//! Cranelift cannot be interrupted and its memory cannot be capped from
//! inside the process, and the shape checks of `limits.rs` bound only what
//! one function costs: a component of many functions each just under the
//! nesting cap still compiles for minutes. So when the service names a
//! program to compile in ([`crate::RuntimeConfig::compile_program`], the
//! `weir` binary itself), every component that is not in the compiled-code
//! cache yet is compiled first by that program, started as
//! `<program> __compile-plugin`: it reads the component on stdin, caps its
//! own data segment (`RLIMIT_DATA`) at `compile_memory_limit_bytes`, builds an
//! engine with the same compilation settings and cache directory, and
//! compiles into the cache. The parent kills it at `compile_time_limit_ms`.
//! Only when it succeeds does the parent compile, which then finds the result
//! in the cache (same settings, same cache key) instead of compiling again.
//! A worker that runs out of time or memory refuses the component with the
//! budget it passed, and nothing of it reaches the pipeline.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use crate::RuntimeConfig;
use crate::limits::Refusal;

/// The first argument that makes a program run [`worker_main`].
pub const WORKER_ARG: &str = "__compile-plugin";

/// Environment variable carrying the runtime configuration to the worker.
const CONFIG_ENV: &str = "WEIR_COMPILE_CONFIG";

/// Exit code of a worker whose compiler refused the component.
const INVALID: u8 = 3;

/// How a compilation in the worker ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerRefusal {
    /// Out of time or memory (`TooCostly`), or refused by the compiler (`Malformed`).
    Refused(Refusal),
    /// The worker could not be run at all.
    Unavailable(String),
}

/// Compiles `bytes` in `program` under `config`'s budgets (see the module doc).
pub(crate) fn compile_in_worker(
    program: &Path,
    config: &RuntimeConfig,
    bytes: &[u8],
) -> Result<(), WorkerRefusal> {
    let unavailable = |what: &str, e: std::io::Error| {
        WorkerRefusal::Unavailable(format!(
            "{what} the compile worker {}: {e}",
            program.display()
        ))
    };
    let config_json = serde_json::to_string(config)
        .map_err(|e| WorkerRefusal::Unavailable(format!("encoding the configuration: {e}")))?;
    let mut child = Command::new(program)
        .arg(WORKER_ARG)
        .env(CONFIG_ENV, config_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| unavailable("cannot start", e))?;
    let started = Instant::now();
    // The worker reads all of stdin before compiling, so this write cannot
    // wait on anything but the worker's read; a worker that died early makes
    // it fail, and its exit status below says why.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(bytes);
    }
    let mut stderr = child.stderr.take();
    // Read stderr on the side, so a chatty worker cannot block on a full pipe.
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = &mut stderr {
            let _ = stderr.take(4096).read_to_string(&mut text);
            // Drain the rest so the worker never blocks writing it.
            let _ = std::io::copy(stderr, &mut std::io::sink());
        }
        text
    });
    let limit = Duration::from_millis(config.compile_time_limit_ms);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(WorkerRefusal::Refused(Refusal::TooCostly(format!(
                    "compiling ran past its {} ms budget",
                    config.compile_time_limit_ms
                ))));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(unavailable("cannot wait for", e)),
        }
    };
    let stderr = stderr_reader.join().unwrap_or_default();
    let stderr = stderr.trim();
    match status.code() {
        Some(0) => Ok(()),
        Some(code) if code == i32::from(INVALID) => Err(WorkerRefusal::Refused(
            Refusal::Malformed(stderr.to_owned()),
        )),
        // Killed by a signal (an allocation refused by the limit aborts), or an
        // exit code of its own: both mean the budget did not suffice.
        _ => Err(WorkerRefusal::Refused(Refusal::TooCostly(format!(
            "compiling needed more than its {} bytes of memory (the compiler stopped: {status}{})",
            config.compile_memory_limit_bytes,
            if stderr.is_empty() {
                String::new()
            } else {
                format!("; {}", stderr.lines().last().unwrap_or_default())
            }
        )))),
    }
}

/// The worker: call it from `main` when the first argument is [`WORKER_ARG`].
/// Reads a component on stdin and compiles it into the cache named by the
/// configuration the parent passed, under its memory budget.
pub fn worker_main() -> ExitCode {
    let config: RuntimeConfig = match std::env::var(CONFIG_ENV)
        .map_err(|e| e.to_string())
        .and_then(|json| serde_json::from_str(&json).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{WORKER_ARG}: no usable {CONFIG_ENV}: {e}");
            return ExitCode::from(2);
        }
    };
    let limit = config.compile_memory_limit_bytes;
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::DATA, limit, limit) {
        eprintln!("{WORKER_ARG}: cannot limit memory to {limit} bytes: {e}");
        return ExitCode::from(2);
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("{WORKER_ARG}: reading the component: {e}");
        return ExitCode::from(2);
    }
    let engine = match crate::engine(&config, None) {
        Ok((engine, _)) => engine,
        Err(e) => {
            eprintln!("{WORKER_ARG}: {e}");
            return ExitCode::from(2);
        }
    };
    match Component::new(&engine, &bytes) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(INVALID)
        }
    }
}
