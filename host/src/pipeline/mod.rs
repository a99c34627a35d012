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
//!    (`journal.rs`); then the consumed offsets are sent to the transaction and it
//!    commits. If anything fails, the transaction aborts and the same events run again
//!    after a backoff (consumption paused meanwhile), so nothing is lost and, for
//!    `read_committed` readers, nothing is doubled.
//! 6. **Sinks**: only once it committed does every [`sink::Sink`] take the cycle's
//!    results, on a thread of their own ([`sink::SinkThread`]) while the pipeline
//!    thread gathers and runs the next cycle; they are back before that cycle commits,
//!    and a rebalance waits for them. A sink that fails gets the same results again
//!    (on the pipeline thread, consumption paused, after a backoff); it never sees an
//!    attempt that Kafka did not keep. At most two cycles are in Kafka and not in a
//!    failing sink: the one it failed to take and the one that ran beside it.
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
//!
//! The files follow the data path: `consume.rs` (the consumer, rebalances,
//! gathering, learning positions and replaying), [`route`] (a pure function from
//! events and scenarios to shares and dead letters), `run.rs` (instances,
//! enrichment, quarantine), [`produce`] (outputs, dead letters, journal records,
//! size rules), `journal.rs`, `offsets.rs` (the commit arithmetic) and `config.rs`.
//! This file keeps the cycle itself and the commit.

pub mod canary;
pub mod catalog;
mod config;
mod consume;
mod journal;
mod offsets;
pub mod produce;
pub mod route;
mod run;
pub mod shadow;
pub mod sink;
mod stats;
mod txn;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::runtime::{Batch, EventInput, Instance, Status};
use crate::telemetry::Telemetry;
use catalog::{Catalog, Route};
use consume::Context;
use journal::{Deliveries, Placed, Placements};
use offsets::Position;
use produce::DeadLetter;
use route::DeadLetterReason;
use sink::{EventMeta, PartitionBatch, Recount, ScenarioBatch, Sink, SinkError};

pub use config::PipelineConfig;
pub use offsets::PRODUCED_METADATA;
pub use produce::{
    HEADER_ERROR, HEADER_PLUGIN, HEADER_PLUGIN_VERSION, HEADER_REASON, HEADER_SCENARIO,
    HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};
pub use run::Quarantine;
pub use stats::{ERROR_BYTES, KafkaSeen, Metrics, RecentDeadLetter, SinkFailing, cut};

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
    /// The sinks' thread could not be started.
    #[error("starting the sinks' thread: {0}")]
    Thread(std::io::Error),
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    move |source| PipelineError::Kafka { context, source }
}

/// The running pipeline. Build it with [`Pipeline::new`], then call [`Pipeline::run`]
/// on a thread of its own (it blocks).
pub struct Pipeline {
    config: PipelineConfig,
    consumer: BaseConsumer<Context>,
    producer: Arc<ThreadedProducer<Deliveries>>,
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
    /// The sinks' last hand failed: they are handed again, on this thread,
    /// before anything new is consumed.
    sinks_failing: bool,
    registry: Registry,
    catalog: watch::Receiver<Arc<Catalog>>,
    current: Arc<Catalog>,
    subscribed: Vec<String>,
    instances: HashMap<String, (Arc<Route>, Instance)>,
    /// The shadow candidates' instances.
    shadow_instances: run::CandidateInstances,
    /// Shadow candidates set aside after costly failures, until when.
    shadow_paused: HashMap<String, Instant>,
    /// The canaries' instances.
    canary_instances: run::CandidateInstances,
    /// Canaries this replica decided on, by scenario id: the candidate's
    /// label and the verdict, acted on here from the next batch on.
    canary_decided: HashMap<String, (String, canary::Verdict)>,
    /// Scenarios set aside until a time, with the failure that caused it.
    quarantine: HashMap<String, (Instant, String)>,
    sinks: Vec<Box<dyn Sink>>,
    /// Where the sinks take a cycle's results while the next cycle runs.
    sink_thread: sink::SinkThread,
    /// The sinks and the unsunk batches are on the sinks' thread.
    away: bool,
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
    /// Time the cycle in progress spent routing, in plugins and producing.
    stages: Stages,
    /// Events polled while waiting for the sinks, for the next batch.
    carried: Vec<OwnedMessage>,
}

/// Time one cycle spent in the stages inside its run.
#[derive(Debug, Default)]
struct Stages {
    route: Duration,
    plugin: Duration,
}

