//! `weir serve`: runs the service in one process: the control plane (registry
//! and HTTP API) and the pipeline (`cli/pipeline.rs`: Kafka, plugins, counters),
//! under one shutdown signal. The shipped plugins are installed on start.
//!
//! Configuration comes from built-in defaults, then a TOML file (`--config`),
//! then environment variables, then flags; the later wins. Unknown keys in
//! the file are refused, and every other problem (addresses, URLs, tokens,
//! limits) is collected and reported at once before anything starts.
//! With no configuration at all it runs on embedded defaults: SQLite under
//! the data directory, listening on 127.0.0.1:8080, an admin token it
//! generates and writes to `<data dir>/admin-token`, an in-process Kafka broker
//! in-memory counters and a Parquet archive under the data directory. `--demo`
//! adds scenario 5 and a feed of events.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use weir::api::{ApiConfig, AppState, PipelineView, router};
use weir::archive::ArchiveConfig;
use weir::collect::CollectConfig;
use weir::health::{Attempt, Dependency, Health, until_up};
use weir::pipeline::PipelineConfig;
use weir::registry::{Backend, Registry, redact_url};
use weir::runtime::{Runtime, RuntimeConfig};
use weir::telemetry::Telemetry;

use weir::service::{CountersSection, PipelinePlan, StoppedWaiting};

/// The service's configuration file (TOML).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeConfig {
    /// Address the HTTP API listens on (default `127.0.0.1:8080`; env `WEIR_LISTEN`).
    pub(crate) listen: Option<String>,
    /// Directory for the embedded defaults: the SQLite registry and the
    /// generated admin token (default `$HOME/.local/share/weir`, else
    /// `./weir-data`; env `WEIR_DATA_DIR`).
    pub(crate) data_dir: Option<PathBuf>,
    /// Registry database URL: `sqlite://…`, `mysql://…` (MariaDB too) or
    /// `postgres://…` (default SQLite at `<data_dir>/registry.db`; env `WEIR_DATABASE`).
    pub(crate) database: Option<String>,
    /// The HTTP API: tokens (env `WEIR_ADMIN_TOKEN`, `WEIR_VIEWER_TOKEN`) and
    /// the upload limit (env `WEIR_UPLOAD_LIMIT_BYTES`).
    #[serde(default)]
    pub(crate) api: ApiConfig,
    /// The plugin runtime's limits and compilation cache.
    #[serde(default)]
    pub(crate) runtime: RuntimeConfig,
    /// The pipeline: `brokers` (env `WEIR_KAFKA`, flag `--kafka`; none means an
    /// in-process broker), consumer group, topics, batching, dead-letter topic.
    #[serde(default)]
    pub(crate) pipeline: PipelineConfig,
    /// The counters: `redis` (env `WEIR_REDIS`, flag `--redis`; none means in
    /// memory), key prefix, bucket retention.
    #[serde(default)]
    pub(crate) counters: CountersSection,
    /// The Parquet archive: `root` (env `WEIR_ARCHIVE`, flag `--archive`;
    /// `hdfs://host:port/path`, `s3://bucket/prefix` or a directory, default
    /// `<data_dir>/archive`),
    /// compression, row groups.
    pub(crate) archive: Option<ArchiveConfig>,
    /// The collector: its public listener (`listen`, default 127.0.0.1:8090),
    /// topics, streams, limits (docs/collect.md).
    #[serde(default)]
    pub(crate) collect: CollectConfig,
    /// Alert rules and the webhooks they notify (docs/observability.md).
    #[serde(default)]
    pub(crate) alerts: weir::alert::AlertsConfig,
}

