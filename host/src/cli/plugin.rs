//! `weir plugin ...`: commands about plugin components.
//!
//! `test` runs one component over events and prints each outcome; `diff`
//! runs two (files, or `name@N` from a server) over the same events and prints
//! every outcome that changed. Both read events from a file or stdin: one JSON
//! value (or any line) per line, or the envelopes `weir capture` writes
//! (`cli/capture.rs`), whose events keep their topic, partition, offset, key,
//! timestamp and headers.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use weir::runtime::{
    Batch, BatchResult, EventInput, Instance, PluginInfo, Runtime, RuntimeConfig, Status,
};

use super::capture::Captured;

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Make a plugin crate that builds offline: the SDK and the contract of
    /// this weir are written beside it, with a unit test, a README and sample
    /// events.
    New(super::scaffold::NewArgs),
    /// Build a plugin crate's component (wasm32-wasip2, installing the target
    /// if rustup can) and check it as the service checks uploads.
    Build(super::scaffold::BuildArgs),
    /// Run a plugin over events from a file or stdin and print each outcome as
    /// one JSON line, then a summary line.
    Test(TestArgs),
    /// Run two versions of a plugin over the same events and print every
    /// outcome that changed, then a summary with each one's cost per event.
    /// Exits with 1 when any changed.
    Diff(DiffArgs),
    #[command(flatten)]
    Registry(super::client::PluginClientCommand),
}

impl PluginCommand {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            PluginCommand::New(args) => args.run(),
            PluginCommand::Build(args) => args.run(),
            PluginCommand::Test(args) => test(args),
            PluginCommand::Diff(args) => diff_versions(args),
            PluginCommand::Registry(command) => command.run(),
        }
    }
}

/// What `test` and `diff` share: the events and how they are batched.
#[derive(Debug, Args)]
pub(crate) struct Run {
    /// Events, one JSON value per line (JSON Lines), or a `weir capture` file.
    /// Reads stdin when absent.
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
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The plugin component (`.wasm`, built for wasm32-wasip2).
    plugin: PathBuf,
    /// The plugin configuration: JSON text, or `@path` to read it from a file.
    #[arg(long)]
    config: String,
    #[command(flatten)]
    run: Run,
    /// A golden file: the answers of an earlier run (its output, saved). Prints
    /// every answer that differs, as `-` expected and `+` got, and exits with 1
    /// when any does; the summary line of the file, with its timings, is not
    /// compared.
    #[arg(long)]
    expect: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The version compared against: a `.wasm` file, or `name@N` (version N
    /// of plugin `name` on the server).
    old: String,
    /// The candidate: a `.wasm` file, or `name@N`.
    new: String,
    /// The configuration of both: JSON text, or `@path`.
    #[arg(long)]
    config: String,
    /// The candidate's configuration, when it differs (a changed scenario).
    #[arg(long)]
    new_config: Option<String>,
    #[command(flatten)]
    run: Run,
    /// Base URL of the weir control plane `name@N` is fetched from.
    #[arg(long, env = "WEIR_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token for it (the viewer token is enough).
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn inline_or_file(value: &str, what: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {what} from {path}"))
        }
        None => Ok(value.to_owned()),
    }
}

