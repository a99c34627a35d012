//! The seam between the pipeline and what it makes durable besides Kafka: the Redis
//! counters (`aggregate/sink.rs`) and the Parquet archive (`archive/`).
//!
//! Every batch cycle hands its processed partition batches to each [`Sink`] once
//! its Kafka transaction committed them (outputs, dead letters and the cycle's
//! journal record, see `journal.rs`): a sink only ever sees results that Kafka
//! keeps. The commit stops at the first event a sink has not made durable yet,
//! so after a failure, a restart or a rebalance a sink sees those events again,
//! read back from the journal, never computed anew: it must be idempotent for
//! them (the counters fence by offset, the archive names files by offset range
//! and knows the last offset of each file it holds open).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::runtime::BatchResult;

/// One event of a scenario batch, as the sinks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta {
    /// Source offset.
    pub offset: i64,
    /// Record timestamp, milliseconds since the Unix epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
}

/// Earliest event time the sinks take as the event's own: 2000-01-01T00:00:00Z.
pub const EARLIEST_EVENT_TIME_MS: i64 = 946_684_800_000;

/// How far past the processing time an event time may lie: one day.
pub const LATEST_EVENT_TIME_AHEAD_MS: i64 = 24 * 3_600_000;

impl EventMeta {
    /// The time the sinks file the event under, and whether it is the event's
    /// own: its record timestamp when there is one from 2000-01-01 to a day past
    /// `now_ms`; otherwise (none, a clock gone wrong, nanoseconds written as
    /// milliseconds) the processing time `now_ms`, flagged. So no event lands in
    /// 1970 or in year 50,000, and one archive hour holds one hour's events.
    pub fn time(&self, now_ms: i64) -> (i64, bool) {
        match self.timestamp_ms {
            Some(ms)
                if (EARLIEST_EVENT_TIME_MS..=now_ms.saturating_add(LATEST_EVENT_TIME_AHEAD_MS))
                    .contains(&ms) =>
            {
                (ms, true)
            }
            _ => (now_ms, false),
        }
    }
}

/// What one scenario's plugin did with its share of a partition batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioBatch {
    /// The scenario's id.
    pub scenario: String,
    /// `name@registry-version` of the plugin that ran, as the counters name it.
    pub plugin: String,
    /// The events handed to the plugin, in offset order.
    pub events: Vec<EventMeta>,
    /// The plugin's answer, one outcome per event.
    pub result: BatchResult,
}

/// One partition's share of a batch cycle.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PartitionBatch {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First offset of the batch.
    pub first_offset: i64,
    /// Last offset of the batch.
    pub last_offset: i64,
    /// When the cycle ran, Unix milliseconds: the time the sinks file an event
    /// under when its own time is missing or insane ([`EventMeta::time`]). It
    /// is part of the cycle's result, so a replay files the event where the
    /// first run did.
    pub processed_ms: i64,
    /// Per scenario that had events in it.
    pub scenarios: Vec<ScenarioBatch>,
    /// Where the journal holds this batch's results (partition, offset of its
    /// first record), when known: a sink that later finds it lost what came
    /// after the batch asks for a recount from there ([`Recount`]).
    pub journal: Option<(i32, i64)>,
    /// The partition's committed offset when the batch was made: every sink
    /// made every offset below it durable before, so a sink that does not have
    /// them lost them.
    pub durable_below: Option<i64>,
}

/// Why a sink could not make a cycle durable.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {reason}")]
pub struct SinkError {
    /// Which sink.
    pub sink: &'static str,
    /// What went wrong.
    pub reason: String,
    /// The sink found it lost results it had made durable before: give it
    /// these again from the journal, then the batches again.
    pub recount: Option<Recount>,
}

impl SinkError {
    /// An error of `sink` for `reason`, with no recount asked for.
    pub fn new(sink: &'static str, reason: impl Into<String>) -> Self {
        Self {
            sink,
            reason: reason.into(),
            recount: None,
        }
    }
}

/// Results a sink lost (its store rolled back) and asks for again: offsets
/// `from..until` of a partition, read back from the journal from `journal` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recount {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First offset lost.
    pub from: i64,
    /// Offset after the last one lost.
    pub until: i64,
    /// Where the journal holds the results of the batch that ended at `from - 1`,
    /// when the sink knows it; the recount reads from there.
    pub journal: Option<(i32, i64)>,
}

/// Something that must be durable before offsets are committed.
///
/// A sink either makes each cycle durable in [`Sink::write`] (the counters), or holds
/// some of it for a while (the archive keeps files open across cycles) and says so
/// through [`Sink::pending_from`]: the pipeline then commits a partition's offset no
/// further than the first event the sink still holds, and after a restart the
/// journal gives the sinks those events' results again, so every sink must skip
/// what it already has.
pub trait Sink: Send {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Takes the cycle's batches. Called again with the same or overlapping events
    /// after a failure or a restart, so it must count or store them once.
    fn write(&mut self, batches: &[PartitionBatch]) -> Result<(), SinkError>;

