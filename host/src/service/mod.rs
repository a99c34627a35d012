//! Where the service is composed: Kafka (or the embedded broker), the counters
//! (Redis, or in memory), the archive, the pipeline thread, the collector's
//! listener and the `--demo` feed (through the collector over HTTP),
//! under one stop signal. `weir serve` calls [`start`], and so do the tests of the
//! service, so the wiring exists once.

pub mod demo;
pub mod embedded;

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::{Counters, CountersConfig, CountersError, CountersSink};
use crate::alert::{Alerts, AlertsConfig};
use crate::archive::columns::RegistryColumns;
use crate::archive::{ArchiveConfig, ArchiveSink};
use crate::collect::{CollectConfig, CollectMetrics, Front};
use crate::health::{Attempt, Dependency, Health, until_up};
use crate::pipeline::sink::Sink;
use crate::pipeline::{Metrics, Pipeline, PipelineConfig, PipelineError};
use crate::registry::{PutMode, Registry};
use anyhow::Context;
use embedded::EmbeddedBroker;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The `[counters]` section of the service's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountersSection {
    /// Redis URL (env `WEIR_REDIS`, flag `--redis`); without one the counters are
    /// kept in the process and lost when it stops. For a Redis Cluster, the URLs of
    /// some of its nodes, separated by commas.
    pub redis: Option<String>,
    /// The URL names a Redis Cluster node (implied by more than one URL).
    pub cluster: Option<bool>,
    /// Prefix of every counter key (default `weir`).
    pub key_prefix: Option<String>,
    /// How long per-minute buckets are kept, seconds (default 7 days).
    pub bucket_retention_secs: Option<u64>,
    /// The consumer group whose counts the dashboards' `scenario:<id>:success_ratio`
    /// keys show (default `weir`, the default group); other groups leave them alone.
    pub success_ratio_group: Option<String>,
}

/// What the service runs besides the API.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// The pipeline's settings; empty `brokers` means the embedded broker.
    pub pipeline: PipelineConfig,
    /// Where the counters live.
    pub counters: CountersSection,
    /// Where the Parquet archive goes.
    pub archive: ArchiveConfig,
    /// The collector (its own public listener) and its tailed files.
    pub collect: CollectConfig,
    /// Where state of this process is kept (the tailer's checkpoints).
    pub data_dir: std::path::PathBuf,
    /// Create scenario 5 and feed it generated events.
    pub demo: bool,
    /// With `demo`: stop feeding after this many events (default: never).
    pub demo_events: Option<u64>,
    /// Alert rules and their webhooks.
    pub alerts: AlertsConfig,
}

impl PipelinePlan {
    /// Every problem with the plan, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut check = self.pipeline.clone();
        if check.brokers.is_empty() {
            // The embedded broker fills this in at start.
            check.brokers = "127.0.0.1:9092".into();
        }
        let mut problems = check.problems();
        if let Some(url) = &self.counters.redis
            && !url
                .split(',')
                .all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://"))
        {
            problems.push(format!(
                "counters.redis = {url:?}: expected redis://HOST:PORT[/DB], or for a Redis \
                 Cluster several such URLs separated by commas"
            ));
        }
        if self.counters.bucket_retention_secs == Some(0) {
            problems.push("counters.bucket_retention_secs: use at least 1".into());
        }
        problems.extend(self.archive.problems());
        problems.extend(self.alerts.problems());
        if self.collect.enabled {
            problems.extend(self.collect.problems());
        } else if !self.collect.tail.is_empty() {
            // The tailer produces through the collector's producer.
            problems.push(
                "collect.tail: files are tailed by the collector; set collect.enabled = true                  (or remove the [[collect.tail]] entries)"
                    .into(),
            );
        }
        problems
    }

    /// The topic tracking hits go to: `[collect] topic`, else the first topic
    /// the pipeline consumes.
    pub fn hits_topic(&self) -> String {
        self.collect.topic.clone().unwrap_or_else(|| {
            self.pipeline
                .topics
                .first()
                .cloned()
                .unwrap_or_else(|| "weir.events".into())
        })
    }
}