/// `weir serve` flags.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (see `ServeConfig`).
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, env = "WEIR_LISTEN")]
    listen: Option<String>,
    /// Data directory for the embedded defaults.
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Registry database URL.
    #[arg(long, env = "WEIR_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Kafka bootstrap servers, host:port[,host:port]; none: an in-process broker.
    #[arg(long, env = "WEIR_KAFKA")]
    kafka: Option<String>,
    /// Redis URL for the counters; none: counted in memory.
    #[arg(long, env = "WEIR_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Where the Parquet archive goes: hdfs://host:port/path, s3://bucket/prefix (see
    /// `[archive] s3_endpoint`; credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY or ~/.aws/credentials) or a directory.
    #[arg(long, env = "WEIR_ARCHIVE")]
    archive: Option<String>,
    /// Also create scenario 5 and feed it generated tracking events.
    #[arg(long)]
    demo: bool,
    /// With --demo: stop feeding after this many events (default: never).
    #[arg(long, requires = "demo")]
    demo_events: Option<u64>,
}

/// Prints every problem of the configuration; the exit status that says so.
pub(crate) fn print_problems(problems: &[String]) -> ExitCode {
    eprintln!(
        "error: the configuration has {} problem(s):",
        problems.len()
    );
    for problem in problems {
        eprintln!("  {problem}");
    }
    ExitCode::from(2)
}

/// The archive section `weir serve` would run with, from the same
/// configuration file, environment and flags: what `weir report` reads.
pub(crate) fn archive_config(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    archive: Option<String>,
) -> Result<ArchiveConfig, Vec<String>> {
    let args = ServeArgs {
        config,
        listen: None,
        data_dir,
        database: None,
        kafka: None,
        redis: None,
        archive,
        demo: false,
        demo_events: None,
    };
    let layered: Vec<(String, String)> = std::env::vars().collect();
    args.resolve_layered(&|name| std::env::var(name).ok(), &layered)
        .map(|resolved| resolved.plan.archive)
}

/// The configuration after every layer and check.
#[derive(Debug)]
struct Resolved {
    listen: SocketAddr,
    data_dir: PathBuf,
    database: String,
    api: ApiConfig,
    runtime: RuntimeConfig,
    plan: PipelinePlan,
}