/// What a cycle's run made, before its commit.
#[derive(Default)]
struct Ran {
    processed: Vec<PartitionBatch>,
    outputs: u64,
    dead: u64,
    reasons: BTreeMap<String, u64>,
    scenario_reasons: BTreeMap<(String, &'static str), u64>,
    recent: Vec<stats::RecentDeadLetter>,
    /// Per partition: topic, partition, the last offset the cycle saw.
    done: Vec<(String, i32, i64)>,
    handled: u64,
}

/// A fatal producer error is survived this many times within
/// [`RECREATION_WINDOW`]; one more means another live process shares this
/// replica's transactional id, and this one stops.
const MAX_RECREATIONS: usize = 3;
/// Most recounts one write to a sink may ask for before it fails as it is (one
/// per partition the sink lost; what is left is recounted at the next turn).
const MAX_RECOUNTS: usize = 1_000;
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

/// Whether making a transactional producer failed for a reason that may pass
/// (a timeout, the coordinator moving), rather than for its settings or its
/// rights.
fn retriable(err: &PipelineError) -> bool {
    match err {
        PipelineError::Kafka {
            source: KafkaError::Transaction(txn),
            ..
        } => txn.is_retriable() || txn.code() == RDKafkaErrorCode::OperationTimedOut,
        PipelineError::Kafka { source, .. } => {
            source.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut)
        }
        _ => false,
    }
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
        telemetry: Telemetry,
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
        let metrics = Arc::new(Metrics::new(telemetry));
        let sinks_busy = sink::SinksBusy::default();
        let mut consumer_config = common.clone();
        if !config.kafka.contains_key("fetch.queue.backoff.ms") {
            // The consumer fetches ahead into a local queue; when that queue is over its
            // threshold the client waits this long before fetching again (default 1 s).
            // Drained in bursts between batches, the queue ran dry for hundreds of
            // milliseconds at a time with the default (docs/pipeline.md, Throughput).
            consumer_config.set("fetch.queue.backoff.ms", "10");
        }
        if !config.kafka.contains_key("statistics.interval.ms") {
            // The consumer's statistics give each partition's lag (`weir_consumer_lag`).
            consumer_config.set("statistics.interval.ms", "5000");
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
            .create_with_context(Context::new(
                metrics.clone(),
                Duration::from_millis(config.call_timeout_ms),
                sinks_busy.clone(),
            ))
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
        // A blocking metadata call (up to 10 s): not on an async worker.
        let (journal_reader, known) = {
            let topic = config.journal_topic.clone();
            tokio::task::spawn_blocking(move || {
                let known = journal_reader
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .is_ok_and(|metadata| {
                        metadata
                            .topics()
                            .iter()
                            .any(|t| t.name() == topic && t.error().is_none())
                    });
                (journal_reader, known)
            })
        }
        .await
        .expect("journal metadata thread");
        if !known {
            ensure_topic(&common, &config.journal_topic, config.journal_partitions).await;
        }
        let instance = config.instance.clone().unwrap_or_else(host_name);
        let transactional_id = format!(
            "{}-{}-{instance}",
            config.transactional_id_prefix, config.group_id
        );
        let mut producer_config = common.clone();
        // Batching and compression are weir's choice unless `[pipeline.kafka]`
        // makes its own (docs/performance.md has what each measured).
        for (key, value) in [("linger.ms", "5"), ("compression.type", "lz4")] {
            if !config.kafka.contains_key(key) {
                producer_config.set(key, value);
            }
        }
        producer_config
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
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
        let producer = Arc::new(producer);
        *consumer.context().producer.lock().expect("producer lock") = Some(producer.clone());

        let first = Arc::new(Catalog::load(&registry).await?);
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
            sinks_failing: false,
            producer_config,
            recreations: VecDeque::new(),
            stages: Stages::default(),
            carried: Vec::new(),
            message_limit,
            config,
            consumer,
            producer,
            registry,
            catalog: receiver,
            current: first,
            subscribed: Vec::new(),
            instances: HashMap::new(),
            shadow_instances: HashMap::new(),
            shadow_paused: HashMap::new(),
            canary_instances: HashMap::new(),
            canary_decided: HashMap::new(),
            quarantine: HashMap::new(),
            sinks,
            sink_thread: sink::SinkThread::start(sinks_busy).map_err(PipelineError::Thread)?,
            away: false,
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
            self.shadow_instances.retain(|id, (sha, config, _)| {
                routes.get(id).is_some_and(|now| {
                    matches!(&now.shadow, Some(Ok(s)) if s.plugin.info().sha256 == *sha)
                        && now.config == *config
                })
            });
            let canary_label = |id: &str| {
                routes
                    .get(id)
                    .and_then(|now| now.canary.as_ref())
                    .and_then(|c| c.route.as_ref().ok())
                    .map(|c| (c.plugin.info().sha256.clone(), c.plugin_label.clone()))
            };
            self.canary_instances.retain(|id, (sha, config, _)| {
                canary_label(id).is_some_and(|(now, _)| now == *sha)
                    && routes.get(id).is_some_and(|now| now.config == *config)
            });
            self.canary_decided
                .retain(|id, (label, _)| canary_label(id).is_some_and(|(_, now)| now == *label));
            // Figures of a candidate (or a plugin) that changed start afresh;
            // a canary's stay after its rollback, until the plugin changes or
            // the canary is tried again (its document no longer rolled back,
            // while this replica holds no verdict on it), and after its
            // promotion, while the promoted plugin runs and no other canary
            // is tried, so an operator still sees why the plugin changed.
            let decided = &self.canary_decided;
            self.metrics
                .canaries
                .lock()
                .expect("metrics lock")
                .retain(|id, stats| {
                    let tried_again = canary_label(id).is_some()
                        && matches!(stats.verdict, Some(canary::Verdict::RolledBack(_)))
                        && !decided.contains_key(id);
                    let now_plugin = routes.get(id).map(|now| &now.plugin_label);
                    let running_promoted =
                        matches!(stats.verdict, Some(canary::Verdict::Promoted(_)))
                            && now_plugin == Some(&stats.candidate)
                            && canary_label(id).is_none();
                    running_promoted
                        || (now_plugin == Some(&stats.current)
                            && canary_label(id).is_none_or(|(_, now)| now == stats.candidate)
                            && !tried_again)
                });
            self.metrics
                .shadows
                .lock()
                .expect("metrics lock")
                .retain(|id, stats| {
                    routes.get(id).is_some_and(|now| {
                        now.plugin_label == stats.current
                            && matches!(&now.shadow, Some(Ok(s)) if s.label == stats.candidate)
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
        let mut failures_in_a_row = 0u32;
        while !self.stop.is_cancelled() {
            self.metrics.note_turn();
            self.refresh()?;
            // Normally the sinks take a cycle's results on the other core while
            // the next cycle runs (see `Pipeline::cycle`); after a failure they
            // take them here, first.
            if self.sinks_failing && !self.hand_to_sinks() {
                // Committed results the sinks did not take: nothing new is
                // consumed until they do (the commit waits for them too). What a
                // partition assigned meanwhile delivers before it is paused is
                // kept for the next batch: the consumer has moved past it.
                let mut carried = std::mem::take(&mut self.carried);
                self.wait_paused(backoff, &mut carried);
                self.carried = carried;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            let gathering = Instant::now();
            let mut gathered = self.gather();
            if !gathered.is_empty() {
                self.stage_time("gather", gathering.elapsed());
            }
            tracing::trace!(
                events = gathered.len(),
                gather_ms = gathering.elapsed().as_millis() as u64,
                "gathered"
            );
            // A commit of revoked partitions inside that poll hung: its
            // producer is not used again (its open transaction would hold
            // back the partitions' next owner until the broker aborts it).
            if self
                .consumer
                .context()
                .producer_hung
                .swap(false, Ordering::Relaxed)
            {
                tracing::warn!("committing revoked partitions hung; making the producer again");
                self.remake_producer()?;
            }
            if gathered.is_empty() {
                self.idle()?;
                continue;
            }
            loop {
                match self.cycle(&gathered) {
                    Ok(()) => {
                        backoff = Duration::from_millis(self.config.retry_backoff_ms);
                        if failures_in_a_row > 0 {
                            tracing::warn!(
                                failures = failures_in_a_row,
                                "batch cycles commit again"
                            );
                            failures_in_a_row = 0;
                        }
                        break;
                    }
                    Err(err) => {
                        failures_in_a_row += 1;
                        if !matches!(err, CycleError::SinksBehind) {
                            self.metrics.failed_cycles.fetch_add(1, Ordering::Relaxed);
                        }
                        self.abort(&err)?;
                        if self.stop.is_cancelled() {
                            tracing::warn!(error = %err, "stopping with a cycle that could not commit; its events will be consumed again");
                            self.finish();
                            self.consumer.unsubscribe();
                            return Ok(self.metrics);
                        }
                        // The first failure of a streak is said; the retries
                        // of the same outage are not (`failed_cycles` counts them).
                        if failures_in_a_row == 1 {
                            tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "batch cycle failed; retrying until it commits");
                        } else {
                            tracing::debug!(error = %err, failures = failures_in_a_row, "batch cycle failed again");
                        }
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

    /// Hands the committed batches to every sink on this thread; false (logged,
    /// counted) when a sink failed, and they are handed again at the next turn.
    fn hand_to_sinks(&mut self) -> bool {
        self.sinks_home();
        if self.unsunk.is_empty() {
            self.sinks_failing = false;
            return true;
        }
        let unsunk = std::mem::take(&mut self.unsunk);
        let started = Instant::now();
        if !self.hand_from(0, unsunk) {
            return false;
        }
        self.stage_time("sinks", started.elapsed());
        self.note_ready();
        true
    }

    /// Sends the committed batches to the sinks' thread, which hands them to
    /// the sinks while the next cycle gathers and runs on this one; the sinks
    /// are away until [`Pipeline::sinks_home`]. After a failure, they stay
    /// here: the next turn hands them on this thread first.
    fn sinks_away(&mut self) {
        if self.away || self.sinks_failing || self.unsunk.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut self.unsunk);
        self.sink_thread
            .hand(std::mem::take(&mut self.sinks), batches);
        self.away = true;
    }

    /// Waits until the sinks' thread is done with what
    /// [`Pipeline::sinks_away`] sent, and takes the sinks back. Everything that
    /// reads the sinks or the unsunk batches calls it first.
    pub(super) fn sinks_home(&mut self) {
        if !self.away {
            return;
        }
        let waiting = Instant::now();
        let (sinks, handed, sunk) = self.sink_thread.back();
        self.away = false;
        self.stage_time("sinks_wait", waiting.elapsed());
        self.sinks = sinks;
        self.sinks_back(handed, sunk);
    }

    /// Hands `batches` to the sinks from `first` on, on this thread, recounting
    /// what they ask for; on a failure, `batches` go back to the unsunk ones.
    fn hand_from(&mut self, first: usize, batches: Vec<PartitionBatch>) -> bool {
        for index in first..self.sinks.len() {
            if let Err(err) = self
                .write_sink(index, &batches)
                .and_then(|()| self.tick_sink(index))
            {
                self.sink_failed(index, &err, batches);
                return false;
            }
            self.sink_took(index);
        }
        self.sinks_failing = false;
        self.note_sink_counts();
        true
    }

    /// Sink `index` took what it was handed: a sink that failed before says so.
    fn sink_took(&self, index: usize) {
        let name = self.sinks[index].name();
        if self.metrics.note_sink(name, None) {
            tracing::warn!(sink = name, "the sink takes results again");
        }
    }

    /// Sink `index` did not take `batches` (`err`): they go back before the
    /// unsunk ones, to be handed again.
    fn sink_failed(&mut self, index: usize, err: &SinkError, mut batches: Vec<PartitionBatch>) {
        batches.append(&mut self.unsunk);
        self.unsunk = batches;
        self.sinks_failing = true;
        let name = self.sinks[index].name();
        self.metrics.sink_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.failed_cycles.fetch_add(1, Ordering::Relaxed);
        if self.metrics.note_sink(name, Some(err.to_string())) {
            tracing::warn!(sink = name, error = %err, "a sink did not take committed results; handing them again until it does");
        } else {
            tracing::debug!(sink = name, error = %err, "a sink still fails");
        }
        self.note_sink_counts();
    }

    /// What the sinks did with batches handed to them on their thread
    /// ([`sink::SinkThread`]): what one of them asked to recount, and the sinks
    /// after it, are handed here; a failure is noted as on this thread.
    fn sinks_back(
        &mut self,
        batches: Vec<PartitionBatch>,
        result: Result<Duration, (usize, SinkError)>,
    ) {
        match result {
            Ok(took) => {
                for index in 0..self.sinks.len() {
                    self.sink_took(index);
                }
                self.sinks_failing = false;
                self.stage_time("sinks", took);
                self.note_sink_counts();
            }
            Err((index, err)) => {
                for earlier in 0..index {
                    self.sink_took(earlier);
                }
                if err.recount.is_some() {
                    self.hand_from(index, batches);
                } else {
                    self.sink_failed(index, &err, batches);
                }
            }
        }
    }

    /// Writes `batches` to sink `index`. A sink that finds it lost results it
    /// had made durable (Redis restarted from a snapshot) asks for them again:
    /// they are read back from the journal and written to it alone, then
    /// `batches` again.
    fn write_sink(&mut self, index: usize, batches: &[PartitionBatch]) -> Result<(), SinkError> {
        for _ in 0..MAX_RECOUNTS {
            match self.sinks[index].write(batches) {
                Err(SinkError {
                    recount: Some(recount),
                    ..
                }) => self.recount(index, &recount)?,
                other => return other,
            }
        }
        self.sinks[index].write(batches)
    }

    /// The results of offsets `range` of `tp` read back from this group's
    /// journal, from `at` on (see `journal::read`).
    fn read_journal(
        &self,
        tp: (&str, i32),
        range: (i64, i64),
        at: Option<(i32, i64)>,
    ) -> Result<journal::Replay, KafkaError> {
        journal::read(
            &self.journal_reader,
            (&self.config.journal_topic, &self.config.group_id),
            tp,
            range,
            at,
            Duration::from_millis(self.config.call_timeout_ms),
        )
    }

    /// Ticks sink `index`; a recount it asks for is done at once.
    fn tick_sink(&mut self, index: usize) -> Result<(), SinkError> {
        match self.sinks[index].tick() {
            Err(SinkError {
                recount: Some(recount),
                ..
            }) => self.recount(index, &recount),
            other => other,
        }
    }

    /// Gives sink `index` the results of `recount`'s range again, from the
    /// journal; what the journal no longer holds, the sink notes as lost.
    fn recount(&mut self, index: usize, recount: &Recount) -> Result<(), SinkError> {
        let name = self.sinks[index].name();
        let replay = self
            .read_journal(
                (&recount.topic, recount.partition),
                (recount.from, recount.until),
                recount.journal,
            )
            .map_err(|e| SinkError::new(name, format!("reading the journal for a recount: {e}")))?;
        let events = replay.events();
        let batches = replay.placed_batches();
        self.sinks[index].recount(recount, &batches)?;
        if let Some(missing) = replay.missing_from {
            self.sinks[index].uncounted(&recount.topic, recount.partition, missing, recount.until);
        }
        tracing::warn!(
            sink = name,
            topic = %recount.topic,
            partition = recount.partition,
            from = recount.from,
            until = recount.until,
            events,
            missing_from = replay.missing_from,
            "recounted from the journal what the sink had lost"
        );
        self.metrics
            .recounted
            .fetch_add(events as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Copies the sinks' own counters and gauges into the metrics.
    fn note_sink_counts(&self) {
        let mut counts = self.metrics.sink_counts.lock().expect("metrics lock");
        let mut gauges = self.metrics.sink_gauges.lock().expect("metrics lock");
        for sink in &self.sinks {
            for count in sink.counts() {
                counts.insert(count.name, count);
            }
            gauges.extend(sink.gauges());
        }
    }

    /// Records `took` as the time of `stage` in one cycle.
    fn stage_time(&self, stage: &'static str, took: Duration) {
        self.metrics
            .telemetry
            .histogram("weir_cycle_stage_seconds", &[("stage", stage)])
            .record(took.as_secs_f64());
    }

    /// No events came: lets the sinks make durable what is due by time, and commits
    /// what that allows. A failure is retried at the next turn; nothing is lost.
    /// A fatal Kafka error (this producer was fenced) stops the pipeline.
    fn idle(&mut self) -> Result<(), PipelineError> {
        // The last cycle's results: the sinks' thread took them while this
        // turn gathered nothing (or they are handed here after a failure).
        if !self.hand_to_sinks() {
            return Ok(());
        }
        self.note_sink_counts();
        for index in 0..self.sinks.len() {
            let name = self.sinks[index].name();
            if let Err(err) = self.tick_sink(index) {
                self.metrics.failed_cycles.fetch_add(1, Ordering::Relaxed);
                if self.metrics.note_sink(name, Some(err.to_string())) {
                    tracing::warn!(sink = name, error = %err, "sink could not make held events durable; retrying until it can");
                } else {
                    tracing::debug!(sink = name, error = %err, "a sink still fails");
                }
                return Ok(());
            }
            if self.metrics.note_sink(name, None) {
                tracing::warn!(sink = name, "the sink takes results again");
            }
        }
        self.note_ready();
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
        self.sinks_home();
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        let own = done.is_empty();
        if !own {
            // The journal records' places go into this commit's metadata.
            self.await_deliveries(timeout)?;
            self.note_journal_deliveries()?;
        }
        let mut offsets = TopicPartitionList::new();
        let mut updates = Vec::new();
        for (tp, commit, metadata, after) in self.planned(done, fresh) {
            let mut element = offsets.add_partition(&tp.0, tp.1);
            element
                .set_offset(Offset::Offset(commit))
                .map_err(CycleError::kafka("listing offsets"))?;
            element.set_metadata(metadata);
            updates.push((tp, after));
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
            let producer = self.producer.clone();
            txn::bounded(
                "send_offsets_to_transaction",
                timeout,
                txn::MARGIN,
                move || producer.send_offsets_to_transaction(&offsets, &group, timeout),
            )?
            .map_err(CycleError::kafka("sending offsets to the transaction"))?;
        }
        let sent = started.elapsed();
        let producer = self.producer.clone();
        txn::bounded("commit_transaction", timeout, txn::MARGIN, move || {
            producer.commit_transaction(timeout)
        })?
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
        self.note_ready();
        Ok(())
    }

    /// What a commit after a cycle that handled `done` (see
    /// [`Pipeline::commit_positions`]) says per partition that moves: the
    /// offset, its metadata, and the position after it.
    fn planned(
        &self,
        done: &[(String, i32, i64)],
        fresh: &[PartitionBatch],
    ) -> Vec<((String, i32), i64, String, Position)> {
        debug_assert!(!self.away, "the sinks are away: call sinks_home first");
        let mut planned = Vec::new();
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
            planned.push((
                tp.clone(),
                commit,
                offsets::metadata(produced, journal),
                after,
            ));
        }
        planned
    }

    /// Tells the consumer's context what an idle turn would commit now, for it
    /// to commit as partitions are revoked.
    fn note_ready(&self) {
        let ready = self
            .planned(&[], &[])
            .into_iter()
            .map(|(tp, commit, metadata, _)| (tp, (commit, metadata)))
            .collect();
        *self.consumer.context().ready.lock().expect("ready lock") = ready;
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

    /// Ends a failed cycle's transaction. A producer that can no longer be used
    /// (fenced, its transaction aborted by the broker, an abort answering a
    /// conflict) is made again and the cycle retried; see [`Pipeline::recreate`].
    fn abort(&mut self, err: &CycleError) -> Result<(), PipelineError> {
        self.journal_sent.clear();
        self.producer.context().clear();
        let hung_here = matches!(err, CycleError::Call(call) if call.leaves_producer_unknown());
        let hung_in_revoke = self
            .consumer
            .context()
            .producer_hung
            .swap(false, Ordering::Relaxed);
        if hung_here || hung_in_revoke {
            // The stuck call holds the producer's transactional state: an
            // abort would only meet it. No rival is involved, so this is
            // not counted against MAX_RECREATIONS.
            tracing::warn!(error = %err, "a transactional call hung; making the producer again");
            return self.remake_producer();
        }
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
        self.remake_producer()
    }

    /// Makes the producer again under the same transactional id (which fences
    /// the old one and aborts its open transaction) and forgets the partitions'
    /// positions, to be read again from the committed offsets. A broker that
    /// cannot initialise transactions yet (its coordinator moving after a
    /// broker was lost) is tried again, with a growing pause, until the
    /// pipeline stops.
    fn remake_producer(&mut self) -> Result<(), PipelineError> {
        let timeout = Duration::from_millis(self.config.call_timeout_ms);
        let mut pause = Duration::from_millis(self.config.retry_backoff_ms.max(100));
        let producer = loop {
            match transactional_producer(&self.producer_config, timeout) {
                Ok(producer) => break producer,
                Err(err) if self.stop.is_cancelled() || !retriable(&err) => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = pause.as_millis() as u64, "making the producer again failed; retrying");
                    // Not polled meanwhile (what a poll would bring has no
                    // producer to go to), and the loop does not turn: /livez
                    // says so if this lasts.
                    let until = Instant::now() + pause;
                    while Instant::now() < until && !self.stop.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.producer = Arc::new(producer);
        // What the old producer's bookkeeping said was ready to commit at a
        // revocation may be behind what its last (failed, or late) commit
        // wrote: it is learnt again with the positions.
        self.consumer
            .context()
            .ready
            .lock()
            .expect("ready lock")
            .clear();
        *self
            .consumer
            .context()
            .producer
            .lock()
            .expect("producer lock") = Some(self.producer.clone());
        self.positions.clear();
        self.placements.clear();
        self.metrics
            .producer_recreations
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Routes, runs, produces and commits one batch cycle; its results go to the
    /// sinks once committed, on their thread while the next cycle runs
    /// ([`Pipeline::sinks_away`]).
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
        self.stages = Stages::default();
        let partitions: Vec<(&str, i32)> = by_partition.keys().copied().collect();
        // The sinks failed to take the cycle before the last (the last one
        // committed beside it): nothing more runs until they take both, so at
        // most two cycles' results are in Kafka and not in the sinks.
        if self.sinks_failing && !self.hand_to_sinks() {
            return Err(CycleError::SinksBehind);
        }
        self.learn_positions(&partitions)?;
        self.producer
            .begin_transaction()
            .map_err(CycleError::kafka("beginning a transaction"))?;

        let processed_ms = chrono::Utc::now().timestamp_millis();
        let ran = self.run_partitions(&catalog, &by_partition, processed_ms);
        let Ran {
            mut processed,
            outputs,
            dead,
            reasons,
            scenario_reasons,
            recent,
            done,
            handled,
        } = ran?;

        let ran = started.elapsed();
        self.stage_time("route", self.stages.route);
        self.stage_time("plugin", self.stages.plugin);
        self.stage_time(
            "produce",
            ran.saturating_sub(self.stages.route + self.stages.plugin),
        );
        // The sinks took the last cycle's results on their thread while this
        // one gathered and ran; they are back before it commits, and its
        // commit stops at what they hold, as ever.
        let waiting = Instant::now();
        self.sinks_home();
        let waited = waiting.elapsed();
        // What was committed before this cycle: every sink made everything below
        // it durable (this cycle's commit stays below its fresh batches).
        let durable_before: HashMap<(String, i32), Option<i64>> = processed
            .iter()
            .map(|b| {
                let tp = (b.topic.clone(), b.partition);
                let committed = self.positions.get(&tp).and_then(|p| p.committed);
                (tp, committed)
            })
            .collect();
        self.commit_positions(&done, &processed)?;
        self.stage_time("commit", started.elapsed() - ran - waited);
        tracing::debug!(
            events = messages.len(),
            run_ms = ran.as_millis() as u64,
            commit_ms = (started.elapsed() - ran).as_millis() as u64,
            "cycle committed"
        );
        for batch in &mut processed {
            let tp = (batch.topic.clone(), batch.partition);
            batch.journal = self.placements.from(&tp, batch.first_offset);
            batch.durable_below = durable_before.get(&tp).copied().flatten();
        }
        self.note_scenarios(&processed, &scenario_reasons);
        self.unsunk.extend(processed);
        // A revocation before the sinks take these batches commits no further
        // than their first offsets.
        self.note_ready();
        self.sinks_away();

        self.metrics.events.fetch_add(handled, Ordering::Relaxed);
        self.metrics.outputs.fetch_add(outputs, Ordering::Relaxed);
        self.metrics.dead_letters.fetch_add(dead, Ordering::Relaxed);
        self.metrics.cycles.fetch_add(1, Ordering::Relaxed);
        self.metrics.note_dead_letters(recent);
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

    /// Runs and produces each partition's share of a cycle, in the open
    /// transaction.
    fn run_partitions(
        &mut self,
        catalog: &Catalog,
        by_partition: &BTreeMap<(&str, i32), Vec<&OwnedMessage>>,
        processed_ms: i64,
    ) -> Result<Ran, CycleError> {
        let mut ran = Ran::default();
        for ((topic, partition), batch) in by_partition {
            let produced = self
                .positions
                .get(&((*topic).to_owned(), *partition))
                .map(|p| p.produced)
                .ok_or(CycleError::NoPosition)?;
            let last = batch.last().map_or(0, |m| m.offset());
            ran.done.push(((*topic).to_owned(), *partition, last));
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
            ran.handled += fresh.len() as u64;
            let (partition_batch, out, dead_letters) =
                self.run_partition(catalog, topic, *partition, &fresh, processed_ms)?;
            ran.outputs += out;
            for letter in &dead_letters {
                *ran.reasons
                    .entry(letter.reason.as_str().to_owned())
                    .or_default() += 1;
                if let Some(route) = letter.scenario {
                    *ran.scenario_reasons
                        .entry((route.id.clone(), letter.reason.as_str()))
                        .or_default() += 1;
                }
                if ran.recent.len() < stats::RECENT_DEAD_LETTERS {
                    ran.recent.push(stats::RecentDeadLetter::of(letter));
                }
            }
            ran.dead += dead_letters.len() as u64;
            for letter in dead_letters {
                self.dead_letter(letter)?;
            }
            self.send_journal(&partition_batch)?;
            ran.processed.push(partition_batch);
        }
        Ok(ran)
    }

    /// Counts a committed cycle's events, matches, outputs and dead letters
    /// per scenario.
    fn note_scenarios(
        &self,
        processed: &[PartitionBatch],
        dead: &BTreeMap<(String, &'static str), u64>,
    ) {
        let t = &self.metrics.telemetry;
        let mut per: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for scenario in processed.iter().flat_map(|b| &b.scenarios) {
            let entry = per.entry(&scenario.scenario).or_default();
            for outcome in scenario.result.outcomes() {
                entry.0 += 1;
                entry.1 += u64::from(outcome.matched);
                if outcome.status == Status::Emitted {
                    entry.2 += scenario.result.records(outcome).len() as u64;
                }
            }
        }
        for (id, (events, matched, outputs)) in per {
            let labels = [("scenario", id)];
            t.counter("weir_scenario_events_total", &labels)
                .increment(events);
            t.counter("weir_scenario_matched_total", &labels)
                .increment(matched);
            t.counter("weir_scenario_outputs_total", &labels)
                .increment(outputs);
        }
        for ((id, reason), n) in dead {
            t.counter(
                "weir_scenario_dead_letters_total",
                &[("scenario", id), ("reason", reason)],
            )
            .increment(*n);
        }
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
        let routing_started = Instant::now();
        let routing = route::route(
            catalog,
            topic,
            messages.iter().map(|m| m.payload().unwrap_or_default()),
        );
        self.stages.route += routing_started.elapsed();
        let shares = routing.shares;
        let mut dead: Vec<DeadLetter<'m>> = routing
            .dead
            .into_iter()
            .map(|(index, reason, error)| DeadLetter {
                message: messages[index],
                scenario: None,
                reason,
                error,
            })
            .collect();

        let mut scenarios = Vec::with_capacity(shares.len());
        let mut outputs = 0u64;
        for (id, share) in shares {
            let route = &catalog.routes[id];
            // Each version's part of the scenario's share, run one after the other.
            let mut ran = Vec::with_capacity(2);
            for (variant, is_canary, share) in self.parts(route, topic, partition, messages, share)
            {
                let (batch, events) =
                    self.scenario_batch(catalog, variant, (topic, partition), &share, messages)?;
                let called = Instant::now();
                let (mut result, quarantined) = if is_canary {
                    (self.run_canary(route, variant, &batch), false)
                } else {
                    self.run_scenario(variant, &batch)
                };
                if route.canary.is_some() {
                    self.note_canary(route, is_canary, &result, called.elapsed());
                }
                self.fail_what_cannot_be_produced(variant, &share, messages, &mut result);
                ran.push((variant, share, events, result, quarantined));
            }
            // Outputs and dead letters in offset order across the parts, as
            // without a canary: a key's records keep their order.
            let order: Box<dyn Iterator<Item = (usize, usize)>> = match ran.as_slice() {
                [(_, share, ..)] => Box::new((0..share.len()).map(|i| (0, i))),
                parts => {
                    let mut order: Vec<(usize, usize)> = parts
                        .iter()
                        .enumerate()
                        .flat_map(|(p, (_, share, ..))| (0..share.len()).map(move |i| (p, i)))
                        .collect();
                    order.sort_by_key(|&(p, i)| parts[p].1[i].0);
                    Box::new(order.into_iter())
                }
            };
            for (p, i) in order {
                let (variant, share, _, result, quarantined) = &ran[p];
                let variant: &'m Arc<Route> = variant;
                let (index, member) = &share[i];
                let message = messages[*index];
                let outcome = &result.outcomes()[i];
                match outcome.status {
                    Status::Emitted => {
                        for record in result.records(outcome) {
                            self.send_output(variant, message, member.as_deref(), record)?;
                            outputs += 1;
                        }
                    }
                    Status::Failed => {
                        let error = outcome.error.as_ref();
                        dead.push(DeadLetter {
                            message,
                            scenario: Some(variant.as_ref()),
                            reason: if *quarantined {
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
            for (variant, _, events, result, _) in ran {
                scenarios.push(ScenarioBatch {
                    scenario: variant.id.clone(),
                    plugin: variant.plugin_label.clone(),
                    events,
                    result,
                });
            }
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
                ..PartitionBatch::default()
            },
            outputs,
            dead,
        ))
    }

    /// The plugin's batch of scenario `route`'s `share` of a partition's
    /// `messages` (enriched when the scenario asks), with each event's offset and time.
    fn scenario_batch(
        &self,
        catalog: &Catalog,
        route: &Route,
        (topic, partition): (&str, i32),
        share: &[(usize, Option<String>)],
        messages: &[&OwnedMessage],
    ) -> Result<(Batch, Vec<EventMeta>), CycleError> {
        let value_bytes = share
            .iter()
            .map(|(index, _)| messages[*index].payload().map_or(0, <[u8]>::len))
            .sum();
        let mut batch = Batch::with_capacity(&route.id, topic, partition, share.len(), value_bytes);
        let mut events = Vec::with_capacity(share.len());
        let mut headers_buf: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, member) in share {
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
        Ok((batch, events))
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
    /// The sinks did not take the results of the cycle before (its sink's
    /// failure was counted and logged where it happened).
    #[error("the sinks did not take the last cycle's results")]
    SinksBehind,
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
    #[error("kafka: {0}")]
    Call(#[from] txn::CallError),
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
