//! The pipeline: Kafka in, scenario plugins, Kafka out, exactly once.
//!
//! One pipeline thread runs batch cycles:
//!
//! 1. **Gather**: poll the consumer until `batch_max_events` events or `batch_linger_ms`
//!    passed. The consumer only fetches while the thread polls, so memory stays bounded
//!    by the batch size plus librdkafka's prefetch queue, whatever the sinks do.
//! 2. **Route**: an event with a `scenario_id` field goes to that scenario; one without
//!    goes to every scenario bound to its topic (`source`). An id no enabled scenario has
//!    goes to the dead-letter topic as `unknown_scenario`; an event no scenario takes, as
//!    `unrouted` (or `malformed_json` when it is not a JSON object).
//! 3. **Enrich**: for scenarios with `enrich`, member attributes (by the configured field,
//!    from the registry, cached until the registry changes) are merged into the event;
//!    the event's own fields win.
//! 4. **Run**: each scenario's share of each partition batch goes through its plugin in
//!    one call ([`crate::runtime`] isolates traps and limits to the events that caused them).
//! 5. **Commit**, in one Kafka transaction: outputs go to the scenario's output topic
//!    (keyed by member id, stamped with the plugin and its version in headers), failures
//!    to the dead-letter topic with the reason, the cycle's results to the journal
//!    ([`journal`]); then the consumed offsets are sent to the transaction and it
//!    commits. If anything fails, the transaction aborts and the same events run again
//!    after a backoff (consumption paused meanwhile), so nothing is lost and, for
//!    `read_committed` readers, nothing is doubled.
//! 6. **Sinks**: only once it committed does every [`sink::Sink`] take the cycle's
//!    results. A sink that fails gets the same results again after a backoff; it never
//!    sees an attempt that Kafka did not keep.
//!
//! The committed offset of a partition stops at the first event a sink has not made
//! durable: the cycle just committed (until the next commit), and whatever a sink
//! holds (the archive keeps files open for minutes). The commit carries, as offset
//! metadata, how far the outputs were produced and where the journal holds the results
//! in between (`weir:produced=<offset>;journal=<partition>@<offset>`). A consumer that
//! takes the partition over (a restart, a rebalance) reads those results back from
//! the journal and gives them to the sinks only: no plugin runs again, no output or
//! dead letter is produced twice, and each sink skips what it already has. Between
//! cycles, and when no events arrive, the sinks are asked to make durable what is due
//! by time, and the offsets that then may advance are committed in a transaction of
//! their own. On stop, the sinks flush everything and the last offsets are committed.
//!
//! Registry changes (a new plugin version, a scenario edit) arrive as a new
//! [`catalog::Catalog`] and are picked up between cycles, never inside one.

pub mod catalog;
pub mod demo;
pub mod embedded;
mod journal;
mod offsets;
pub mod produce;
pub mod route;
pub mod sink;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::runtime::{Batch, BatchResult, EventError, EventInput, FailureKind, Instance, Status};
use catalog::{Catalog, Route};
use journal::{Deliveries, Placed, Placements};
use offsets::Position;
use route::{DeadLetterReason, Fields};
use sink::{EventMeta, PartitionBatch, ScenarioBatch, Sink};

pub use offsets::PRODUCED_METADATA;

/// Header naming the scenario on outputs and dead letters.
pub const HEADER_SCENARIO: &str = "weir-scenario";
/// Header naming the plugin as `name@registry-version`.
pub const HEADER_PLUGIN: &str = "weir-plugin";
/// Header carrying the plugin's own version (from `describe`).
pub const HEADER_PLUGIN_VERSION: &str = "weir-plugin-version";
/// Header with the dead-letter reason code.
pub const HEADER_REASON: &str = "weir-reason";
/// Header with the dead-letter error message.
pub const HEADER_ERROR: &str = "weir-error";
/// Header with the source topic.
pub const HEADER_SOURCE_TOPIC: &str = "weir-source-topic";
/// Header with the source partition.
pub const HEADER_SOURCE_PARTITION: &str = "weir-source-partition";
/// Header with the source offset.
pub const HEADER_SOURCE_OFFSET: &str = "weir-source-offset";

/// How the pipeline consumes, batches and commits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; replicas with the same group share the partitions.
    pub group_id: String,
    /// Topics consumed besides those scenarios name in `source` (events that carry a
    /// `scenario_id` field arrive here).
    pub topics: Vec<String>,
    /// Where failed and unroutable events go.
    pub dlq_topic: String,
    /// Where each cycle's results are kept for replays to the sinks (see
    /// `journal.rs`). Made at start when missing, with `journal_partitions`
    /// partitions and the broker's default replication; its retention must
    /// outlast the longest time a sink holds events (the archive's file age)
    /// plus any downtime, or a replay finds its range gone and says so.
    pub journal_topic: String,
    /// Partitions of the journal topic when weir makes it.
    pub journal_partitions: i32,
    /// Most events in one batch cycle.
    pub batch_max_events: usize,
    /// Longest wait for a batch to fill, milliseconds.
    pub batch_linger_ms: u64,
    /// Prefix of the transactional id, which is `<prefix>-<group_id>-<instance>`.
    pub transactional_id_prefix: String,
    /// This replica's name in the transactional id (default: the host name). It must
    /// stay the same across restarts of a replica and differ between replicas of one
    /// group: a restarted replica then fences its crashed predecessor and aborts its
    /// open transaction at once, instead of leaving its partitions' committed offsets
    /// unreadable until the transaction times out.
    pub instance: Option<String>,
    /// How long the broker lets one transaction stay open before it aborts it
    /// (the producer's `transaction.timeout.ms`), milliseconds. It holds a cycle's
    /// produce and commit (the sinks run after it committed), so it must be more
    /// than `call_timeout_ms`.
    /// An open transaction of a replica that died and does not come back holds
    /// read_committed readers of its partitions back this long.
    pub transaction_timeout_ms: u64,
    /// Timeout of one Kafka call (init, commit and abort of a transaction, reading
    /// committed offsets, waiting for deliveries), milliseconds.
    pub call_timeout_ms: u64,
    /// How often the registry generation is checked, milliseconds.
    pub registry_poll_ms: u64,
    /// First retry delay after a failed cycle, milliseconds; doubles up to 5 s.
    pub retry_backoff_ms: u64,
    /// How long a scenario whose plugin's failures were costly in a batch (see
    /// `quarantine_after_ms`) is set aside, seconds: its events go straight to the
    /// dead-letter topic (reason `plugin_quarantined`) instead of costing every
    /// cycle that much again. After that the plugin is tried again. 0 turns
    /// quarantine off.
    pub quarantine_secs: u64,
    /// Wall time a plugin's failed calls (traps, CPU or memory limits alike) may
    /// cost in one batch before its scenario is set aside, milliseconds. Cheap
    /// failures (a plugin refusing bad events, or trapping at once on one) never
    /// reach it; a plugin that spins and then traps, or hits its CPU limit, does.
    pub quarantine_after_ms: u64,
    /// Extra librdkafka settings for the consumer and producer (e.g. security).
    pub kafka: BTreeMap<String, String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "weir".into(),
            topics: vec!["weir.events".into()],
            dlq_topic: "weir.dlq".into(),
            journal_topic: "weir.journal".into(),
            journal_partitions: 6,
            batch_max_events: 16_384,
            batch_linger_ms: 100,
            transactional_id_prefix: "weir".into(),
            instance: None,
            transaction_timeout_ms: 120_000,
            call_timeout_ms: 30_000,
            registry_poll_ms: 500,
            retry_backoff_ms: 100,
            quarantine_secs: 30,
            quarantine_after_ms: 250,
            kafka: BTreeMap::new(),
        }
    }
}