/// The running pipeline part of the service.
pub struct Running {
    thread: std::thread::JoinHandle<Result<Arc<Metrics>, PipelineError>>,
    /// Shared with the API for `/metrics` and stats.
    pub metrics: Arc<Metrics>,
    /// Shared with the API for stats.
    pub counters: Counters,
    /// The Kafka bootstrap servers the pipeline uses (the embedded broker's
    /// address when none was configured).
    pub brokers: String,
    /// The collector's address and counters, when it runs.
    pub collect: Option<(std::net::SocketAddr, Arc<CollectMetrics>)>,
    /// The alert rules, when any are configured.
    pub alerts: Option<Arc<Alerts>>,
    collector: Option<(tokio::task::JoinHandle<()>, Arc<Front>)>,
    _broker: Option<EmbeddedBroker>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

/// Starts the pipeline (and the demo, if asked) on `registry`; `stop` ends it.
/// Each dependency (Kafka, Redis, the archive) is waited for as `health` says
/// ([`crate::health::until_up`]): retried with backoff while unreachable,
/// reported once, and a misconfiguration ends the start with an error naming
/// it. A stop while waiting ends it with [`StoppedWaiting`].
pub async fn start(
    plan: PipelinePlan,
    registry: Registry,
    health: Arc<Health>,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    let hits_topic = plan.hits_topic();
    let collect_topics = if plan.collect.enabled {
        plan.collect.topics(&hits_topic)
    } else {
        Vec::new()
    };
    let mut config = plan.pipeline;
    let broker = if config.brokers.is_empty() {
        let mut topics: Vec<(&str, i32)> = config.topics.iter().map(|t| (t.as_str(), 3)).collect();
        topics.push((config.dlq_topic.as_str(), 1));
        topics.push((config.journal_topic.as_str(), 3));
        for topic in &collect_topics {
            if !topics.iter().any(|(t, _)| t == topic) {
                topics.push((topic.as_str(), 3));
            }
        }
        let broker = EmbeddedBroker::start(&topics).context("starting the embedded broker")?;
        config.brokers = broker.bootstrap_servers().to_owned();
        eprintln!(
            "weir: no Kafka configured (--kafka); using an in-process broker at {} (not durable)",
            config.brokers
        );
        health.track(Dependency::Kafka, &config.brokers);
        health.seen(Dependency::Kafka, Ok(()));
        Some(broker)
    } else {
        health.track(Dependency::Kafka, &config.brokers);
        let probe = KafkaProbe::new(&config.brokers, &config.kafka)
            .with_context(|| format!("the Kafka configuration (brokers {})", config.brokers))?;
        let probe = Arc::new(probe);
        until_up(&health, Dependency::Kafka, &stop, || {
            let probe = probe.clone();
            async move {
                tokio::task::spawn_blocking(move || probe.reach())
                    .await
                    .unwrap_or_else(|e| Err(Attempt::Retry(e.to_string())))
            }
        })
        .await
        .map_err(|reason| anyhow::anyhow!("Kafka at {}: {reason}", config.brokers))?
        .ok_or(StoppedWaiting)?;
        // Destroying a client waits for its threads: not on an async worker.
        if let Ok(probe) = Arc::try_unwrap(probe) {
            tokio::task::spawn_blocking(move || drop(probe));
        }
        None
    };

    let retention = plan.counters.bucket_retention_secs.unwrap_or(7 * 24 * 3600);
    let counters = match &plan.counters.redis {
        Some(url) => {
            let counters_config = CountersConfig {
                url: url.clone(),
                cluster: plan.counters.cluster.unwrap_or(false),
                key_prefix: plan
                    .counters
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "weir".into()),
                bucket_retention_secs: retention,
                success_ratio_group: plan
                    .counters
                    .success_ratio_group
                    .clone()
                    .unwrap_or_else(|| CountersConfig::default().success_ratio_group),
            };
            let shown = crate::registry::redact_url(url);
            health.track(Dependency::Redis, &shown);
            until_up(&health, Dependency::Redis, &stop, || {
                let (counters_config, group) = (&counters_config, &config.group_id);
                async move {
                    Counters::connect(counters_config, group)
                        .await
                        .map_err(|error| match &error {
                            CountersError::Config(_) => Attempt::Fatal(error),
                            CountersError::Redis { source, .. }
                                if matches!(
                                    source.kind(),
                                    redis::ErrorKind::AuthenticationFailed
                                        | redis::ErrorKind::InvalidClientConfig
                                ) =>
                            {
                                Attempt::Fatal(error)
                            }
                            _ => Attempt::Retry(error),
                        })
                }
            })
            .await
            .with_context(|| format!("connecting the counters to {shown}"))?
            .ok_or(StoppedWaiting)?
        }
        None => {
            eprintln!("weir: no Redis configured (--redis); counting in memory (lost on exit)");
            Counters::in_memory(retention)
        }
    };

