//! Consuming: the consumer's rebalance context, gathering a batch, waiting with
//! consumption paused, and learning where newly assigned partitions stand
//! (reading back from the journal what a replay gives the sinks).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use rdkafka::producer::{Producer, ThreadedProducer};

use super::journal::Deliveries;
use super::offsets::Position;
use super::sink::SinksBusy;
use super::{CycleError, Metrics, Pipeline, PipelineError, kafka, txn};

/// The consumer's context: remembers partitions revoked during a poll, so their
/// gathered events are dropped, and commits, as they are revoked, what the sinks
/// already made durable of them (what the next idle turn would have committed),
/// so their next owner replays as little as possible.
pub(super) struct Context {
    pub(super) revoked: Mutex<HashSet<(String, i32)>>,
    /// Per partition with something durable not committed yet: the offset and
    /// metadata an idle turn would commit (kept up to date by the pipeline).
    pub(super) ready: Mutex<HashMap<(String, i32), (i64, String)>>,
    /// The pipeline's producer (none inside a cycle's transaction: the consumer
    /// is polled only between cycles).
    pub(super) producer: Mutex<Option<Arc<ThreadedProducer<Deliveries>>>>,
    /// A call on that producer from here hung (see `txn.rs`): the pipeline
    /// makes it again as soon as the poll returns.
    pub(super) producer_hung: AtomicBool,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Whether the sinks' thread still hands the last cycle's batches.
    sinks_busy: SinksBusy,
}

impl Context {
    pub(super) fn new(metrics: Arc<Metrics>, timeout: Duration, sinks_busy: SinksBusy) -> Self {
        Self {
            revoked: Mutex::default(),
            ready: Mutex::default(),
            producer: Mutex::default(),
            producer_hung: AtomicBool::new(false),
            timeout,
            metrics,
            sinks_busy,
        }
    }

    /// Commits, in a transaction of its own, what is ready of `gone`.
    fn commit_before_revoke(&self, consumer: &BaseConsumer<Self>, gone: &[(String, i32)]) {
        if consumer.assignment_lost() {
            // The group already gave them to another member (the session ran
            // out): a commit would be refused after waiting for its timeouts,
            // inside the poll, on the pipeline's thread.
            tracing::info!(
                partitions = gone.len(),
                "assignment lost; its next owner replays what was durable"
            );
            return;
        }
        let mut offsets = TopicPartitionList::new();
        {
            let ready = self.ready.lock().expect("ready lock");
            for tp in gone {
                if let Some((commit, metadata)) = ready.get(tp) {
                    let mut element = offsets.add_partition(&tp.0, tp.1);
                    if element.set_offset(Offset::Offset(*commit)).is_err() {
                        return;
                    }
                    element.set_metadata(metadata.clone());
                }
            }
        }
        if offsets.count() == 0 {
            return;
        }
        let producer = self.producer.lock().expect("producer lock").clone();
        let (Some(producer), Some(group)) = (producer, consumer.group_metadata()) else {
            return;
        };
        // Bounded as the cycle's calls are (see `txn.rs`). A call left hung
        // holds the producer's transactional state: `producer_hung` has the
        // pipeline make it again once the poll returns.
        let (timeout, count) = (self.timeout, offsets.count());
        let calling = producer.clone();
        let committed = txn::bounded(
            "committing revoked partitions",
            timeout * 2,
            txn::MARGIN,
            move || {
                calling
                    .begin_transaction()
                    .and_then(|()| calling.send_offsets_to_transaction(&offsets, &group, timeout))
                    .and_then(|()| calling.commit_transaction(timeout))
            },
        );
        let committed = match committed {
            Ok(answer) => answer,
            Err(hung) => {
                if hung.leaves_producer_unknown() {
                    self.producer_hung.store(true, Ordering::Relaxed);
                }
                tracing::warn!(error = %hung, "committing revoked partitions gave no answer; their next owner replays a little more");
                return;
            }
        };
        match committed {
            Ok(()) => {
                self.metrics
                    .revoke_commits
                    .fetch_add(count as u64, Ordering::Relaxed);
                tracing::info!(
                    partitions = count,
                    "committed what was durable of revoked partitions"
                );
            }
            Err(err) => {
                // Their next owner replays a little more; a producer left unusable
                // is made again at the next cycle.
                let _ = producer.abort_transaction(self.timeout);
                tracing::warn!(error = %err, "committing revoked partitions failed");
            }
        }
    }
}