impl PipelineConfig {
    /// Every problem with the configuration, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push("pipeline.brokers: empty; give `host:port` of a Kafka broker".into());
        }
        if self.group_id.trim().is_empty() {
            problems.push("pipeline.group_id: empty; give a consumer group name".into());
        }
        if self.dlq_topic.trim().is_empty() {
            problems.push("pipeline.dlq_topic: empty; give a topic name such as `weir.dlq`".into());
        }
        if self.journal_topic.trim().is_empty() {
            problems.push(
                "pipeline.journal_topic: empty; give a topic name such as `weir.journal`".into(),
            );
        } else if self.journal_topic == self.dlq_topic || self.topics.contains(&self.journal_topic)
        {
            problems.push(format!(
                "pipeline.journal_topic: {:?} is also consumed or the dead-letter topic; give the journal a topic of its own",
                self.journal_topic
            ));
        }
        if !(1..=10_000).contains(&self.journal_partitions) {
            problems.push(format!(
                "pipeline.journal_partitions: {} is out of range; use 1 to 10000",
                self.journal_partitions
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_max_events) {
            problems.push(format!(
                "pipeline.batch_max_events: {} is out of range; use 1 to 1000000",
                self.batch_max_events
            ));
        }
        if self.call_timeout_ms < 1_000 {
            problems.push("pipeline.call_timeout_ms: use at least 1000".into());
        }
        if self.transaction_timeout_ms <= self.call_timeout_ms {
            problems.push(format!(
                "pipeline.transaction_timeout_ms = {} must be more than pipeline.call_timeout_ms = {}: \
                 a transaction outlasts its own commit call",
                self.transaction_timeout_ms, self.call_timeout_ms
            ));
        }
        if let Err(problem) = produce::message_limit(&self.kafka) {
            problems.push(problem);
        }
        problems
    }
}

/// Errors that stop the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot be used.
    #[error("pipeline configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// Kafka refused something the pipeline cannot retry (fenced producer, bad config).
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What the pipeline was doing.
        context: &'static str,
        /// The client's error.
        source: KafkaError,
    },
    /// The registry could not be read at start.
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    move |source| PipelineError::Kafka { context, source }
}

/// Counters of what the pipeline did, for metrics and tests.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events consumed and handled (committed); not those replayed to the sinks.
    pub events: AtomicU64,
    /// Output records produced (committed).
    pub outputs: AtomicU64,
    /// Events sent to the dead-letter topic (committed).
    pub dead_letters: AtomicU64,
    /// Dead letters by reason code.
    pub dead_letters_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Batch cycles committed.
    pub cycles: AtomicU64,
    /// Batch cycles that failed and were retried, and turns without events whose
    /// sinks or offset commit failed.
    pub failed_cycles: AtomicU64,
    /// Events consumed again for the sinks only: their outputs were produced before a
    /// restart or rebalance, but a sink had not made them durable yet.
    pub replayed: AtomicU64,
    /// Registry generation in use.
    pub generation: AtomicU64,
    /// Times a scenario was set aside for its plugin's costly failures.
    pub quarantines: AtomicU64,
    /// Scenarios set aside now, by scenario id.
    pub quarantined: Mutex<BTreeMap<String, Quarantine>>,
    /// Dead letters the producer refused even cut down: a marker without the
    /// value was produced instead.
    pub unproducible_dead_letters: AtomicU64,
    /// Partitions taken from this replica by rebalances.
    pub revoked_partitions: AtomicU64,
    /// Times the producer was made again after a fatal error.
    pub producer_recreations: AtomicU64,
    /// Events whose results a replay needed but the journal no longer had (or
    /// never had): the sinks miss them, and a log line names each range.
    pub replay_missing: AtomicU64,
    /// Times the sinks failed to take committed results, which were kept and
    /// handed again.
    pub sink_failures: AtomicU64,
}

/// Why and until when a scenario is set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// `name@version` of the plugin whose failures caused it.
    pub plugin: String,
    /// The failure, as the dead letters give it.
    pub reason: String,
    /// Until when, Unix milliseconds.
    pub until_ms: i64,
}

/// Remembers partitions revoked during a poll, so their gathered events are dropped.
#[derive(Debug, Default)]
struct Context {
    revoked: Mutex<HashSet<(String, i32)>>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut revoked = self.revoked.lock().expect("revoked lock");
            for element in list.elements() {
                revoked.insert((element.topic().to_owned(), element.partition()));
            }
            tracing::info!(partitions = list.count(), "partitions revoked");
        }
    }
}

/// One dead letter on its way out.
struct DeadLetter<'a> {
    message: &'a OwnedMessage,
    scenario: Option<&'a Route>,
    reason: DeadLetterReason,
    error: String,
}

/// The running pipeline. Build it with [`Pipeline::new`], then call [`Pipeline::run`]
/// on a thread of its own (it blocks).
pub struct Pipeline {
    config: PipelineConfig,
    consumer: BaseConsumer<Context>,
    producer: ThreadedProducer<Deliveries>,
    /// Reads the journal back for replays.
    journal_reader: BaseConsumer,
    /// Where the journal records that replays may still need were written.
    placements: Placements,
    /// Tags of the journal records sent in the open transaction: (tag, source
    /// partition, the batch's last offset).
    journal_sent: Vec<(usize, (String, i32), i64)>,
    next_tag: usize,
    /// Committed batches not handed to every sink yet.
    unsunk: Vec<PartitionBatch>,
    registry: Registry,
    catalog: watch::Receiver<Arc<Catalog>>,
    current: Arc<Catalog>,
    subscribed: Vec<String>,
    instances: HashMap<String, (Arc<Route>, Instance)>,
    /// Scenarios set aside until a time, with the failure that caused it.
    quarantine: HashMap<String, (Instant, String)>,
    sinks: Vec<Box<dyn Sink>>,
    /// Per assigned partition that has been seen in a cycle: how far it is produced
    /// and committed.
    positions: HashMap<(String, i32), Position>,
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    /// The producer's `message.max.bytes` (see `produce.rs`).
    message_limit: usize,
    /// How the producer is made, to make it again after a fatal error.
    producer_config: ClientConfig,
    /// When the producer was recreated lately (see [`may_recreate`]).
    recreations: VecDeque<Instant>,
}

/// A fatal producer error is survived this many times within
/// [`RECREATION_WINDOW`]; one more means another live process shares this
/// replica's transactional id, and this one stops.
const MAX_RECREATIONS: usize = 3;
const RECREATION_WINDOW: Duration = Duration::from_secs(300);

/// Whether the producer may be recreated at `now`, given when it was lately;
/// records `now` when it may.
fn may_recreate(history: &mut VecDeque<Instant>, now: Instant) -> bool {
    while history
        .front()
        .is_some_and(|&at| now.duration_since(at) >= RECREATION_WINDOW)
    {
        history.pop_front();
    }
    if history.len() >= MAX_RECREATIONS {
        return false;
    }
    history.push_back(now);
    true
}