impl Run {
    /// A runtime that compiles as the service does: in a child process, under
    /// the compile budgets, into a cache (so a rerun on the same component
    /// loads at once).
    fn runtime(&self) -> anyhow::Result<Runtime> {
        let runtime_config: RuntimeConfig = match &self.runtime_config {
            Some(text) => serde_json::from_str(&inline_or_file(text, "the runtime configuration")?)
                .context("invalid --runtime-config")?,
            None => RuntimeConfig::default(),
        };
        let cache_dir = runtime_config
            .cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("weir-plugin-test-cache"));
        Ok(Runtime::new(RuntimeConfig {
            cache_dir: Some(cache_dir),
            compile_program: std::env::current_exe().ok(),
            ..runtime_config
        })?)
    }

    /// Reads the events and calls `each` with every batch, and its topic and
    /// partition: at most `batch_size` events of one topic and partition, in
    /// input order.
    fn batches(
        &self,
        mut each: impl FnMut(&Batch, &(String, i32)) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let input: Box<dyn BufRead> = match &self.input {
            Some(path) => Box::new(BufReader::new(
                File::open(path).with_context(|| format!("opening {}", path.display()))?,
            )),
            None => Box::new(std::io::stdin().lock()),
        };
        let mut batch = Batch::new(&self.scenario_id, "input", 0);
        let mut at = ("input".to_owned(), 0);
        let mut next_offset = 0i64;
        for (n, line) in input.split(b'\n').enumerate() {
            let mut line = line.context("reading events")?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let captured =
                Captured::parse(&line).with_context(|| format!("input line {}", n + 1))?;
            let source = captured.as_ref().map_or(("input", 0), |c| {
                (c.capture.topic.as_str(), c.capture.partition)
            });
            let full = batch.len() == self.batch_size as usize;
            let moved = (at.0.as_str(), at.1) != source;
            if !batch.is_empty() && (full || moved) {
                each(&batch, &at)?;
            }
            if batch.is_empty() || moved || full {
                batch = Batch::new(&self.scenario_id, source.0, source.1);
                at = (source.0.to_owned(), source.1);
            }
            match &captured {
                None => {
                    batch.push(next_offset, &line)?;
                    next_offset += 1;
                }
                Some(c) => {
                    let payload = c.payload();
                    let headers: Vec<(&str, &[u8])> = c
                        .capture
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_bytes()))
                        .collect();
                    batch.push_event(EventInput {
                        offset: c.capture.offset,
                        value: &payload,
                        key: c.capture.key.as_deref().map(str::as_bytes),
                        timestamp_ms: c.capture.timestamp,
                        headers: &headers,
                    })?;
                }
            }
        }
        if !batch.is_empty() {
            each(&batch, &at)?;
        }
        Ok(())
    }
}

/// A plugin loaded and configured, with what it took.
struct Loaded {
    instance: Instance,
    info: PluginInfo,
    label: String,
    load: Duration,
}

