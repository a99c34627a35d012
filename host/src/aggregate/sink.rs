//! The Redis counters as a pipeline sink: each committed partition batch is
//! tallied per scenario and applied with the counters' fenced script.

use chrono::Utc;

use super::{BatchTally, Counters, CountersError, Tallied};
use crate::pipeline::sink::{PartitionBatch, Sink, SinkError};
use crate::runtime::Status;

/// The Redis counters as a sink.
#[derive(Debug)]
pub struct CountersSink {
    counters: Counters,
    runtime: tokio::runtime::Handle,
}

impl CountersSink {
    /// A sink writing to `counters`, running its Redis calls on `runtime`.
    pub fn new(counters: Counters, runtime: tokio::runtime::Handle) -> Self {
        Self { counters, runtime }
    }
}

/// The per-scenario tallies of a partition batch.
pub fn tally(batch: &PartitionBatch) -> Result<BatchTally, CountersError> {
    let mut tally = BatchTally::new(&batch.topic, batch.partition);
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

impl Sink for CountersSink {
    fn name(&self) -> &'static str {
        "counters"
    }

    fn write(&mut self, batches: &[PartitionBatch]) -> Result<(), SinkError> {
        let now = Utc::now();
        let error = |reason: String| SinkError {
            sink: "counters",
            reason,
        };
        for batch in batches {
            let tally = tally(batch).map_err(|e| error(e.to_string()))?;
            self.runtime
                .block_on(self.counters.apply(&tally, now))
                .map_err(|e| error(e.to_string()))?;
        }
        Ok(())
    }
}