/// A transactional producer from `config`, its transactions initialised (which
/// aborts whatever an earlier producer with the same id left open, and fences it).
fn transactional_producer(
    config: &ClientConfig,
    timeout: Duration,
) -> Result<ThreadedProducer<Deliveries>, PipelineError> {
    let producer: ThreadedProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(kafka("creating the producer"))?;
    producer
        .init_transactions(timeout)
        .map_err(kafka("initialising transactions"))?;
    Ok(producer)
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Connects to Kafka and reads the registry. Call from within a tokio runtime
    /// (the registry follower runs on it); `stop` ends [`Pipeline::run`] gracefully.
    pub async fn new(
        config: PipelineConfig,
        registry: Registry,
        sinks: Vec<Box<dyn Sink>>,
        stop: CancellationToken,
    ) -> Result<Self, PipelineError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(PipelineError::Config(problems));
        }
        let mut common = ClientConfig::new();
        common.set("bootstrap.servers", &config.brokers);
        for (key, value) in &config.kafka {
            common.set(key, value);
        }
        let mut consumer_config = common.clone();
        if !config.kafka.contains_key("fetch.queue.backoff.ms") {
            // The consumer fetches ahead into a local queue; when that queue is over its
            // threshold the client waits this long before fetching again (default 1 s).
            // Drained in bursts between batches, the queue ran dry for ~300 ms at a time:
            // 134,000 events/s with the default, 190,000 with 10 ms (docs/pipeline.md).
            consumer_config.set("fetch.queue.backoff.ms", "10");
        }
        if !config.kafka.contains_key("partition.assignment.strategy") {
            // Cooperative rebalancing moves only the partitions that change owner: a
            // replica joining or leaving no longer revokes every partition of every
            // replica, so the others keep their open archive files and their place.
            // Every replica of a group must use the same strategy.
            consumer_config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        let consumer: BaseConsumer<Context> = consumer_config
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .create_with_context(Context::default())
            .map_err(kafka("creating the consumer"))?;
        let journal_reader: BaseConsumer = common
            .clone()
            // Never commits: it only reads the journal back from where a commit points.
            .set("group.id", format!("{}-journal-reader", config.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(kafka("creating the journal reader"))?;
        let known = journal_reader
            .fetch_metadata(Some(&config.journal_topic), Duration::from_secs(10))
            .is_ok_and(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == config.journal_topic && t.error().is_none())
            });
        if !known {
            ensure_topic(&common, &config.journal_topic, config.journal_partitions).await;
        }
        let instance = config.instance.clone().unwrap_or_else(host_name);
        let transactional_id = format!(
            "{}-{}-{instance}",
            config.transactional_id_prefix, config.group_id
        );
        let mut producer_config = common.clone();
        producer_config
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout_ms.to_string(),
            );
        let timeout = Duration::from_millis(config.call_timeout_ms);
        let producer = {
            let producer_config = producer_config.clone();
            tokio::task::spawn_blocking(move || transactional_producer(&producer_config, timeout))
        }
        .await
        .expect("init_transactions thread")?;

        let first = Arc::new(Catalog::load(&registry).await?);
        let metrics = Arc::new(Metrics::default());
        metrics
            .generation
            .store(first.generation as u64, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(first.clone());
        tokio::spawn(catalog::follow(
            registry.clone(),
            sender,
            Duration::from_millis(config.registry_poll_ms.max(10)),
            stop.clone(),
        ));
        let message_limit = produce::message_limit(&config.kafka)
            .map_err(|problem| PipelineError::Config(vec![problem]))?;
        Ok(Self {
            journal_reader,
            placements: Placements::default(),
            journal_sent: Vec::new(),
            next_tag: 1,
            unsunk: Vec::new(),
            producer_config,
            recreations: VecDeque::new(),
            message_limit,
            config,
            consumer,
            producer,
            registry,
            catalog: receiver,
            current: first,
            subscribed: Vec::new(),
            instances: HashMap::new(),
            quarantine: HashMap::new(),
            sinks,
            positions: HashMap::new(),
            runtime: tokio::runtime::Handle::current(),
            stop,
            metrics,
        })
    }

    /// The pipeline's counters, shared.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.config.topics.clone();
        topics.extend(self.current.topics());
        topics.sort();
        topics.dedup();
        topics
    }

    fn subscribe(&mut self) -> Result<(), PipelineError> {
        let topics = self.topics();
        if topics != self.subscribed {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            self.consumer
                .subscribe(&names)
                .map_err(kafka("subscribing"))?;
            tracing::info!(topics = ?topics, "subscribed");
            self.subscribed = topics;
        }
        Ok(())
    }

    /// Switches to the newest catalog, between cycles.
    fn refresh(&mut self) -> Result<(), PipelineError> {
        if self.catalog.has_changed().unwrap_or(false) {
            self.current = self.catalog.borrow_and_update().clone();
            self.metrics
                .generation
                .store(self.current.generation as u64, Ordering::Relaxed);
            let routes = &self.current.routes;
            self.instances.retain(|id, (route, _)| {
                routes.get(id).is_some_and(|now| {
                    now.plugin.info().sha256 == route.plugin.info().sha256
                        && now.config == route.config
                })
            });
            self.subscribe()?;
        }
        Ok(())
    }

    /// Runs batch cycles until the stop token is cancelled, then returns after the
    /// cycle in flight committed. Blocks: run it on a thread of its own.
    pub fn run(mut self) -> Result<Arc<Metrics>, PipelineError> {
        self.subscribe()?;
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms);
        while !self.stop.is_cancelled() {
            self.refresh()?;
            if !self.hand_to_sinks() {
                // Committed results the sinks did not take: nothing new is
                // consumed until they do (the commit waits for them too).
                self.wait_paused(backoff, &mut Vec::new());
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            let gathering = Instant::now();
            let mut gathered = self.gather();
            tracing::trace!(
                events = gathered.len(),
                gather_ms = gathering.elapsed().as_millis() as u64,
                "gathered"
            );
            if gathered.is_empty() {
                self.idle()?;
                continue;
            }
            loop {
                match self.cycle(&gathered) {
                    Ok(()) => {
                        backoff = Duration::from_millis(self.config.retry_backoff_ms);
                        break;
                    }
                    Err(err) => {
                        self.metrics.failed_cycles.fetch_add(1, Ordering::Relaxed);
                        self.abort(&err)?;
                        if self.stop.is_cancelled() {
                            tracing::warn!(error = %err, "stopping with a cycle that could not commit; its events will be consumed again");
                            self.finish();
                            self.consumer.unsubscribe();
                            return Ok(self.metrics);
                        }
                        tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "batch cycle failed; retrying");
                        self.wait_paused(backoff, &mut gathered);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        if gathered.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        self.finish();
        self.consumer.unsubscribe();
        tracing::info!("pipeline stopped after committing its last cycle");
        Ok(self.metrics)
    }

    /// Hands the committed batches to every sink; false (logged, counted) when a
    /// sink failed, and they are handed again at the next turn.
    fn hand_to_sinks(&mut self) -> bool {
        if self.unsunk.is_empty() {
            return true;
        }
        for sink in &mut self.sinks {
            if let Err(err) = sink.write(&self.unsunk).and_then(|()| sink.tick()) {
                self.metrics.sink_failures.fetch_add(1, Ordering::Relaxed);
                self.metrics.failed_cycles.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "a sink did not take committed results; handing them again");
                return false;
            }
        }
        self.unsunk.clear();
        true
    }

    /// No events came: lets the sinks make durable what is due by time, and commits
    /// what that allows. A failure is retried at the next turn; nothing is lost.
    /// A fatal Kafka error (this producer was fenced) stops the pipeline.
    fn idle(&mut self) -> Result<(), PipelineError> {
        for sink in &mut self.sinks {
            if let Err(err) = sink.tick() {
                self.metrics.failed_cycles.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "sink could not make held events durable; retrying");
                return Ok(());
            }
        }
        if let Err(err) = self.commit_positions(&[], &[]) {
            self.metrics.failed_cycles.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "committing offsets failed; retrying");
            self.abort(&err)?;
        }
        Ok(())
    }

    /// Stopping: the sinks make everything durable and the offsets are committed.
    fn finish(&mut self) {
        if !self.hand_to_sinks() {
            tracing::warn!(
                "stopping with results the sinks did not take; they will be replayed to them from the journal"
            );
        }
        for sink in &mut self.sinks {
            if let Err(err) = sink.flush() {
                tracing::warn!(error = %err, "sink could not flush at stop; its events will be consumed again");
                return;
            }
        }
        if let Err(err) = self.commit_positions(&[], &[]) {
            tracing::warn!(error = %err, "committing the last offsets failed; their events will be consumed again");
            if let Err(fatal) = self.abort(&err) {
                tracing::warn!(error = %fatal, "stopping without a usable producer");
            }
        }
    }

    /// Learns where the given partitions stand from their committed offsets, for those
    /// not known yet (newly assigned).
    fn learn_positions(&mut self, partitions: &[(&str, i32)]) -> Result<(), CycleError> {
        let mut missing = TopicPartitionList::new();
        for &(topic, partition) in partitions {
            if !self.positions.contains_key(&(topic.to_owned(), partition)) {
                missing.add_partition(topic, partition);
            }
        }
        if missing.count() == 0 {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        let committed = self
            .consumer
            .committed_offsets(missing, timeout)
            .map_err(CycleError::kafka("reading committed offsets"))?;
        for element in committed.elements() {
            element
                .error()
                .map_err(CycleError::kafka("reading a committed offset"))?;
            let committed = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let mut position = Position::from_commit(committed, element.metadata());
            let tp = (element.topic().to_owned(), element.partition());
            self.placements.forget(&tp);
            if position.replays() {
                self.replay(&tp, &mut position)?;
            }
            self.positions.insert(tp, position);
        }
        Ok(())
    }

    /// Gives the sinks the results of what `position` says was produced but is
    /// not committed, read back from the journal (see `journal.rs`): the plugins
    /// do not run again, so the sinks get exactly what the outputs, dead letters
    /// and counters already say. A range the journal no longer has is logged and
    /// counted, and passed over.
    fn replay(&mut self, tp: &(String, i32), position: &mut Position) -> Result<(), CycleError> {
        let from = position.committed.unwrap_or(0);
        let until = position.produced;
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        let replay = journal::read(
            &self.journal_reader,
            &self.config.journal_topic,
            (&tp.0, tp.1),
            (from, until),
            position.journal,
            timeout,
        )
        .map_err(CycleError::kafka("reading the journal back"))?;
        let events: usize = replay
            .batches
            .iter()
            .flat_map(|b| &b.scenarios)
            .map(|s| s.events.len())
            .sum();
        if let Some(missing) = replay.missing_from {
            tracing::error!(
                topic = %tp.0,
                partition = tp.1,
                from = missing,
                until,
                journal = ?position.journal,
                "the journal no longer has the results of this range (retention, or committed before \
                 the journal): the sinks miss its events; outputs and dead letters have them"
            );
            self.metrics
                .replay_missing
                .fetch_add((until - missing).max(0) as u64, Ordering::Relaxed);
        }
        tracing::info!(
            topic = %tp.0,
            partition = tp.1,
            from,
            until,
            events,
            "results replayed to the sinks from the journal: their outputs were produced before"
        );
        for sink in &mut self.sinks {
            sink.write(&replay.batches).map_err(CycleError::Sink)?;
        }
        for placed in replay.placed {
            self.placements.note(tp, placed);
        }
        self.metrics
            .replayed
            .fetch_add(events as u64, Ordering::Relaxed);
        position.handed = Some(until);
        Ok(())
    }

    /// The offset each partition may commit: no further than what went through
    /// a cycle, and below the first event a sink still holds or has not been
    /// handed yet (`fresh`: the batches of the cycle committing now, handed to
    /// the sinks only once it committed). The partitions of the cycle (`done`:
    /// topic, partition, last offset) advance what was handled and produced.
    /// Sends what changed to the open transaction and commits it, or, when
    /// `done` is empty, to a transaction of its own; notes the new positions
    /// once committed. A commit below the produced mark points at the journal
    /// records a replay needs.
    fn commit_positions(
        &mut self,
        done: &[(String, i32, i64)],
        fresh: &[PartitionBatch],
    ) -> Result<(), CycleError> {
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        let own = done.is_empty();
        if !own {
            // The journal records' places go into this commit's metadata.
            self.await_deliveries(timeout)?;
            self.note_journal_deliveries()?;
        }
        let mut offsets = TopicPartitionList::new();
        let mut updates = Vec::new();
        for (tp, position) in &self.positions {
            let last = done
                .iter()
                .find(|(t, p, _)| t == &tp.0 && *p == tp.1)
                .map(|&(_, _, last)| last);
            let unsunk = self
                .unsunk
                .iter()
                .chain(fresh)
                .filter(|b| b.topic == tp.0 && b.partition == tp.1)
                .map(|b| b.first_offset);
            let held = self
                .sinks
                .iter()
                .filter_map(|sink| sink.pending_from(&tp.0, tp.1))
                .chain(unsunk)
                .min();
            let Some((commit, produced, after)) = position.commit(last, held) else {
                continue;
            };
            let journal = (commit < produced)
                .then(|| self.placements.from(tp, commit))
                .flatten();
            let mut element = offsets.add_partition(&tp.0, tp.1);
            element
                .set_offset(Offset::Offset(commit))
                .map_err(CycleError::kafka("listing offsets"))?;
            element.set_metadata(offsets::metadata(produced, journal));
            updates.push((tp.clone(), after));
        }
        if own && offsets.count() == 0 {
            return Ok(());
        }
        if own {
            self.producer
                .begin_transaction()
                .map_err(CycleError::kafka("beginning a transaction"))?;
        }
        let started = Instant::now();
        if offsets.count() > 0 {
            let group = self
                .consumer
                .group_metadata()
                .ok_or(CycleError::NoGroupMetadata)?;
            self.producer
                .send_offsets_to_transaction(&offsets, &group, timeout)
                .map_err(CycleError::kafka("sending offsets to the transaction"))?;
        }
        let sent = started.elapsed();
        self.producer
            .commit_transaction(timeout)
            .map_err(CycleError::kafka("committing the transaction"))?;
        tracing::trace!(
            offsets_ms = sent.as_millis() as u64,
            commit_ms = (started.elapsed() - sent).as_millis() as u64,
            "transaction committed"
        );
        if own {
            tracing::debug!(
                partitions = updates.len(),
                "offsets committed after sinks made held events durable"
            );
        }
        for (tp, position) in &updates {
            if let Some(commit) = position.committed {
                self.placements.committed(tp, commit);
            }
        }
        self.positions.extend(updates);
        Ok(())
    }

    /// Notes where the journal records of the open transaction were written,
    /// once all were delivered. A record the producer did not deliver fails
    /// the cycle (the transaction cannot commit either).
    fn note_journal_deliveries(&mut self) -> Result<(), CycleError> {
        for (tag, tp, last) in std::mem::take(&mut self.journal_sent) {
            let at = self
                .producer
                .context()
                .take(tag)
                .ok_or(CycleError::JournalUndelivered)?;
            self.placements.note(&tp, Placed { last, at });
        }
        Ok(())
    }

    /// Polls until the batch is full or the linger time passed.
    fn gather(&mut self) -> Vec<OwnedMessage> {
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let started = Instant::now();
        let mut messages = Vec::new();
        while messages.len() < self.config.batch_max_events && !self.stop.is_cancelled() {
            let left = linger.saturating_sub(started.elapsed());
            if left.is_zero() && !messages.is_empty() {
                break;
            }
            let wait = if messages.is_empty() {
                Duration::from_millis(100)
            } else {
                left
            };
            if !self.poll_into(wait, &mut messages)
                && messages.is_empty()
                && started.elapsed() >= linger
            {
                break;
            }
        }
        messages
    }

    /// Polls once, appending what arrives to `messages`; false when nothing came.
    ///
    /// A rebalance runs inside `poll`. Events of a revoked partition gathered before
    /// it are dropped (they are uncommitted: whoever owns the partition next reads
    /// them again from the committed offset), but what arrives after it is kept, even
    /// for the same partition assigned back: the consumer has already moved past it.
    fn poll_into(&mut self, wait: Duration, messages: &mut Vec<OwnedMessage>) -> bool {
        let polled = self.consumer.poll(wait);
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .expect("revoked lock"),
        );
        if !revoked.is_empty() {
            let before = messages.len();
            messages.retain(|m| !revoked.contains(&(m.topic().to_owned(), m.partition())));
            tracing::info!(
                dropped = before - messages.len(),
                "gathered events of revoked partitions dropped"
            );
            let revoked: Vec<(String, i32)> = revoked.into_iter().collect();
            self.metrics
                .revoked_partitions
                .fetch_add(revoked.len() as u64, Ordering::Relaxed);
            for tp in &revoked {
                self.positions.remove(tp);
                self.placements.forget(tp);
            }
            // Committed but not handed to the sinks: the next owner replays them
            // from the journal.
            self.unsunk
                .retain(|b| !revoked.contains(&(b.topic.clone(), b.partition)));
            for sink in &mut self.sinks {
                sink.revoked(&revoked);
            }
        }
        match polled {
            Some(Ok(message)) => {
                messages.push(message.detach());
                true
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "consumer error");
                false
            }
            None => false,
        }
    }

    /// Waits with consumption paused, serving rebalances; events of the kept batch
    /// whose partitions are revoked meanwhile are dropped from it.
    fn wait_paused(&mut self, wait: Duration, gathered: &mut Vec<OwnedMessage>) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stop.is_cancelled() {
            // Paused partitions deliver nothing; a partition assigned by a rebalance
            // meanwhile is paused on the next turn, and anything it delivered first
            // joins the batch rather than being skipped.
            let assignment = self.consumer.assignment().unwrap_or_default();
            let _ = self.consumer.pause(&assignment);
            self.poll_into(Duration::from_millis(50), gathered);
        }
        let assignment = self.consumer.assignment().unwrap_or_default();
        let _ = self.consumer.resume(&assignment);
    }

    /// Ends a failed cycle's transaction. A producer that can no longer be used
    /// (fenced, its transaction aborted by the broker, an abort answering a
    /// conflict) is made again and the cycle retried; see [`Pipeline::recreate`].
    fn abort(&mut self, err: &CycleError) -> Result<(), PipelineError> {
        self.journal_sent.clear();
        self.producer.context().clear();
        if let CycleError::Kafka { source, .. } = err
            && let KafkaError::Transaction(txn) = source
            && txn.is_fatal()
        {
            return self.recreate(source);
        }
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        match self.producer.abort_transaction(timeout) {
            Ok(()) => Ok(()),
            // Nothing was begun, or the commit already failed and ended it.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => Ok(()),
            Err(KafkaError::Transaction(txn))
                if txn.is_fatal() || txn.code() == RDKafkaErrorCode::Conflict =>
            {
                self.recreate(&KafkaError::Transaction(txn))
            }
            Err(e) => Err(PipelineError::Kafka {
                context: "aborting a transaction",
                source: e,
            }),
        }
    }

    /// Replaces a producer that hit a fatal error with a new one under the same
    /// transactional id: nothing of the failed cycle was committed, so its retry
    /// loses and doubles nothing. Partitions' positions are read again from the
    /// committed offsets. Fenced more than [`MAX_RECREATIONS`] times in
    /// [`RECREATION_WINDOW`], the pipeline stops: another live process runs
    /// under this replica's transactional id, and the two would fence each other
    /// for ever.
    fn recreate(&mut self, cause: &KafkaError) -> Result<(), PipelineError> {
        let id = self
            .producer_config
            .get("transactional.id")
            .unwrap_or_default()
            .to_owned();
        if !may_recreate(&mut self.recreations, Instant::now()) {
            tracing::error!(
                transactional_id = %id,
                error = %cause,
                "the producer was fenced {MAX_RECREATIONS} times in {} s: another process runs \
                 with this transactional id (give each replica its own pipeline.instance); stopping",
                RECREATION_WINDOW.as_secs()
            );
            return Err(PipelineError::Kafka {
                context: "fenced again and again by another instance of this replica",
                source: cause.clone(),
            });
        }
        tracing::warn!(
            transactional_id = %id,
            error = %cause,
            "the producer hit a fatal error (fenced, or its transaction aborted by the broker); \
             making a new one and retrying the batch"
        );
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        self.producer = transactional_producer(&self.producer_config, timeout)?;
        self.positions.clear();
        self.placements.clear();
        self.metrics
            .producer_recreations
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Routes, runs, produces and commits one batch cycle; its results go to the
    /// sinks once committed ([`Pipeline::hand_to_sinks`]).
    fn cycle(&mut self, messages: &[OwnedMessage]) -> Result<(), CycleError> {
        let catalog = self.current.clone();
        let mut by_partition: BTreeMap<(&str, i32), Vec<&OwnedMessage>> = BTreeMap::new();
        for message in messages {
            by_partition
                .entry((message.topic(), message.partition()))
                .or_default()
                .push(message);
        }
        let started = Instant::now();
        let partitions: Vec<(&str, i32)> = by_partition.keys().copied().collect();
        self.learn_positions(&partitions)?;
        self.producer
            .begin_transaction()
            .map_err(CycleError::kafka("beginning a transaction"))?;

        let processed_ms = chrono::Utc::now().timestamp_millis();
        let mut processed = Vec::with_capacity(by_partition.len());
        let mut outputs = 0u64;
        let mut dead = 0u64;
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut done = Vec::with_capacity(by_partition.len());
        let mut handled = 0u64;
        for ((topic, partition), batch) in &by_partition {
            let produced = self
                .positions
                .get(&((*topic).to_owned(), *partition))
                .map(|p| p.produced)
                .ok_or(CycleError::NoPosition)?;
            let last = batch.last().map_or(0, |m| m.offset());
            done.push(((*topic).to_owned(), *partition, last));
            // Below the mark, the results were produced before and replayed to
            // the sinks from the journal when the position was learnt.
            let fresh: Vec<&OwnedMessage> = batch
                .iter()
                .copied()
                .filter(|m| m.offset() >= produced)
                .collect();
            if fresh.is_empty() {
                continue;
            }
            handled += fresh.len() as u64;
            let (partition_batch, out, dead_letters) =
                self.run_partition(&catalog, topic, *partition, &fresh, processed_ms)?;
            outputs += out;
            for letter in &dead_letters {
                *reasons
                    .entry(letter.reason.as_str().to_owned())
                    .or_default() += 1;
            }
            dead += dead_letters.len() as u64;
            for letter in dead_letters {
                self.dead_letter(letter)?;
            }
            self.send_journal(&partition_batch)?;
            processed.push(partition_batch);
        }

        let ran = started.elapsed();
        self.commit_positions(&done, &processed)?;
        tracing::debug!(
            events = messages.len(),
            run_ms = ran.as_millis() as u64,
            commit_ms = (started.elapsed() - ran).as_millis() as u64,
            "cycle committed"
        );
        self.unsunk.extend(processed);

        self.metrics.events.fetch_add(handled, Ordering::Relaxed);
        self.metrics.outputs.fetch_add(outputs, Ordering::Relaxed);
        self.metrics.dead_letters.fetch_add(dead, Ordering::Relaxed);
        self.metrics.cycles.fetch_add(1, Ordering::Relaxed);
        if !reasons.is_empty() {
            let mut by_reason = self
                .metrics
                .dead_letters_by_reason
                .lock()
                .expect("metrics lock");
            for (reason, n) in reasons {
                *by_reason.entry(reason).or_default() += n;
            }
        }
        Ok(())
    }

    /// Sends a partition batch's journal records in the open transaction.
    fn send_journal(&mut self, batch: &PartitionBatch) -> Result<(), CycleError> {
        let key = journal::key(&batch.topic, batch.partition);
        let budget = produce::journal_budget(self.message_limit, &batch.topic);
        let tp = (batch.topic.clone(), batch.partition);
        for (index, record) in journal::encode(batch, budget).iter().enumerate() {
            // Only a batch's first record is where a replay of it starts, so
            // only its place is noted (tag 0: not noted).
            let tag = if index == 0 {
                let tag = self.next_tag;
                self.next_tag = self.next_tag.wrapping_add(1).max(1);
                self.journal_sent.push((tag, tp.clone(), batch.last_offset));
                tag
            } else {
                0
            };
            self.send(
                BaseRecord::with_opaque_to(&self.config.journal_topic, tag)
                    .key(key.as_bytes())
                    .payload(record.as_slice()),
            )?;
        }
        Ok(())
    }

    /// Runs one partition's events through their scenarios and produces the outputs.
    fn run_partition<'m>(
        &mut self,
        catalog: &'m Catalog,
        topic: &str,
        partition: i32,
        messages: &[&'m OwnedMessage],
        processed_ms: i64,
    ) -> Result<(PartitionBatch, u64, Vec<DeadLetter<'m>>), CycleError> {
        let mut dead = Vec::new();
        // Per scenario: (index into messages, member id) in offset order.
        let mut shares: BTreeMap<&'m str, Vec<(usize, Option<String>)>> = BTreeMap::new();
        let wanted: Vec<&str> = catalog.event_fields.iter().map(String::as_str).collect();
        for (index, message) in messages.iter().enumerate() {
            let value = message.payload().unwrap_or_default();
            let fields = Fields::read(value, &wanted);
            let named = fields
                .as_ref()
                .ok()
                .and_then(|f| f.text(route::SCENARIO_FIELD));
            let targets: Vec<&'m Arc<Route>> = match named.as_deref() {
                Some(id) => match catalog.routes.get(id) {
                    Some(route) => vec![route],
                    None => {
                        let (reason, error) = match catalog.broken.get(id) {
                            Some(why) => (
                                DeadLetterReason::ScenarioUnavailable,
                                format!("scenario {id} cannot run: {why}"),
                            ),
                            None => (
                                DeadLetterReason::UnknownScenario,
                                format!("no enabled scenario has id {id:?}"),
                            ),
                        };
                        dead.push(DeadLetter {
                            message,
                            scenario: None,
                            reason,
                            error,
                        });
                        continue;
                    }
                },
                None => catalog
                    .by_topic
                    .get(topic)
                    .map(|ids| ids.iter().filter_map(|id| catalog.routes.get(id)).collect())
                    .unwrap_or_default(),
            };
            if targets.is_empty() {
                let (reason, error) = match &fields {
                    Err(why) => (DeadLetterReason::MalformedJson, why.clone()),
                    Ok(_) => (
                        DeadLetterReason::Unrouted,
                        format!(
                            "no `{}` field and no scenario bound to topic {topic}",
                            route::SCENARIO_FIELD
                        ),
                    ),
                };
                dead.push(DeadLetter {
                    message,
                    scenario: None,
                    reason,
                    error,
                });
                continue;
            }
            for route in targets {
                let member_field = route.enrich_by.as_deref().unwrap_or(route::MEMBER_FIELD);
                let member = fields
                    .as_ref()
                    .ok()
                    .and_then(|f| f.text(member_field))
                    .map(|m| m.into_owned());
                shares
                    .entry(route.id.as_str())
                    .or_default()
                    .push((index, member));
            }
        }

        let mut scenarios = Vec::with_capacity(shares.len());
        let mut outputs = 0u64;
        for (id, share) in shares {
            let route = catalog.routes[id].clone();
            let mut batch = Batch::new(id, topic, partition);
            let mut events = Vec::with_capacity(share.len());
            let mut headers_buf: Vec<(String, Vec<u8>)> = Vec::new();
            for (index, member) in &share {
                let message = messages[*index];
                let raw = message.payload().unwrap_or_default();
                let enriched = match (&route.enrich_by, member) {
                    (Some(_), Some(member)) => self.enriched(catalog, raw, member)?,
                    _ => None,
                };
                headers_buf.clear();
                if let Some(headers) = message.headers() {
                    for header in headers.iter() {
                        headers_buf.push((
                            header.key.to_owned(),
                            header.value.unwrap_or_default().to_vec(),
                        ));
                    }
                }
                let headers: Vec<(&str, &[u8])> = headers_buf
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect();
                let timestamp_ms = message.timestamp().to_millis();
                batch
                    .push_event(EventInput {
                        offset: message.offset(),
                        value: enriched.as_deref().unwrap_or(raw),
                        key: message.key(),
                        timestamp_ms,
                        headers: &headers,
                    })
                    .map_err(|e| CycleError::Runtime(e.to_string()))?;
                events.push(EventMeta {
                    offset: message.offset(),
                    timestamp_ms,
                });
            }

            let (mut result, quarantined) = self.run_scenario(&route, &batch);
            self.fail_what_cannot_be_produced(&route, &share, messages, &mut result);
            for ((index, member), outcome) in share.iter().zip(result.outcomes()) {
                let message = messages[*index];
                match outcome.status {
                    Status::Emitted => {
                        for record in result.records(outcome) {
                            self.send_output(&route, message, member.as_deref(), record)?;
                            outputs += 1;
                        }
                    }
                    Status::Failed => {
                        let error = outcome.error.as_ref();
                        dead.push(DeadLetter {
                            message,
                            scenario: Some(catalog.routes[id].as_ref()),
                            reason: if quarantined {
                                DeadLetterReason::PluginQuarantined
                            } else {
                                error.map_or(DeadLetterReason::PluginError, |e| {
                                    DeadLetterReason::of_failure(e.kind)
                                })
                            },
                            error: error.map_or_else(|| "failed".to_owned(), ToString::to_string),
                        });
                    }
                    Status::Dropped => {}
                }
            }
            scenarios.push(ScenarioBatch {
                scenario: route.id.clone(),
                plugin: route.plugin_label.clone(),
                events,
                result,
            });
        }

        let first_offset = messages.first().map_or(0, |m| m.offset());
        let last_offset = messages.last().map_or(0, |m| m.offset());
        Ok((
            PartitionBatch {
                topic: topic.to_owned(),
                partition,
                first_offset,
                last_offset,
                processed_ms,
                scenarios,
            },
            outputs,
            dead,
        ))
    }

    /// Runs one scenario's batch, unless the scenario is quarantined (then every
    /// event fails with the reason, and the flag says so). An instance that cannot
    /// be made fails every event with the reason.
    fn run_scenario(&mut self, route: &Arc<Route>, batch: &Batch) -> (BatchResult, bool) {
        let id = route.id.as_str();
        let all_failed = |message: String| {
            let error = EventError {
                kind: FailureKind::Plugin,
                message,
            };
            BatchResult::all_failed(&error, batch.len())
        };
        if let Some((until, why)) = self.quarantine.get(id) {
            if Instant::now() < *until {
                let message = format!("plugin {} is set aside after: {why}", route.plugin_label);
                return (all_failed(message), true);
            }
            self.quarantine.remove(id);
            self.quarantined().remove(id);
        }
        let result = match self
            .instance(route)
            .and_then(|instance| instance.process(batch))
        {
            Ok(result) => result,
            Err(err) => {
                tracing::warn!(scenario = id, plugin = %route.plugin_label, error = %err, "scenario batch failed");
                self.instances.remove(id);
                return (
                    all_failed(format!(
                        "plugin {} could not run: {err}",
                        route.plugin_label
                    )),
                    false,
                );
            }
        };
        let cost = result.failed_call_time();
        let costly = cost >= Duration::from_millis(self.config.quarantine_after_ms);
        let error = result
            .outcomes()
            .iter()
            .rev()
            .find_map(|o| o.error.as_ref());
        if let Some(error) = error.filter(|_| costly)
            && self.config.quarantine_secs > 0
        {
            tracing::warn!(
                scenario = id,
                plugin = %route.plugin_label,
                error = %error,
                failed_calls = result.failed_calls(),
                failed_ms = cost.as_millis() as u64,
                seconds = self.config.quarantine_secs,
                "plugin failures were costly; its scenario is set aside"
            );
            let span = Duration::from_secs(self.config.quarantine_secs);
            let reason = format!(
                "{error} ({} failed calls took {} ms in one batch)",
                result.failed_calls(),
                cost.as_millis()
            );
            self.quarantine
                .insert(id.to_owned(), (Instant::now() + span, reason.clone()));
            self.metrics.quarantines.fetch_add(1, Ordering::Relaxed);
            let until_ms = chrono::Utc::now().timestamp_millis() + span.as_millis() as i64;
            self.quarantined().insert(
                id.to_owned(),
                Quarantine {
                    plugin: route.plugin_label.clone(),
                    reason,
                    until_ms,
                },
            );
        }
        (result, false)
    }

    fn quarantined(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Quarantine>> {
        self.metrics
            .quarantined
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The event with the member's attributes merged in; `None` for a member
    /// the registry does not know (or an event that is not a JSON object). A
    /// registry that cannot answer fails the cycle: an event is never run
    /// unenriched because of an outage, which its retry would then run enriched.
    fn enriched(
        &self,
        catalog: &Catalog,
        raw: &[u8],
        member: &str,
    ) -> Result<Option<Vec<u8>>, CycleError> {
        let attributes = self
            .runtime
            .block_on(catalog.member(&self.registry, member))?;
        Ok(attributes.and_then(|attributes| route::enrich(raw, &attributes).ok()))
    }

    fn instance(
        &mut self,
        route: &Arc<Route>,
    ) -> Result<&mut Instance, crate::runtime::RuntimeError> {
        if !self.instances.contains_key(&route.id) {
            let instance = route.plugin.instantiate(&route.config)?;
            self.instances
                .insert(route.id.clone(), (route.clone(), instance));
        }
        Ok(&mut self.instances.get_mut(&route.id).expect("just inserted").1)
    }

    /// Waits until every record sent is delivered. The client's own wait before a
    /// commit polls for delivery reports in steps of up to 100 ms, which the producer's
    /// polling thread has usually taken already: waiting here first, in 1 ms steps, saves
    /// those 100 ms on every commit (docs/pipeline.md, Throughput).
    fn await_deliveries(&self, timeout: Duration) -> Result<(), CycleError> {
        let started = Instant::now();
        while self.producer.in_flight_count() > 0 {
            if started.elapsed() >= timeout {
                return Err(CycleError::Kafka {
                    context: "waiting for deliveries",
                    source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), CycleError> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(CycleError::Kafka {
                        context: "producing",
                        source,
                    });
                }
            }
        }
    }

    /// Fails every emitted event one of whose records the producer would refuse
    /// for its size, or whose records together would not fit one journal record
    /// (see `produce.rs`), before any of its records is sent, so that the event
    /// goes to the dead-letter topic alone and every sink agrees.
    fn fail_what_cannot_be_produced(
        &self,
        route: &Route,
        share: &[(usize, Option<String>)],
        messages: &[&OwnedMessage],
        result: &mut BatchResult,
    ) {
        let budget = produce::journal_budget(self.message_limit, messages[0].topic());
        let too_large: Vec<(usize, String)> = share
            .iter()
            .zip(result.outcomes())
            .enumerate()
            .filter(|(_, (_, outcome))| outcome.status == Status::Emitted)
            .filter_map(|(i, ((index, member), outcome))| {
                let sizes = || result.records(outcome).map(<[u8]>::len);
                if !journal::event_fits(
                    budget,
                    messages[*index].topic(),
                    &route.id,
                    &route.plugin_label,
                    sizes(),
                ) {
                    let message = format!(
                        "the event's {} records are {} bytes together, more than one journal \
                         record holds (the producer's message.max.bytes is {})",
                        outcome.record_count(),
                        sizes().sum::<usize>(),
                        self.message_limit
                    );
                    return Some((i, message));
                }
                let offset = source_offset(messages[*index]);
                let headers = output_headers(route, messages[*index], &offset);
                let key = member.as_ref().map_or(0, String::len);
                result
                    .records(outcome)
                    .enumerate()
                    .find(|(_, record)| {
                        !produce::fits(self.message_limit, record.len(), key, &headers)
                    })
                    .map(|(k, record)| {
                        let message = format!(
                            "record {k} of the event is {} bytes, which with its key and headers \
                             passes the producer's message.max.bytes ({})",
                            record.len(),
                            self.message_limit
                        );
                        (i, message)
                    })
            })
            .collect();
        for (i, message) in too_large {
            result.fail_event(
                i,
                EventError {
                    kind: FailureKind::OutputLimit,
                    message,
                },
            );
        }
    }

    fn send_output(
        &self,
        route: &Route,
        message: &OwnedMessage,
        member: Option<&str>,
        record: &[u8],
    ) -> Result<(), CycleError> {
        let offset = source_offset(message);
        let headers = output_headers(route, message, &offset)
            .into_iter()
            .fold(OwnedHeaders::new_with_capacity(5), |headers, (k, v)| {
                headers.insert(header(k, v))
            });
        let mut out = BaseRecord::with_opaque_to(&route.output_topic, 0)
            .payload(record)
            .headers(headers);
        if let Some(member) = member {
            out = out.key(member.as_bytes());
        }
        self.send(out)
    }

    /// Produces a dead letter: the source value and key with the reason, cut to
    /// what the producer takes (see `produce.rs`). If even that is refused, a
    /// marker without the value takes its place, so the event is still
    /// accounted for, and the pipeline goes on.
    fn dead_letter(&self, letter: DeadLetter<'_>) -> Result<(), CycleError> {
        let message = letter.message;
        let (partition, offset) = (
            message.partition().to_string(),
            message.offset().to_string(),
        );
        let mut named: Vec<(&str, &str)> = vec![
            (HEADER_REASON, letter.reason.as_str()),
            (HEADER_ERROR, &letter.error),
            (HEADER_SOURCE_TOPIC, message.topic()),
            (HEADER_SOURCE_PARTITION, &partition),
            (HEADER_SOURCE_OFFSET, &offset),
        ];
        if let Some(route) = letter.scenario {
            named.extend([
                (HEADER_SCENARIO, route.id.as_str()),
                (HEADER_PLUGIN, &route.plugin_label),
                (HEADER_PLUGIN_VERSION, &route.plugin_version),
            ]);
        }
        let value = message.payload().unwrap_or_default();
        let key = message.key();
        let (value_size, key_size) = (
            value.len().to_string(),
            key.map_or(0, <[u8]>::len).to_string(),
        );
        let (kept, keep_key) = produce::dead_letter_parts(
            self.message_limit,
            value.len(),
            key.map_or(0, <[u8]>::len),
            &named,
        );
        if kept < value.len() {
            named.push((produce::HEADER_VALUE_SIZE, &value_size));
        }
        if key.is_some() && !keep_key {
            named.push((produce::HEADER_KEY_SIZE, &key_size));
        }
        let headers = |named: &[(&str, &str)]| {
            named.iter().fold(
                OwnedHeaders::new_with_capacity(named.len()),
                |headers, &(k, v)| headers.insert(header(k, v)),
            )
        };
        let mut out = BaseRecord::with_opaque_to(&self.config.dlq_topic, 0)
            .payload(&value[..kept])
            .headers(headers(&named));
        if let Some(key) = key.filter(|_| keep_key) {
            out = out.key(key);
        }
        match self.send(out) {
            Err(CycleError::Kafka {
                source: KafkaError::MessageProduction(code),
                ..
            }) if code != RDKafkaErrorCode::QueueFull => {
                tracing::error!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %code,
                    "the dead letter was refused by the producer; a marker without its value takes its place"
                );
                self.metrics
                    .unproducible_dead_letters
                    .fetch_add(1, Ordering::Relaxed);
                let refused = format!(
                    "{}; the dead letter itself was refused: {code}",
                    letter.error
                );
                let marker: Vec<(&str, &str)> = named
                    .iter()
                    .map(|&(k, v)| {
                        if k == HEADER_ERROR {
                            (k, refused.as_str())
                        } else {
                            (k, v)
                        }
                    })
                    .collect();
                self.send(
                    BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.config.dlq_topic, 0)
                        .headers(headers(&marker)),
                )
            }
            other => other,
        }
    }
}