impl ServeArgs {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        let layered: Vec<(String, String)> = std::env::vars().collect();
        let resolved = match self.resolve_layered(&|name| std::env::var(name).ok(), &layered) {
            Ok(resolved) => resolved,
            Err(problems) => return Ok(print_problems(&problems)),
        };
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(serve(resolved))?;
        Ok(ExitCode::SUCCESS)
    }

    /// Layers file, environment and flags; returns every problem found.
    #[cfg(test)]
    fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Resolved, Vec<String>> {
        self.resolve_layered(env, &[])
    }

    /// [`ServeArgs::resolve`], with `layered` (the process environment) read for
    /// `WEIR_<SECTION>__<KEY>` variables, which set any key of the file's sections
    /// (see [`overlay`]).
    fn resolve_layered(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        layered: &[(String, String)],
    ) -> Result<Resolved, Vec<String>> {
        let mut problems = Vec::new();
        let (mut table, origin) = match &self.config {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => (
                    parse_table(&text, &path.display().to_string(), &mut problems),
                    path.display().to_string(),
                ),
                Err(e) => {
                    problems.push(format!("--config {}: {e}", path.display()));
                    (toml::Table::new(), "configuration".to_owned())
                }
            },
            None => (toml::Table::new(), "configuration".to_owned()),
        };
        let overlaid = overlay(&mut table, layered, &mut problems);
        let origin = if overlaid.is_empty() {
            origin
        } else {
            format!("{origin} with {}", overlaid.join(", "))
        };
        let mut config = parse_config(table, &origin, &mut problems);
        if let Some(token) = env("WEIR_ADMIN_TOKEN") {
            config.api.admin_token = Some(token);
        }
        if let Some(token) = env("WEIR_VIEWER_TOKEN") {
            config.api.viewer_token = Some(token);
        }
        if let Some(limit) = env("WEIR_UPLOAD_LIMIT_BYTES") {
            match limit.parse() {
                Ok(limit) => config.api.upload_limit_bytes = limit,
                Err(_) => problems.push(format!(
                    "WEIR_UPLOAD_LIMIT_BYTES={limit}: expected a number of bytes, e.g. 33554432"
                )),
            }
        }
        // Flags (and their variables, which clap already read) win over the file.
        let listen_text = self
            .listen
            .clone()
            .or(config.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            problems.push(format!(
                "listen = {listen_text:?}: expected an IP address and port, e.g. 127.0.0.1:8080"
            ))
        });
        let data_dir = self
            .data_dir
            .clone()
            .or(config.data_dir)
            .unwrap_or_else(|| default_data_dir(env));
        let database = self
            .database
            .clone()
            .or(config.database)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("registry.db").display()));
        if Backend::from_url(&database).is_none() {
            problems.push(format!(
                "database = {:?}: expected sqlite://PATH, mysql://USER:PASS@HOST:PORT/DB or \
                 postgres://USER:PASS@HOST:PORT/DB",
                redact_url(&database)
            ));
        }
        problems.extend(
            config
                .api
                .problems()
                .into_iter()
                .map(|(field, reason)| format!("{field}: {reason}")),
        );
        let mut pipeline = config.pipeline;
        if let Some(brokers) = self.kafka.clone() {
            pipeline.brokers = brokers;
        }
        let mut counters = config.counters;
        if let Some(redis) = self.redis.clone() {
            counters.redis = Some(redis);
        }
        let mut archive = config.archive.unwrap_or_default();
        if let Some(root) = self.archive.clone() {
            archive.root = root;
        }
        if archive.root.is_empty() {
            archive.root = data_dir.join("archive").display().to_string();
        }
        let plan = PipelinePlan {
            pipeline,
            counters,
            archive,
            collect: config.collect,
            data_dir: data_dir.clone(),
            demo: self.demo,
            demo_events: self.demo_events,
            alerts: config.alerts,
        };
        problems.extend(plan.problems());
        // Compiled plugins are kept between restarts: loading one from the cache
        // costs a small share of compiling it (docs/performance.md).
        let cache_dir = config
            .runtime
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("cache"));
        match listen {
            Ok(listen) if problems.is_empty() => Ok(Resolved {
                listen,
                data_dir,
                database,
                api: config.api,
                runtime: RuntimeConfig {
                    cache_dir: Some(cache_dir),
                    // Uploaded components compile in a child process of this
                    // binary, under the runtime's compile budgets.
                    compile_program: std::env::current_exe().ok(),
                    ..config.runtime
                },
                plan,
            }),
            _ => Err(problems),
        }
    }
}

/// The TOML file as a table; a syntax error is a problem and an empty table.
fn parse_table(text: &str, origin: &str, problems: &mut Vec<String>) -> toml::Table {
    text.parse().unwrap_or_else(|e: toml::de::Error| {
        problems.push(format!("{origin}: {}", e.to_string().trim_end()));
        toml::Table::new()
    })
}

/// Sets keys of `table` from `WEIR_<SECTION>__<KEY>` variables (any depth:
/// `WEIR_PIPELINE__GROUP_ID` is `[pipeline] group_id`, `WEIR_ARCHIVE__ROOT` is
/// `[archive] root`). A value is read as a TOML value when it is one (`5`,
/// `true`, `["a", "b"]`, `"quoted text"`), else as text. Returns the variables
/// used, to name them in problems; a variable that names no key path (an empty
/// part) is a problem itself. Unknown keys are then reported like the file's.
fn overlay(
    table: &mut toml::Table,
    vars: &[(String, String)],
    problems: &mut Vec<String>,
) -> Vec<String> {
    let mut used = Vec::new();
    let mut vars: Vec<&(String, String)> = vars
        .iter()
        .filter(|(name, _)| name.starts_with("WEIR_") && name.contains("__"))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> = name["WEIR_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            problems.push(format!(
                "{name}: expected WEIR_<SECTION>__<KEY>, e.g. WEIR_PIPELINE__GROUP_ID"
            ));
            continue;
        }
        let value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        match set_path(table, &path, value) {
            Ok(()) => used.push(name.clone()),
            Err(reason) => problems.push(format!("{name}: {reason}")),
        }
    }
    used
}

