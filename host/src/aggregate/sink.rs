//! The Redis counters as a pipeline sink: each committed partition batch is
//! tallied per scenario and applied with the counters' fenced script. The sink
//! knows how far each of its partitions was counted (from the committed offset
//! when it took the partition, then from what it applied), so a Redis that lost
//! writes is found at the next batch and the lost range recounted from the
//! journal ("Rollbacks" in the module doc of `aggregate`).

use std::collections::HashMap;

use chrono::Utc;

use super::{BatchTally, Behind, Counters, CountersError, Tallied};
use crate::pipeline::sink::{PartitionBatch, Recount, Sink, SinkCount, SinkError};
use crate::runtime::Status;

/// The Redis counters as a sink.
#[derive(Debug)]
pub struct CountersSink {
    counters: Counters,
    runtime: tokio::runtime::Handle,
    /// Per partition, the highest offset known counted (-1: accept any fence, as
    /// after a gap was noted).
    counted: HashMap<(String, i32), i64>,
    /// Offsets noted as not counted by this sink.
    uncounted: u64,
    /// Rollbacks found.
    rollbacks: u64,
    /// Per partition Redis was found behind on, the range to recount: asked for
    /// again at every write and tick until recounted or noted as a gap, so a
    /// recount that fails (the journal slow, Redis failing again) loses nothing.
    pending: HashMap<(String, i32), Recount>,
    /// When the fences were last compared with what is known counted.
    verified: std::time::Instant,
    /// Time of each counting call (`weir_redis_script_seconds`).
    script_time: Option<metrics::Histogram>,
}

/// How often the fences of every partition are compared with what is known
/// counted, so that a rollback is found on partitions that get no new batch.
const VERIFY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl CountersSink {
    /// A sink writing to `counters`, running its Redis calls on `runtime`.
    pub fn new(counters: Counters, runtime: tokio::runtime::Handle) -> Self {
        Self {
            counters,
            runtime,
            counted: HashMap::new(),
            uncounted: 0,
            rollbacks: 0,
            pending: HashMap::new(),
            verified: std::time::Instant::now(),
            script_time: None,
        }
    }

    /// Records the time of each counting call into `telemetry`.
    pub fn with_telemetry(mut self, telemetry: &crate::telemetry::Telemetry) -> Self {
        self.script_time = Some(telemetry.histogram("weir_redis_script_seconds", &[]));
        self
    }
}

/// The per-scenario tallies of a partition batch.
pub fn tally(batch: &PartitionBatch) -> Result<BatchTally, CountersError> {
    let mut tally = BatchTally::new(&batch.topic, batch.partition)
        .ending_at(batch.last_offset)
        .journaled_at(batch.journal);
    for scenario in &batch.scenarios {
        for (event, outcome) in scenario.events.iter().zip(scenario.result.outcomes()) {
            let tallied = match outcome.status {
                Status::Emitted => Tallied::Emitted,
                Status::Dropped => Tallied::Dropped,
                Status::Failed => Tallied::Failed,
            };
            tally.record(
                &scenario.scenario,
                &scenario.plugin,
                event.offset,
                event.time(batch.processed_ms).0,
                tallied,
                outcome.matched,
            )?;
        }
    }
    Ok(tally)
}

impl CountersSink {
    /// Redis is behind what is known counted: the error that asks for a recount
    /// of the lost range, which starts where Redis stands.
    fn behind(&mut self, behind: Behind) -> SinkError {
        self.rollbacks += 1;
        tracing::warn!(
            topic = %behind.topic,
            partition = behind.partition,
            counted_through = behind.counted_through,
            expected = behind.expected,
            "counters: redis lost writes; recounting the range from the journal"
        );
        let recount = Recount {
            topic: behind.topic.clone(),
            partition: behind.partition,
            from: behind.counted_through + 1,
            until: behind.expected + 1,
            journal: behind.journal,
        };
        let err = recount_error(&recount);
        self.pending
            .insert((behind.topic, behind.partition), recount);
        err
    }
}

/// The error that asks the pipeline for `recount`.
fn recount_error(recount: &Recount) -> SinkError {
    let mut err = SinkError::new(
        "counters",
        format!(
            "redis lost the counts of {} partition {} offsets {}..{}; recounting them from the journal",
            recount.topic, recount.partition, recount.from, recount.until
        ),
    );
    err.recount = Some(recount.clone());
    err
}