/// `partition:offset` of a source message, as the output header gives it.
fn source_offset(message: &OwnedMessage) -> String {
    format!("{}:{}", message.partition(), message.offset())
}

/// The headers of an output record (see docs/pipeline.md, Headers).
fn output_headers<'a>(
    route: &'a Route,
    message: &'a OwnedMessage,
    source_offset: &'a str,
) -> [(&'a str, &'a str); 5] {
    [
        (HEADER_SCENARIO, route.id.as_str()),
        (HEADER_PLUGIN, route.plugin_label.as_str()),
        (HEADER_PLUGIN_VERSION, route.plugin_version.as_str()),
        (HEADER_SOURCE_TOPIC, message.topic()),
        (HEADER_SOURCE_OFFSET, source_offset),
    ]
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// Makes `topic` with `partitions` partitions (the broker's default
/// replication and retention) unless it exists. A failure is only logged:
/// the broker may create topics itself, and if not, producing to it fails
/// each cycle with the broker's reason.
async fn ensure_topic(common: &ClientConfig, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = match common.create() {
        Ok(admin) => admin,
        Err(err) => {
            tracing::warn!(topic, error = %err, "no admin client to make the topic");
            return;
        }
    };
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let made = tokio::time::timeout(
        Duration::from_secs(20),
        admin.create_topics([&new], &options),
    )
    .await;
    let Ok(made) = made else {
        tracing::warn!(topic, "making the topic took over 20 s; going on without");
        return;
    };
    match made {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) => tracing::info!(topic, partitions, "topic made"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => {
                        tracing::warn!(topic, error = %code, "the topic could not be made")
                    }
                }
            }
        }
        Err(err) => tracing::warn!(topic, error = %err, "the topic could not be made"),
    }
}