/// Sets `a.b.c` in a TOML table, making the sections on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("no key".to_owned()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => match table
            .entry(first.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(inner) => set_path(inner, rest, value),
            _ => Err(format!("`{first}` is not a section")),
        },
    }
}

/// Reads the configuration table, reporting every unknown key and wrongly
/// typed value rather than the first: each offending key is noted, removed,
/// and the rest parsed again.
fn parse_config(mut table: toml::Table, origin: &str, problems: &mut Vec<String>) -> ServeConfig {
    // Bounded: every round removes one key.
    for _ in 0..64 {
        let error = match serde_path_to_error::deserialize::<_, ServeConfig>(table.clone()) {
            Ok(config) => return config,
            Err(error) => error,
        };
        let message = error.inner().to_string();
        let mut keys: Vec<String> = error
            .path()
            .iter()
            .map(|segment| segment.to_string())
            .filter(|s| !s.is_empty() && s != "?")
            .collect();
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            && keys.last().map(String::as_str) != Some(field)
        {
            keys.push(field.to_owned());
        }
        problems.push(format!("{origin}: {}: {message}", keys.join(".")));
        if !remove_key(&mut table, &keys) {
            break;
        }
    }
    ServeConfig::default()
}

/// Removes `a.b.c` from a TOML table; false when it is not there.
fn remove_key(table: &mut toml::Table, keys: &[String]) -> bool {
    match keys {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first) {
            Some(toml::Value::Table(inner)) => remove_key(inner, rest),
            _ => false,
        },
    }
}

fn default_data_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match env("HOME") {
        Some(home) if !home.is_empty() => Path::new(&home).join(".local/share/weir"),
        _ => PathBuf::from("weir-data"),
    }
}

/// A fresh random token: 32 hex digits from the system's random source.
fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut bytes,
    )
    .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the generated admin token where only this user can read it.
fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))
}