    if plan.demo {
        registry
            .import_members(&demo::members())
            .await
            .context("importing the demo members")?;
        registry
            .put_scenario(demo::scenario(), None, PutMode::Upsert, "demo")
            .await
            .context("creating the demo scenario 5")?;
        tokio::spawn(report(
            counters.clone(),
            demo::SCENARIO_ID.to_owned(),
            stop.clone(),
        ));
    }

    let archive = {
        // An S3 root names the bucket; where it is served is the endpoint.
        let target = match plan.archive.s3_endpoint.as_str() {
            endpoint if plan.archive.root.starts_with("s3://") && !endpoint.is_empty() => {
                format!("{} at {endpoint}", plan.archive.root)
            }
            _ => plan.archive.root.clone(),
        };
        health.track(Dependency::Archive, &target);
        let on_hdfs = plan.archive.root.starts_with("hdfs://");
        let remote = on_hdfs || plan.archive.root.starts_with("s3://");
        until_up(&health, Dependency::Archive, &stop, || {
            let config = plan.archive.clone();
            let handle = tokio::runtime::Handle::current();
            // Opening the archive lists and cleans its temporary directory (HDFS
            // calls that block on the runtime): off the runtime's threads.
            async move {
                // The HDFS client retries a refused NameNode for minutes on its
                // own: a connection is tried first, so each try here is short.
                if on_hdfs {
                    namenode_answers(&config.root)
                        .await
                        .map_err(Attempt::Retry)?;
                }
                match tokio::task::spawn_blocking(move || ArchiveSink::new(&config, handle)).await {
                    Ok(Ok(sink)) => Ok(sink),
                    // An unreachable NameNode or S3 server may come back (and S3
                    // credentials be fixed); a local directory that cannot be
                    // made, or a bad setting, will not.
                    Ok(Err(error @ crate::archive::ArchiveError::Store { .. })) if remote => {
                        Err(Attempt::Retry(error.to_string()))
                    }
                    Ok(Err(error)) => Err(Attempt::Fatal(error.to_string())),
                    Err(error) => Err(Attempt::Retry(error.to_string())),
                }
            }
        })
        .await
        .map_err(|reason| {
            anyhow::anyhow!("opening the archive at {}: {reason}", plan.archive.root)
        })?
        .ok_or(StoppedWaiting)?
        .with_columns(RegistryColumns::new(
            registry.clone(),
            tokio::runtime::Handle::current(),
        ))
    };
    eprintln!("weir: archiving Parquet under {}", plan.archive.root);
    let telemetry = health.telemetry().clone();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(
            CountersSink::new(counters.clone(), tokio::runtime::Handle::current())
                .with_telemetry(&telemetry),
        ),
        Box::new(archive),
    ];
    let brokers = config.brokers.clone();
    let pipeline = Pipeline::new(config, registry, sinks, telemetry.clone(), stop.clone())
        .await
        .context("starting the pipeline")?;
    let metrics = pipeline.metrics();
    tokio::spawn(housekeep(metrics.clone(), health.clone(), stop.clone()));
    let alerts = (!plan.alerts.rules.is_empty()).then(|| {
        let alerts = Arc::new(Alerts::new(
            plan.alerts.clone(),
            metrics.clone(),
            counters.clone(),
        ));
        eprintln!(
            "weir: {} alert rules, notifying {} webhooks",
            plan.alerts.rules.len(),
            plan.alerts.webhooks.len()
        );
        tokio::spawn(alerts.clone().run(stop.clone()));
        alerts
    });
    let collector = if plan.collect.enabled {
        let addr = plan.collect.listen.clone();
        let front = Arc::new(
            Front::new(plan.collect.clone(), &brokers, &hits_topic, telemetry)
                .context("starting the collector's producer")?,
        );
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr} for the collector ([collect] listen)"))?;
        let local = listener.local_addr().context("the collector's address")?;
        eprintln!(
            "weir: collecting tracking hits and JSON records on http://{local} (to {})",
            front.hits_topic()
        );
        let server = tokio::spawn(crate::http::serve(
            listener,
            crate::collect::router(front.clone()),
            plan.collect.http_limits(),
            stop.clone().cancelled_owned(),
        ));
        if let Err(error) = std::fs::create_dir_all(&plan.data_dir) {
            anyhow::bail!(
                "creating the data directory {}: {error}",
                plan.data_dir.display()
            );
        }
        for (index, tail) in plan.collect.tail.iter().enumerate() {
            eprintln!("weir: tailing {} into {}", tail.path, tail.topic);
            tokio::spawn(crate::collect::tail::run(
                index,
                tail.clone(),
                front.producer(),
                plan.data_dir.clone(),
                front.metrics().tail.clone(),
                stop.clone(),
            ));
        }
        Some((local, server, front))
    } else {
        None
    };
    if plan.demo {
        match &collector {
            Some((addr, ..)) => {
                tokio::spawn(demo::feed_http(*addr, 500, plan.demo_events, stop.clone()));
            }
            None => {
                tokio::spawn(demo::feed(
                    brokers.clone(),
                    hits_topic.clone(),
                    500,
                    plan.demo_events,
                    stop.clone(),
                ));
            }
        }
    }
    let thread = std::thread::Builder::new()
        .name("weir-pipeline".into())
        .spawn(move || pipeline.run())
        .context("starting the pipeline thread")?;
    Ok(Running {
        thread,
        metrics,
        counters,
        brokers,
        collect: collector
            .as_ref()
            .map(|(addr, _, front)| (*addr, front.metrics())),
        alerts,
        collector: collector.map(|(_, server, front)| (server, front)),
        _broker: broker,
    })
}