impl Sink for CountersSink {
    fn name(&self) -> &'static str {
        "counters"
    }

    fn write(&mut self, batches: &[PartitionBatch]) -> Result<(), SinkError> {
        let now = Utc::now();
        let error = |reason: String| SinkError::new("counters", reason);
        for batch in batches {
            let tp = (batch.topic.clone(), batch.partition);
            if let Some(recount) = self.pending.get(&tp) {
                return Err(recount_error(recount));
            }
            // Taking a partition over: everything below its committed offset was
            // counted, by whichever replica.
            let known = *self
                .counted
                .entry(tp.clone())
                .or_insert_with(|| batch.durable_below.map_or(-1, |c| c - 1));
            let tally = tally(batch)
                .map_err(|e| error(e.to_string()))?
                .counted_through(known);
            let called = std::time::Instant::now();
            let applied = self.runtime.block_on(self.counters.apply(&tally, now));
            if let Some(histogram) = &self.script_time {
                histogram.record(called.elapsed().as_secs_f64());
            }
            match applied {
                Ok(_) => {
                    let counted = self.counted.entry(tp).or_insert(-1);
                    *counted = (*counted).max(batch.last_offset);
                }
                Err(CountersError::Behind(behind)) => return Err(self.behind(behind)),
                Err(e) => return Err(error(e.to_string())),
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        if let Some(recount) = self.pending.values().next() {
            return Err(recount_error(recount));
        }
        if self.verified.elapsed() < VERIFY_EVERY {
            return Ok(());
        }
        let known: Vec<((String, i32), i64)> = self
            .counted
            .iter()
            .filter(|(_, counted)| **counted >= 0)
            .map(|(tp, &counted)| (tp.clone(), counted))
            .collect();
        let partitions: Vec<(String, i32)> = known.iter().map(|(tp, _)| tp.clone()).collect();
        let fences = self
            .runtime
            .block_on(self.counters.fences(&partitions))
            .map_err(|e| SinkError::new("counters", e.to_string()))?;
        self.verified = std::time::Instant::now();
        for (((topic, partition), expected), (counted_through, journal)) in
            known.into_iter().zip(fences)
        {
            if counted_through < expected {
                return Err(self.behind(Behind {
                    topic,
                    partition,
                    counted_through,
                    journal,
                    expected,
                }));
            }
        }
        Ok(())
    }

    fn recount(&mut self, recount: &Recount, batches: &[PartitionBatch]) -> Result<(), SinkError> {
        let now = Utc::now();
        let tp = (recount.topic.clone(), recount.partition);
        // Redis stands just below the range: each batch follows the one before.
        let mut through = recount.from - 1;
        for batch in batches {
            let tally = tally(batch)
                .map_err(|e| SinkError::new("counters", e.to_string()))?
                .counted_through(through);
            let called = std::time::Instant::now();
            let applied = self.runtime.block_on(self.counters.apply(&tally, now));
            if let Some(histogram) = &self.script_time {
                histogram.record(called.elapsed().as_secs_f64());
            }
            match applied {
                Ok(_) => through = through.max(batch.last_offset),
                // Redis lost writes again, further back: recount from there.
                Err(CountersError::Behind(behind)) => {
                    return Err(self.behind(Behind {
                        expected: recount.until - 1,
                        ..behind
                    }));
                }
                Err(e) => return Err(SinkError::new("counters", e.to_string())),
            }
        }
        if through >= recount.until - 1 {
            self.pending.remove(&tp);
        }
        Ok(())
    }

    fn revoked(&mut self, partitions: &[(String, i32)]) {
        for tp in partitions {
            self.counted.remove(tp);
            self.pending.remove(tp);
        }
    }

    fn uncounted(&mut self, topic: &str, partition: i32, from: i64, until: i64) {
        let offsets = (until - from).max(0) as u64;
        self.uncounted += offsets;
        tracing::error!(
            topic,
            partition,
            from,
            until,
            "counters: redis lost the counts of this range and the journal no longer holds it \
             (retention): its events are not counted; the archive and the outputs have them"
        );
        if let Err(e) =
            self.runtime.block_on(
                self.counters
                    .note_gap(topic, partition, from, until, Utc::now()),
            )
        {
            tracing::error!(topic, partition, from, until, error = %e, "counters: the gap could not be noted in redis");
        }
        // Go on from wherever Redis stands now.
        let tp = (topic.to_owned(), partition);
        self.pending.remove(&tp);
        self.counted.insert(tp, -1);
    }

    fn counts(&self) -> Vec<SinkCount> {
        vec![
            SinkCount {
                name: "counters_rollbacks",
                help: "Times Redis was found to have lost counts it had (a restart from a snapshot, an AOF without fsync, a failover); the range was recounted from the journal.",
                value: self.rollbacks,
            },
            SinkCount {
                name: "counters_uncounted_offsets",
                help: "Source offsets whose counts Redis lost and the journal no longer held; the stats API and a log line name each range.",
                value: self.uncounted,
            },
        ]
    }
}