async fn serve(mut config: Resolved) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    if config.api.admin_token.is_none() {
        let path = config.data_dir.join("admin-token");
        let token = match std::fs::read_to_string(&path) {
            Ok(token) if token.trim().len() >= weir::api::MIN_TOKEN_LEN => token.trim().to_owned(),
            _ => {
                let token = generate_token()?;
                write_token(&path, &token)?;
                token
            }
        };
        tracing::warn!(
            path = %path.display(),
            "no admin token configured (WEIR_ADMIN_TOKEN); using the generated one in this file"
        );
        config.api.admin_token = Some(token);
    }

    let runtime = Runtime::new(config.runtime).context("starting the plugin runtime")?;
    // An unsupported URL fails here; the database itself is waited for below.
    let registry = Registry::open(&config.database, runtime).context("opening the registry")?;
    let health = Arc::new(Health::new(Telemetry::new()));
    health.track(Dependency::Registry, &registry.location());
    // A loop turn longer than a transaction may last is a wedged process.
    let wedged_after = std::time::Duration::from_millis(
        config.plan.pipeline.transaction_timeout_ms + config.plan.pipeline.call_timeout_ms,
    );
    let state = AppState::new(registry.clone(), &config.api)
        .with_health(health.clone(), wedged_after)
        .with_archive(config.plan.archive.clone());
    let slot = state.pipeline_slot();
    // The control plane first: it answers (health, and what the registry
    // holds) while the data path waits for its dependencies.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        database = %redact_url(&config.database),
        "weir control plane serving"
    );
    let local = listener.local_addr().unwrap_or(config.listen);
    eprintln!("weir: serving the API and the dashboard on http://{local}/");
    // One stop signal for every task of the process; each drains within DRAIN.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut http = tokio::spawn(weir::http::serve(
        listener,
        router(state),
        weir::http::HttpLimits {
            drain: DRAIN,
            ..weir::http::HttpLimits::default()
        },
        async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    let pipeline_stop = CancellationToken::new();
    let mut starting = tokio::spawn(start_data_path(
        config.plan,
        registry.clone(),
        health.clone(),
        slot,
        pipeline_stop.clone(),
    ));
    enum Turn {
        Signal,
        HttpEnded(Result<(), tokio::task::JoinError>),
        Started(anyhow::Result<Box<weir::service::Running>>),
        PipelineEnded,
    }
    let mut pipeline: Option<weir::service::Running> = None;
    // Whether `starting` has been awaited to its end (it may not be twice).
    let mut started = false;
    let early = loop {
        let turn = {
            let pipeline_ended = async {
                match &pipeline {
                    Some(running) => {
                        while !running.ended() {
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown_signal() => Turn::Signal,
                ended = &mut http => Turn::HttpEnded(ended),
                done = &mut starting, if !started => Turn::Started(
                    done.unwrap_or_else(|e| Err(anyhow::Error::from(e).context("starting the pipeline"))).map(Box::new)
                ),
                () = pipeline_ended => Turn::PipelineEnded,
            }
        };
        match turn {
            Turn::Signal => break None,
            Turn::HttpEnded(Ok(())) => {
                break Some(Err(anyhow::anyhow!(
                    "the API's listener stopped on its own"
                )));
            }
            Turn::HttpEnded(Err(error)) => {
                break Some(Err(
                    anyhow::Error::from(error).context("the HTTP server task failed")
                ));
            }
            Turn::Started(Ok(running)) => {
                started = true;
                pipeline = Some(*running);
            }
            Turn::Started(Err(error)) => {
                started = true;
                break Some(Err(error));
            }
            Turn::PipelineEnded => {
                health.note_ended();
                tracing::error!("the pipeline stopped on its own; stopping the service");
                break None;
            }
        }
    };
    // Stop fetching; the batch in flight commits (or is left for the next process).
    pipeline_stop.cancel();
    let drained = match pipeline.take() {
        Some(running) => running.finish(DRAIN).await,
        // Still starting: it gives up its waits at the stop signal.
        None if !started => match starting.await {
            Ok(Ok(running)) => running.finish(DRAIN).await,
            _ => Ok(()),
        },
        None => Ok(()),
    };
    health.note_ended();
    let result = match early {
        Some(error) => error,
        None => {
            let _ = stop.send(true);
            // `serve` itself bounds the drain of open requests.
            http.await.context("the HTTP server task failed")
        }
    };
    registry.close().await;
    tracing::info!("weir stopped");
    result.and(drained)
}

/// The data path, once the control plane serves: waits for the registry's
/// database (migrations, the shipped plugins), then starts the pipeline, which
/// waits for Kafka, Redis and the archive the same way. A misconfiguration is
/// an error; the view of the running pipeline goes into `slot` for the API.
async fn start_data_path(
    plan: PipelinePlan,
    registry: Registry,
    health: Arc<Health>,
    slot: Arc<std::sync::OnceLock<PipelineView>>,
    stop: CancellationToken,
) -> anyhow::Result<weir::service::Running> {
    until_up(&health, Dependency::Registry, &stop, || async {
        registry.migrate().await.map_err(|error| {
            if Registry::is_misconfiguration(&error) {
                Attempt::Fatal(error)
            } else {
                Attempt::Retry(error)
            }
        })
    })
    .await
    .context("opening the registry")?
    .ok_or(StoppedWaiting)?;
    registry
        .install_shipped(weir_plugins::SHIPPED)
        .await
        .context("installing the shipped plugins")?;
    tokio::spawn(watch_registry(
        registry.clone(),
        health.clone(),
        stop.clone(),
    ));
    let running = weir::service::start(plan, registry, health, stop)
        .await
        .context("starting the pipeline")?;
    let _ = slot.set(PipelineView {
        counters: running.counters.clone(),
        metrics: running.metrics.clone(),
        collect: running.collect.as_ref().map(|(_, metrics)| metrics.clone()),
        alerts: running.alerts.clone(),
    });
    Ok(running)
}

/// Every two seconds, whether the registry's database answers.
async fn watch_registry(registry: Registry, health: Arc<Health>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
        match registry.generation().await {
            Ok(_) => health.seen(Dependency::Registry, Ok(())),
            Err(error) => health.seen(
                Dependency::Registry,
                Err(&weir::health::first_line(&error.to_string())),
            ),
        }
    }
}

/// How long in-flight requests may run after a stop signal.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> ServeArgs {
        ServeArgs {
            config,
            listen: None,
            data_dir: None,
            database: None,
            kafka: None,
            redis: None,
            archive: None,
            demo: false,
            demo_events: None,
        }
    }

    #[test]
    fn no_configuration_means_embedded_defaults() {
        let env = |name: &str| (name == "HOME").then(|| "/home/ana".to_owned());
        let resolved = args(None).resolve(&env).unwrap();
        assert_eq!(resolved.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(resolved.data_dir, Path::new("/home/ana/.local/share/weir"));
        assert_eq!(
            resolved.database,
            "sqlite:///home/ana/.local/share/weir/registry.db"
        );
        assert_eq!(resolved.api.upload_limit_bytes, 32 << 20);
        assert_eq!(
            resolved.runtime.cache_dir.as_deref(),
            Some(Path::new("/home/ana/.local/share/weir/cache"))
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = std::env::temp_dir().join(format!("weir-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weir.toml");
        std::fs::write(
            &file,
            "listen = \"localhost\"\ndatabase = \"redis://x\"\n[api]\nadmin_token = \"short\"\n",
        )
        .unwrap();
        let env = |name: &str| (name == "WEIR_UPLOAD_LIMIT_BYTES").then(|| "lots".to_owned());
        let problems = args(Some(file.clone())).resolve(&env).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("WEIR_UPLOAD_LIMIT_BYTES=lots"));
        assert!(problems[1].contains("listen = \"localhost\""));
        assert!(problems[2].contains("redis://x"));
        assert!(problems[3].starts_with("api.admin_token"));

        std::fs::write(
            &file,
            "lisen = \"x\"\n[api]\nadmin_tokn = \"x\"\nupload_limit_bytes = \"big\"\n",
        )
        .unwrap();
        let problems = args(Some(file)).resolve(&|_| None).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let all = problems.join("\n");
        for expected in [
            "lisen: unknown field `lisen`",
            "api.admin_tokn: unknown field `admin_tokn`",
            "api.upload_limit_bytes: invalid type",
        ] {
            assert!(all.contains(expected), "{expected} in {all}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn collector_settings_are_checked_and_each_problem_named() {
        let dir = std::env::temp_dir().join(format!("weir-serve-collect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weir.toml");
        std::fs::write(
            &file,
            "[collect]\nlisten = \"nowhere\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n\
             max_header_bytes = 100\nvisitor_cookie = \"a b\"\n\
             [collect.streams.logs]\ntopic = \"bad topic\"\nkey = \"short\"\n\
             [[collect.tail]]\npath = \"relative.log\"\ntopic = \"t\"\n\
             [[collect.tail]]\npath = \"/var/*/x.log\"\ntopic = \"t\"\n",
        )
        .unwrap();
        let problems = args(Some(file.clone())).resolve(&|_| None).unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "collect.listen = \"nowhere\"",
            "collect.trusted_proxies: \"10.0.0.0/33\"",
            "collect.max_header_bytes = 100",
            "collect.visitor_cookie = \"a b\"",
            "collect.streams.logs.topic",
            "collect.streams.logs.key",
            "collect.tail[0].path",
            "collect.tail[1].path",
        ] {
            assert!(all.contains(expected), "{expected} in {all}");
        }
        assert_eq!(problems.len(), 8, "{problems:#?}");

        // Tailing needs the collector, whose producer it uses.
        std::fs::write(
            &file,
            "[collect]\nenabled = false\n[[collect.tail]]\npath = \"/var/log/x.log\"\ntopic = \"t\"\n",
        )
        .unwrap();
        let problems = args(Some(file)).resolve(&|_| None).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].starts_with("collect.tail: files are tailed by the collector"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Any key of the file's sections can be set from the environment.
    #[test]
    fn weir_section_key_variables_set_any_key() {
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let resolved = args(None)
            .resolve_layered(
                &|_| None,
                &vars(&[
                    ("WEIR_PIPELINE__GROUP_ID", "blue"),
                    ("WEIR_PIPELINE__BATCH_MAX_EVENTS", "500"),
                    ("WEIR_PIPELINE__TOPICS", r#"["a", "b"]"#),
                    ("WEIR_RUNTIME__CPU_LIMIT_MS", "200"),
                    ("WEIR_ARCHIVE__MAX_FILE_AGE_SECS", "0"),
                    ("WEIR_LISTEN", "127.0.0.1:9000"),
                    ("OTHER__THING", "x"),
                ]),
            )
            .unwrap();
        assert_eq!(resolved.plan.pipeline.group_id, "blue");
        assert_eq!(resolved.plan.pipeline.batch_max_events, 500);
        assert_eq!(resolved.plan.pipeline.topics, ["a", "b"]);
        assert_eq!(resolved.runtime.cpu_limit_ms, Some(200));
        assert_eq!(resolved.plan.archive.max_file_age_secs, 0);

        let problems = args(None)
            .resolve_layered(
                &|_| None,
                &vars(&[
                    ("WEIR_PIPELINE__GRUOP_ID", "x"),
                    ("WEIR_PIPELINE__BATCH_MAX_EVENTS", "many"),
                    ("WEIR__X", "1"),
                ]),
            )
            .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "WEIR__X: expected WEIR_<SECTION>__<KEY>",
            "pipeline.gruop_id: unknown field `gruop_id`",
            "pipeline.batch_max_events: invalid type",
            "with WEIR_PIPELINE__BATCH_MAX_EVENTS, WEIR_PIPELINE__GRUOP_ID",
        ] {
            assert!(all.contains(expected), "{expected} in {all}");
        }
    }

    /// A transaction holds a cycle's produce and commit only (the sinks run
    /// after it), so it must outlast one Kafka call, and need not outlast the
    /// sinks' timeouts.
    #[test]
    fn a_transaction_timeout_must_outlast_a_kafka_call() {
        let dir = std::env::temp_dir().join(format!("weir-serve-timeouts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weir.toml");
        let config = |pipeline: &str| {
            format!(
                "[pipeline]\nbrokers = \"127.0.0.1:9092\"\n{pipeline}\n\
                 [counters]\nredis = \"redis://127.0.0.1:6379\"\n\
                 [archive]\nroot = \"hdfs://127.0.0.1:9000/weir\"\n"
            )
        };
        for fits in ["", "transaction_timeout_ms = 60000"] {
            std::fs::write(&file, config(fits)).unwrap();
            args(Some(file.clone()))
                .resolve(&|_| None)
                .unwrap_or_else(|p| panic!("{fits:?}: {p:#?}"));
        }
        std::fs::write(&file, config("transaction_timeout_ms = 20000")).unwrap();
        let problems = args(Some(file.clone())).resolve(&|_| None).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].contains("pipeline.transaction_timeout_ms = 20000 must be more than pipeline.call_timeout_ms = 30000"),
            "{problems:#?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn flags_and_environment_override_the_file() {
        let dir = std::env::temp_dir().join(format!("weir-serve-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weir.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[api]\nadmin_token = \"file-token-0123456789\"\n",
        )
        .unwrap();
        let mut args = args(Some(file));
        args.listen = Some("0.0.0.0:9100".into());
        let env =
            |name: &str| (name == "WEIR_ADMIN_TOKEN").then(|| "env-token-0123456789".to_owned());
        let resolved = args.resolve(&env).unwrap();
        assert_eq!(resolved.listen.to_string(), "0.0.0.0:9100");
        assert_eq!(
            resolved.api.admin_token.as_deref(),
            Some("env-token-0123456789")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