/// Every second, samples the event count for the rate the dashboard shows and
/// tells `health` what the pipeline saw of its dependencies; every five, folds
/// the histograms' samples into their buckets.
async fn housekeep(metrics: Arc<Metrics>, health: Arc<Health>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    while tokio::select! { _ = every.tick() => true, () = stop.cancelled() => false } {
        metrics.sample(chrono::Utc::now().timestamp_millis());
        observe(&metrics, &health);
        ticks += 1;
        if ticks.is_multiple_of(5) {
            metrics.telemetry.upkeep();
        }
    }
}

/// Copies what the running pipeline saw into `health`: the consumer's
/// assignment and last turn, whether a broker answered at its last statistics,
/// and which sinks fail (the counters' Redis, the archive's store).
fn observe(metrics: &Metrics, health: &Health) {
    use std::sync::atomic::Ordering::Relaxed;
    if metrics.assigned.load(Relaxed) {
        health.note_assigned();
    }
    let turn = metrics.last_turn_ms.load(Relaxed);
    if turn > 0 {
        health.note_turn_at(turn);
    }
    let kafka = metrics.kafka.lock().expect("metrics lock").clone();
    match kafka.reachable {
        Some(true) => health.seen(Dependency::Kafka, Ok(())),
        Some(false) => health.seen(
            Dependency::Kafka,
            Err(kafka.error.as_deref().unwrap_or("no broker answers")),
        ),
        None => {}
    }
    let failing = metrics.sink_failing.lock().expect("metrics lock").clone();
    for (sink, dependency) in [
        ("counters", Dependency::Redis),
        ("archive", Dependency::Archive),
    ] {
        match failing.get(sink) {
            Some(f) => health.seen(dependency, Err(&crate::health::first_line(&f.error))),
            None => health.seen(dependency, Ok(())),
        }
    }
}

/// Whether the NameNode of `root` (`hdfs://host:port/...`) accepts a
/// connection within 3 s; if not, why.
async fn namenode_answers(root: &str) -> Result<(), String> {
    let authority = root
        .trim_start_matches("hdfs://")
        .split('/')
        .next()
        .unwrap_or_default();
    match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("the NameNode at {authority}: {error}")),
        Err(_) => Err(format!("the NameNode at {authority}: no answer within 3 s")),
    }
}

/// The service was stopped while it waited for a dependency.
#[derive(Debug, thiserror::Error)]
#[error("stopped while waiting for a dependency")]
pub struct StoppedWaiting;

/// Asks Kafka for its metadata: whether a broker answers, and if not, what
/// librdkafka last said (`Connect to ... failed: Connection refused`).
struct KafkaProbe {
    client: rdkafka::consumer::BaseConsumer<ProbeContext>,
}

#[derive(Default)]
struct ProbeContext {
    last_error: std::sync::Mutex<Option<(rdkafka::types::RDKafkaErrorCode, String)>>,
}