impl ClientContext for Context {
    /// librdkafka's errors: logged (and limited, `weir::logs`), and kept as the
    /// reason `/readyz` gives while no broker answers.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        self.metrics.kafka.lock().expect("metrics lock").error = Some(reason.to_owned());
    }

    /// Every `statistics.interval.ms`: each assigned partition's lag, from
    /// where this replica consumes (its application offset, or the committed
    /// one before the first fetch) to the last stable offset.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = std::collections::BTreeMap::new();
        for (name, topic) in &statistics.topics {
            for (&partition, p) in &topic.partitions {
                if partition < 0 || !p.desired {
                    continue;
                }
                let at = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.committed_offset
                };
                if at >= 0 && p.ls_offset >= 0 {
                    lag.insert((name.clone(), partition), (p.ls_offset - at).max(0));
                }
            }
        }
        *self.metrics.lag.lock().expect("metrics lock") = lag;
        let reachable = statistics.brokers.values().any(|b| b.state == "UP");
        self.metrics.kafka.lock().expect("metrics lock").reachable = Some(reachable);
        // A member that joined and was given nothing (more replicas than
        // partitions) may hear no assignment callback: steady counts as assigned.
        if statistics
            .cgrp
            .as_ref()
            .is_some_and(|group| group.join_state == "steady")
        {
            self.metrics.assigned.store(true, Ordering::Relaxed);
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let gone: Vec<(String, i32)> = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            // The sinks take the last cycle's batches on their own thread
            // while this one polls: they finish before the partitions move,
            // as when they took them on this thread.
            self.sinks_busy.wait();
            self.commit_before_revoke(consumer, &gone);
            let mut ready = self.ready.lock().expect("ready lock");
            for tp in &gone {
                ready.remove(tp);
            }
            self.revoked.lock().expect("revoked lock").extend(gone);
            tracing::info!(partitions = list.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // librdkafka keeps a partition's pause across a revoke and a new
            // assignment: one paused by `wait_paused` and taken away meanwhile
            // would come back paused, and never be fetched again. A wait in
            // progress pauses it again on its next turn.
            if let Err(err) = consumer.resume(list) {
                tracing::warn!(error = %err, "resuming newly assigned partitions");
            }
            tracing::info!(partitions = list.count(), "partitions assigned");
            self.metrics.assigned.store(true, Ordering::Relaxed);
        }
    }
}

impl Pipeline {
    pub(super) fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.config.topics.clone();
        topics.extend(self.current.topics());
        topics.sort();
        topics.dedup();
        topics
    }

    pub(super) fn subscribe(&mut self) -> Result<(), PipelineError> {
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

    /// Learns where the given partitions stand from their committed offsets, for those
    /// not known yet (newly assigned).
    pub(super) fn learn_positions(&mut self, partitions: &[(&str, i32)]) -> Result<(), CycleError> {
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
    pub(super) fn replay(
        &mut self,
        tp: &(String, i32),
        position: &mut Position,
    ) -> Result<(), CycleError> {
        let from = position.committed.unwrap_or(0);
        let until = position.produced;
        let replay = self
            .read_journal((&tp.0, tp.1), (from, until), position.journal)
            .map_err(CycleError::kafka("reading the journal back"))?;
        let events = replay.events();
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
        self.sinks_home();
        let mut batches = replay.placed_batches();
        for batch in &mut batches {
            batch.durable_below = position.committed;
        }
        for index in 0..self.sinks.len() {
            self.write_sink(index, &batches).map_err(CycleError::Sink)?;
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

    /// Polls until the batch is full or the linger time passed.
    pub(super) fn gather(&mut self) -> Vec<OwnedMessage> {
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let started = Instant::now();
        // What a wait for the sinks polled first (see `Pipeline::run`).
        let mut messages = std::mem::take(&mut self.carried);
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
    pub(super) fn poll_into(&mut self, wait: Duration, messages: &mut Vec<OwnedMessage>) -> bool {
        let polled = self.consumer.poll(wait).map(|m| m.map(|m| m.detach()));
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
            self.sinks_home();
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
                messages.push(message);
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
    pub(super) fn wait_paused(&mut self, wait: Duration, gathered: &mut Vec<OwnedMessage>) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stop.is_cancelled() {
            self.metrics.note_turn();
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
}
