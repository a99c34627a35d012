//! `weir plugin ...`: commands about plugin components.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use weir::runtime::{Batch, BatchResult, Instance, Runtime, RuntimeConfig, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Run a plugin over events from a file or stdin and print each outcome as
    /// one JSON line, then a summary line.
    Test(TestArgs),
    #[command(flatten)]
    Registry(super::client::PluginClientCommand),
}

impl PluginCommand {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            PluginCommand::Test(args) => test(args),
            PluginCommand::Registry(command) => command.run(),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The plugin component (`.wasm`, built for wasm32-wasip2).
    plugin: PathBuf,
    /// The plugin configuration: JSON text, or `@path` to read it from a file.
    #[arg(long)]
    config: String,
    /// Events, one JSON value per line (JSON Lines). Reads stdin when absent.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Events per plugin call.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch_size: u32,
    /// Scenario id passed to the plugin with every batch.
    #[arg(long, default_value = "test")]
    scenario_id: String,
    /// Runtime settings as JSON (see `RuntimeConfig`), or `@path`.
    #[arg(long)]
    runtime_config: Option<String>,
    /// A golden file: the answers of an earlier run (its output, saved). Prints
    /// every answer that differs, as `-` expected and `+` got, and exits with 1
    /// when any does; the summary line of the file, with its timings, is not
    /// compared.
    #[arg(long)]
    expect: Option<PathBuf>,
}

fn inline_or_file(value: &str, what: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {what} from {path}"))
        }
        None => Ok(value.to_owned()),
    }
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let runtime_config: RuntimeConfig = match &args.runtime_config {
        Some(text) => serde_json::from_str(&inline_or_file(text, "the runtime configuration")?)
            .context("invalid --runtime-config")?,
        None => RuntimeConfig::default(),
    };
    let config = inline_or_file(&args.config, "the plugin configuration")?;
    let expected = args.expect.as_ref().map(|path| golden(path)).transpose()?;
    let bytes = std::fs::read(&args.plugin)
        .with_context(|| format!("reading {}", args.plugin.display()))?;

    // Compile as the service does: in a child process, under the compile
    // budgets, into a cache (so a rerun on the same component loads at once).
    let cache_dir = runtime_config
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("weir-plugin-test-cache"));
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir),
        compile_program: std::env::current_exe().ok(),
        ..runtime_config
    })?;
    let started = Instant::now();
    let plugin = runtime
        .load(&bytes)
        .with_context(|| format!("cannot load {}", args.plugin.display()))?;
    let load = started.elapsed();
    let mut instance = plugin
        .instantiate(&config)
        .with_context(|| format!("cannot configure {}", args.plugin.display()))?;
    let info = plugin.info();
    tracing::info!(plugin = %info.name, version = %info.version, load_ms = load.as_secs_f64() * 1e3, "plugin ready");

    let input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(BufReader::new(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let mut summary = Summary::default();
    // With a golden file the answers are kept for the comparison, not printed.
    let mut answers = expected.as_ref().map(|_| Vec::new());
    let mut batch = Batch::new(&args.scenario_id, "input", 0);
    let mut offset = 0i64;
    for line in input.split(b'\n') {
        let mut line = line.context("reading events")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        batch.push(offset, &line)?;
        offset += 1;
        if batch.len() == args.batch_size as usize {
            run_batch(&mut instance, &batch, &mut out, &mut summary, &mut answers)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        run_batch(&mut instance, &batch, &mut out, &mut summary, &mut answers)?;
    }
    if let (Some(expected), Some(got), Some(path)) = (&expected, &answers, &args.expect) {
        let differences = diff(expected, got, &mut out)?;
        if differences > 0 {
            writeln!(
                out,
                "{differences} of {} answers differ from {}",
                expected.len().max(got.len()),
                path.display()
            )?;
            out.flush()?;
            return Ok(ExitCode::from(1));
        }
        writeln!(out, "all {} answers match {}", got.len(), path.display())?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let seconds = summary.busy.as_secs_f64();
    let line = json!({
        "summary": {
            "plugin": info.name,
            "version": info.version,
            "events": summary.events,
            "emitted": summary.emitted,
            "dropped": summary.dropped,
            "failed": summary.failed,
            "matched": summary.matched,
            "records": summary.records,
            "load_ms": round(load.as_secs_f64() * 1e3),
            "process_seconds": round(seconds),
            "events_per_s": if seconds > 0.0 { round(summary.events as f64 / seconds) } else { 0.0 },
        }
    });
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Default)]
struct Summary {
    events: u64,
    emitted: u64,
    dropped: u64,
    failed: u64,
    matched: u64,
    records: u64,
    busy: Duration,
}

/// The answers of a golden file: every JSON line but the summary.
fn golden(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the golden file {}", path.display()))?;
    let mut answers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: not JSON (a golden file is the saved output of `weir plugin test`)",
                path.display(),
                n + 1
            )
        })?;
        if value.get("summary").is_none() {
            answers.push(value);
        }
    }
    Ok(answers)
}

/// Prints the answers that differ, event by event; how many did.
fn diff(expected: &[Value], got: &[Value], out: &mut impl Write) -> anyhow::Result<usize> {
    let mut differences = 0;
    for i in 0..expected.len().max(got.len()) {
        let (want, have) = (expected.get(i), got.get(i));
        if want == have {
            continue;
        }
        differences += 1;
        writeln!(out, "@@ event {i} @@")?;
        match want {
            Some(want) => writeln!(out, "- {want}")?,
            None => writeln!(out, "- (no answer expected)")?,
        }
        match have {
            Some(have) => writeln!(out, "+ {have}")?,
            None => writeln!(out, "+ (no such event in the input)")?,
        }
    }
    Ok(differences)
}

fn run_batch(
    instance: &mut Instance,
    batch: &Batch,
    out: &mut impl Write,
    summary: &mut Summary,
    answers: &mut Option<Vec<Value>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let result: BatchResult = instance.process(batch)?;
    summary.busy += started.elapsed();
    for (i, outcome) in result.outcomes().iter().enumerate() {
        summary.events += 1;
        match outcome.status {
            Status::Emitted => summary.emitted += 1,
            Status::Dropped => summary.dropped += 1,
            Status::Failed => summary.failed += 1,
        }
        summary.matched += u64::from(outcome.matched);
        let records: Vec<Value> = result
            .records(outcome)
            .map(|record| {
                serde_json::from_slice(record)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(record).into_owned()))
            })
            .collect();
        summary.records += records.len() as u64;
        let line = json!({
            "offset": batch.offset(i),
            "status": outcome.status.as_str(),
            "matched": outcome.matched,
            "records": records,
            "error": outcome.error.as_ref().map(ToString::to_string),
        });
        match answers {
            Some(answers) => answers.push(line),
            None => writeln!(out, "{line}")?,
        }
    }
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