impl rdkafka::ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka probe");
        let code = error
            .rdkafka_error_code()
            .unwrap_or(rdkafka::types::RDKafkaErrorCode::Fail);
        *self.last_error.lock().expect("probe lock") = Some((code, plain_reason(reason)));
    }

    /// librdkafka's own lines: a failed connection is the reason to give
    /// (`Connect to ... failed: Connection refused`); the waiting line says
    /// it once, so they are not logged again.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        tracing::debug!(fac, message, "kafka probe");
        if matches!(
            level,
            Level::Emerg | Level::Alert | Level::Critical | Level::Error
        ) || fac == "FAIL"
        {
            let mut last = self.last_error.lock().expect("probe lock");
            if last.is_none() {
                *last = Some((
                    rdkafka::types::RDKafkaErrorCode::Fail,
                    plain_reason(message),
                ));
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// librdkafka's `127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed:
/// Connection refused (after 0ms in state CONNECT)` as `Connect to
/// ipv4#127.0.0.1:1 failed: Connection refused`: the waiting line names the
/// brokers already, and the rest changes from one try to the next.
fn plain_reason(text: &str) -> String {
    let text = match text.split_once(": ") {
        Some((broker, rest)) if broker.contains('/') && !broker.contains(' ') => rest,
        _ => text,
    };
    text.split(" (after ").next().unwrap_or(text).to_owned()
}

impl KafkaProbe {
    /// A client for `brokers` with the pipeline's own Kafka settings; a setting
    /// librdkafka refuses is an error here.
    fn new(
        brokers: &str,
        settings: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (key, value) in settings {
            config.set(key, value);
        }
        // The probe only asks for metadata: no group, no fetching.
        config.set("group.id", "weir-probe");
        Ok(Self {
            client: config.create_with_context(ProbeContext::default())?,
        })
    }

    /// One metadata request (blocks up to 3 s).
    fn reach(&self) -> Result<(), Attempt<String>> {
        use rdkafka::consumer::Consumer;
        use rdkafka::types::RDKafkaErrorCode as Code;
        match self.client.fetch_metadata(None, Duration::from_secs(3)) {
            Ok(_) => Ok(()),
            Err(error) => {
                // Serves the client's queued events, errors among them.
                let _ = self.client.poll(Duration::from_millis(100));
                let last = self
                    .client
                    .context()
                    .last_error
                    .lock()
                    .expect("probe lock")
                    .take();
                match last {
                    Some((
                        code @ (Code::Authentication
                        | Code::SaslAuthenticationFailed
                        | Code::InvalidSessionTimeout
                        | Code::TopicAuthorizationFailed
                        | Code::ClusterAuthorizationFailed),
                        reason,
                    )) => Err(Attempt::Fatal(format!("{code}: {reason}"))),
                    Some((_, reason)) => Err(Attempt::Retry(reason)),
                    None => Err(Attempt::Retry(error.to_string())),
                }
            }
        }
    }
}

impl Running {
    /// Waits for the pipeline thread after the stop signal, at most `drain`.
    pub async fn finish(self, drain: Duration) -> anyhow::Result<()> {
        if let Some((server, front)) = self.collector {
            // The listener stopped with the stop signal; its open requests finish.
            let _ = tokio::time::timeout(drain, server).await;
            let _ = tokio::task::spawn_blocking(move || front.flush(Duration::from_secs(5))).await;
        }
        let thread = self.thread;
        let joined =
            tokio::time::timeout(drain, tokio::task::spawn_blocking(move || thread.join())).await;
        match joined {
            Ok(Ok(Ok(Ok(metrics)))) => {
                tracing::info!(
                    events = metrics.events.load(std::sync::atomic::Ordering::Relaxed),
                    "pipeline drained"
                );
                Ok(())
            }
            Ok(Ok(Ok(Err(error)))) => Err(error).context("the pipeline stopped with an error"),
            Ok(Ok(Err(_))) | Ok(Err(_)) => anyhow::bail!("the pipeline thread panicked"),
            Err(_) => anyhow::bail!(
                "the pipeline did not finish its batch within {} s; its events will be read again",
                drain.as_secs()
            ),
        }
    }

    /// Whether the pipeline thread ended on its own.
    pub fn ended(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Prints the demo scenario's live counts every few seconds.
async fn report(counters: Counters, scenario: String, stop: CancellationToken) {
    let mut last = u64::MAX;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match counters.totals(&scenario).await {
            Ok(totals) if totals.total != last => {
                last = totals.total;
                let ratio = if totals.total == 0 {
                    0.0
                } else {
                    totals.matched as f64 / totals.total as f64
                };
                eprintln!(
                    "weir: scenario {scenario}: {} events, {} matched (success ratio {ratio:.4}), {} dead-lettered",
                    totals.total, totals.matched, totals.errors
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reading the demo counts failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafkas_reasons_lose_the_broker_name_and_the_timing() {
        assert_eq!(
            plain_reason(
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused \
                 (after 0ms in state CONNECT)"
            ),
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
        );
        assert_eq!(
            plain_reason("1/1 brokers are down"),
            "1/1 brokers are down",
            "a text without a broker name stays"
        );
    }
}