fn load(runtime: &Runtime, bytes: &[u8], label: &str, config: &str) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let plugin = runtime
        .load(bytes)
        .with_context(|| format!("cannot load {label}"))?;
    let load = started.elapsed();
    let instance = plugin
        .instantiate(config)
        .with_context(|| format!("cannot configure {label}"))?;
    let info = plugin.info().clone();
    tracing::info!(plugin = %info.name, version = %info.version, load_ms = load.as_secs_f64() * 1e3, "plugin ready");
    Ok(Loaded {
        instance,
        info,
        label: label.to_owned(),
        load,
    })
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let runtime = args.run.runtime()?;
    let config = inline_or_file(&args.config, "the plugin configuration")?;
    let expected = args.expect.as_ref().map(|path| golden(path)).transpose()?;
    let bytes = std::fs::read(&args.plugin)
        .with_context(|| format!("reading {}", args.plugin.display()))?;
    let mut loaded = load(
        &runtime,
        &bytes,
        &args.plugin.display().to_string(),
        &config,
    )?;

    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let mut summary = Summary::default();
    // With a golden file the answers are kept for the comparison, not printed.
    let mut kept = Vec::new();
    args.run.batches(|batch, _| {
        let lines = answers(&mut loaded.instance, batch, &mut summary)?;
        if expected.is_some() {
            kept.extend(lines);
        } else {
            for line in lines {
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    })?;
    if let (Some(expected), Some(path)) = (&expected, &args.expect) {
        let differences = diff(expected, &kept, &mut out)?;
        if differences > 0 {
            writeln!(
                out,
                "{differences} of {} answers differ from {}",
                expected.len().max(kept.len()),
                path.display()
            )?;
            out.flush()?;
            return Ok(ExitCode::from(1));
        }
        writeln!(out, "all {} answers match {}", kept.len(), path.display())?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{}", json!({ "summary": summary.json(&loaded) }))?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The bytes of `source`: a file, or `name@N` fetched from the server.
pub(super) fn component(source: &str, server: &super::client::Server) -> anyhow::Result<Vec<u8>> {
    let path = std::path::Path::new(source);
    if path.exists() {
        return std::fs::read(path).with_context(|| format!("reading {source}"));
    }
    match source.rsplit_once('@') {
        Some((name, version)) if !name.is_empty() && version.parse::<i64>().is_ok() => server
            .fetch(&format!("/api/plugins/{name}/versions/{version}/component"))
            .with_context(|| format!("fetching {source} from the server")),
        _ => anyhow::bail!(
            "{source}: no such file, and not `name@N` (version N of a plugin on the server)"
        ),
    }
}

fn diff_versions(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let runtime = args.run.runtime()?;
    let server = super::client::Server::new(args.server.clone(), args.token.clone());
    let config = inline_or_file(&args.config, "the plugin configuration")?;
    let new_config = match &args.new_config {
        Some(text) => inline_or_file(text, "the candidate's configuration")?,
        None => config.clone(),
    };
    let mut old = load(
        &runtime,
        &component(&args.old, &server)?,
        &args.old,
        &config,
    )?;
    let mut new = load(
        &runtime,
        &component(&args.new, &server)?,
        &args.new,
        &new_config,
    )?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (mut old_summary, mut new_summary) = (Summary::default(), Summary::default());
    let (mut events, mut changed, mut outcomes_changed) = (0u64, 0u64, 0u64);
    args.run.batches(|batch, (topic, partition)| {
        let before = answers(&mut old.instance, batch, &mut old_summary)?;
        let after = answers(&mut new.instance, batch, &mut new_summary)?;
        for (was, is) in before.iter().zip(&after) {
            events += 1;
            if was == is {
                continue;
            }
            changed += 1;
            if (was["status"] != is["status"]) || (was["matched"] != is["matched"]) {
                outcomes_changed += 1;
            }
            writeln!(
                out,
                "@@ {topic} partition {partition} offset {} @@",
                was["offset"]
            )?;
            writeln!(out, "- {was}")?;
            writeln!(out, "+ {is}")?;
        }
        Ok(())
    })?;
    let line = json!({
        "diff": {
            "events": events,
            "changed": changed,
            "outcomes_changed": outcomes_changed,
            "records_only_changed": changed - outcomes_changed,
            "old": old_summary.json(&old),
            "new": new_summary.json(&new),
        }
    });
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(if changed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
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

impl Summary {
    fn json(&self, loaded: &Loaded) -> Value {
        let seconds = self.busy.as_secs_f64();
        json!({
            "plugin": loaded.info.name,
            "version": loaded.info.version,
            "source": loaded.label,
            "events": self.events,
            "emitted": self.emitted,
            "dropped": self.dropped,
            "failed": self.failed,
            "matched": self.matched,
            "records": self.records,
            "load_ms": round(loaded.load.as_secs_f64() * 1e3),
            "process_seconds": round(seconds),
            "events_per_s": if seconds > 0.0 { round(self.events as f64 / seconds) } else { 0.0 },
            "ns_per_event": if self.events > 0 { round(seconds * 1e9 / self.events as f64) } else { 0.0 },
        })
    }
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

/// Runs one batch: an answer line per event, and the summary counted.
fn answers(
    instance: &mut Instance,
    batch: &Batch,
    summary: &mut Summary,
) -> anyhow::Result<Vec<Value>> {
    let started = Instant::now();
    let result: BatchResult = instance.process(batch)?;
    summary.busy += started.elapsed();
    let mut lines = Vec::with_capacity(batch.len());
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
        lines.push(json!({
            "offset": batch.offset(i),
            "status": outcome.status.as_str(),
            "matched": outcome.matched,
            "records": records,
            "error": outcome.error.as_ref().map(ToString::to_string),
        }));
    }
    Ok(lines)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