    /// The lowest offset of `topic`/`partition` the sink took but has not made durable
    /// yet; `None` when everything it took is durable.
    fn pending_from(&self, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    /// Called between cycles, also when no events arrive (about every
    /// `pipeline.batch_linger_ms`): make durable what is due by time.
    fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Makes everything taken durable now: the pipeline is stopping.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The pipeline lost these partitions to a rebalance: forget what is held for them.
    /// It was not committed, so their next owner consumes it again.
    fn revoked(&mut self, _partitions: &[(String, i32)]) {}

    /// Takes `batches`, the results of `recount`'s range read back from the
    /// journal, which the sink asked for ([`SinkError::recount`]); it must count
    /// them even though it knows the range as counted.
    fn recount(&mut self, _recount: &Recount, batches: &[PartitionBatch]) -> Result<(), SinkError> {
        self.write(batches)
    }

    /// The journal no longer holds results of offsets `from..until` of a
    /// partition that the sink asked to recount ([`SinkError::recount`]): it
    /// must say so where an operator looks, and go on without them.
    fn uncounted(&mut self, _topic: &str, _partition: i32, _from: i64, _until: i64) {}

    /// Counters of what the sink did that an operator should see, exported as
    /// Prometheus counters `weir_<name>_total` with the help text given.
    fn counts(&self) -> Vec<SinkCount> {
        Vec::new()
    }

    /// Gauges of the sink's state, exported as `weir_<name>` (the name must be
    /// listed in [`crate::telemetry::SERIES`]).
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

/// One counter a sink exports; see [`Sink::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkCount {
    /// Metric name between `weir_` and `_total`.
    pub name: &'static str,
    /// Prometheus help text.
    pub help: &'static str,
    /// The count so far.
    pub value: u64,
}

/// What the sink thread is given: the sinks, and the batches to hand them.
type Job = (Vec<Box<dyn Sink>>, Vec<PartitionBatch>);

/// What the sink thread gives back: the sinks, the batches, and how long
/// taking them took or the first sink that failed and why.
pub(super) type Handed = (
    Vec<Box<dyn Sink>>,
    Vec<PartitionBatch>,
    Result<Duration, (usize, SinkError)>,
);

/// A thread of its own where the sinks take a cycle's committed results while
/// the pipeline thread runs the next cycle: on two cores, the archive's
/// encoding and the counters' round trip overlap routing, plugins and
/// producing. One long-lived thread rather than one per cycle keeps its
/// allocator's memory warm.
pub(super) struct SinkThread {
    to: std::sync::mpsc::Sender<Job>,
    from: std::sync::mpsc::Receiver<Handed>,
    busy: SinksBusy,
}

/// Whether the sinks' thread is handing batches to the sinks; a rebalance
/// waits until it is not, so the sinks have taken them before the revoked
/// partitions move to another replica.
#[derive(Clone, Default)]
pub(super) struct SinksBusy(Arc<(Mutex<bool>, Condvar)>);

impl SinksBusy {
    fn set(&self, busy: bool) {
        let (flag, changed) = &*self.0;
        *flag.lock().expect("sinks busy lock") = busy;
        changed.notify_all();
    }

    /// Returns once the sinks' thread is not handing batches.
    pub(super) fn wait(&self) {
        let (flag, changed) = &*self.0;
        let mut busy = flag.lock().expect("sinks busy lock");
        while *busy {
            busy = changed.wait(busy).expect("sinks busy lock");
        }
    }
}

impl SinkThread {
    /// Starts the thread; it ends when the pipeline drops this. `busy` says
    /// while it hands batches.
    pub(super) fn start(busy: SinksBusy) -> std::io::Result<Self> {
        let (to, jobs) = std::sync::mpsc::channel::<Job>();
        let (done, from) = std::sync::mpsc::channel();
        let flag = busy.clone();
        std::thread::Builder::new()
            .name("weir-sinks".into())
            .spawn(move || {
                for (mut sinks, batches) in jobs {
                    // Not busy once it returns, even by a panic: a rebalance
                    // waiting for it must not wait for ever.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        hand_in_turn(&mut sinks, &batches)
                    }));
                    flag.set(false);
                    let Ok(result) = result else { return };
                    if done.send((sinks, batches, result)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { to, from, busy })
    }

    /// Gives the thread `sinks` to hand `batches` to; [`SinkThread::back`]
    /// returns them.
    pub(super) fn hand(&self, sinks: Vec<Box<dyn Sink>>, batches: Vec<PartitionBatch>) {
        self.busy.set(true);
        self.to
            .send((sinks, batches))
            .expect("the sink thread ended (it panicked)");
    }

    /// Waits for what [`SinkThread::hand`] gave.
    pub(super) fn back(&self) -> Handed {
        self.from
            .recv()
            .expect("the sink thread ended (it panicked)")
    }
}

/// Hands `batches` to every sink in turn, then ticks it: how long that took,
/// or the first sink that failed and why.
fn hand_in_turn(
    sinks: &mut [Box<dyn Sink>],
    batches: &[PartitionBatch],
) -> Result<Duration, (usize, SinkError)> {
    let started = std::time::Instant::now();
    for (index, sink) in sinks.iter_mut().enumerate() {
        sink.write(batches)
            .and_then(|()| sink.tick())
            .map_err(|e| (index, e))?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_outside_the_sane_range_become_the_processing_time() {
        let now = 1_764_151_200_000; // 2025-11-26T10:00:00Z
        let at = |timestamp_ms| {
            EventMeta {
                offset: 0,
                timestamp_ms,
            }
            .time(now)
        };
        assert_eq!(at(Some(now - 5_000)), (now - 5_000, true));
        assert_eq!(
            at(Some(EARLIEST_EVENT_TIME_MS)),
            (EARLIEST_EVENT_TIME_MS, true)
        );
        assert_eq!(
            at(Some(now + LATEST_EVENT_TIME_AHEAD_MS)),
            (now + LATEST_EVENT_TIME_AHEAD_MS, true)
        );
        for bad in [
            None,
            Some(-5),
            Some(0),
            Some(EARLIEST_EVENT_TIME_MS - 1),
            Some(now * 1_000_000),
            Some(i64::MAX),
        ] {
            assert_eq!(at(bad), (now, false), "{bad:?}");
        }
    }
}