/// The machine's host name, the default replica name.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "weir".to_owned())
}

/// Why a batch cycle failed; the cycle is aborted and run again.
#[derive(Debug, thiserror::Error)]
enum CycleError {
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: &'static str,
        source: KafkaError,
    },
    #[error(transparent)]
    Sink(sink::SinkError),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error("the consumer has no group metadata yet")]
    NoGroupMetadata,
    #[error("the committed offset of a partition could not be read")]
    NoPosition,
    #[error("a journal record was not delivered")]
    JournalUndelivered,
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
}

impl CycleError {
    fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> CycleError {
        move |source| CycleError::Kafka { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_is_recreated_a_few_times_in_a_window_then_not() {
        let start = Instant::now();
        let mut history = VecDeque::new();
        for i in 0..MAX_RECREATIONS as u64 {
            assert!(may_recreate(&mut history, start + Duration::from_secs(i)));
        }
        // One more inside the window: another process keeps fencing this one.
        assert!(!may_recreate(&mut history, start + Duration::from_secs(10)));
        // Once the first fell out of the window, one more is allowed.
        assert!(may_recreate(&mut history, start + RECREATION_WINDOW));
        assert!(!may_recreate(
            &mut history,
            start + RECREATION_WINDOW + Duration::from_millis(500)
        ));
    }
}
