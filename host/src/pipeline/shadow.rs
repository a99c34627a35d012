//! Shadow runs: a scenario's candidate plugin (`"shadow": "name@N"` in its
//! document) runs on the same batches as its own plugin, after it. Only the
//! scenario's own answers are produced, counted and archived; the candidate's
//! are compared with them event by event, and what the comparison found
//! ([`ShadowStats`]: agreement, differences with samples, failures, cost per
//! event of both) is kept per scenario for the API, the dashboard and
//! `weir scenario stats`. A candidate that traps, loops or cannot load only
//! shows in these figures: the scenario's events never wait on its answers.
//!
//! The figures describe what this replica ran since the candidate (or the
//! scenario's plugin) last changed; they are observations, not part of what
//! a replay reproduces.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::{Value, json};

use crate::runtime::{Batch, BatchResult};

/// How many differing answers are kept as samples (the latest).
pub const SAMPLES: usize = 10;
/// Longest record text kept in a sample, bytes.
const SAMPLE_BYTES: usize = 300;

/// What one scenario's shadow run found.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowStats {
    /// The scenario's own plugin, `name@version`.
    pub current: String,
    /// The candidate, `name@version`.
    pub candidate: String,
    /// Since when these figures are kept, Unix ms.
    pub since_ms: i64,
    /// Events both ran.
    pub events: u64,
    /// Events both answered alike (status, match and records).
    pub agree: u64,
    /// Events answered differently.
    pub differ: u64,
    /// Events the candidate failed.
    pub candidate_failed: u64,
    /// Events the scenario's plugin failed.
    pub current_failed: u64,
    /// Time the scenario's plugin took for them, nanoseconds.
    pub current_ns: u64,
    /// Time the candidate took, nanoseconds.
    pub candidate_ns: u64,
    /// Why the candidate did not run on the last batch, when it did not
    /// (it could not load, be configured or answer a call).
    pub error: Option<String>,
    /// The latest differing answers, oldest first.
    pub samples: VecDeque<ShadowSample>,
}

/// One event the two answered differently.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSample {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The scenario's own answer.
    pub current: Value,
    /// The candidate's.
    pub candidate: Value,
}

impl ShadowStats {
    /// Nothing seen yet of `candidate` beside `current`.
    pub fn new(current: &str, candidate: &str, now_ms: i64) -> Self {
        Self {
            current: current.to_owned(),
            candidate: candidate.to_owned(),
            since_ms: now_ms,
            events: 0,
            agree: 0,
            differ: 0,
            candidate_failed: 0,
            current_failed: 0,
            current_ns: 0,
            candidate_ns: 0,
            error: None,
            samples: VecDeque::new(),
        }
    }

    /// Adds one batch both ran, with the time each took.
    pub fn note(
        &mut self,
        batch: &Batch,
        (topic, partition): (&str, i32),
        current: (&BatchResult, u64),
        candidate: (&BatchResult, u64),
    ) {
        self.error = None;
        self.current_ns += current.1;
        self.candidate_ns += candidate.1;
        let (ours, theirs) = (current.0.outcomes(), candidate.0.outcomes());
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            self.events += 1;
            self.current_failed += u64::from(a.status == crate::runtime::Status::Failed);
            self.candidate_failed += u64::from(b.status == crate::runtime::Status::Failed);
            let same = a.status == b.status
                && a.matched == b.matched
                && current.0.records(a).eq(candidate.0.records(b));
            if same {
                self.agree += 1;
                continue;
            }
            self.differ += 1;
            if self.samples.len() == SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(ShadowSample {
                topic: topic.to_owned(),
                partition,
                offset: batch.offset(i).unwrap_or(-1),
                current: answer(current.0, i),
                candidate: answer(candidate.0, i),
            });
        }
    }
}

/// Event `i`'s answer, for a sample: status, match, records (cut), error.
fn answer(result: &BatchResult, i: usize) -> Value {
    let outcome = &result.outcomes()[i];
    let records: Vec<String> = result
        .records(outcome)
        .map(|r| crate::pipeline::cut(&String::from_utf8_lossy(r), SAMPLE_BYTES).to_owned())
        .collect();
    json!({
        "status": outcome.status.as_str(),
        "matched": outcome.matched,
        "records": records,
        "error": outcome.error.as_ref().map(ToString::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{EventError, FailureKind, Status};

    fn result(answers: &[(Status, bool, &[&str])]) -> BatchResult {
        let mut result = BatchResult::default();
        for (status, matched, records) in answers {
            let error = (*status == Status::Failed).then(|| EventError {
                kind: FailureKind::Plugin,
                message: "trap".into(),
            });
            result.push_outcome(
                *status,
                *matched,
                error,
                records.iter().map(|r| r.as_bytes()),
            );
        }
        result
    }

    #[test]
    fn alike_answers_agree_and_each_difference_is_sampled() {
        let mut batch = Batch::new("5", "t", 1);
        for offset in 10..14 {
            batch.push(offset, b"{}").unwrap();
        }
        let ours = result(&[
            (Status::Emitted, true, &["a"]),
            (Status::Emitted, false, &["b"]),
            (Status::Dropped, false, &[]),
            (Status::Emitted, true, &["d"]),
        ]);
        let theirs = result(&[
            (Status::Emitted, true, &["a"]),
            (Status::Emitted, true, &["b"]),
            (Status::Failed, false, &[]),
            (Status::Emitted, true, &["D"]),
        ]);
        let mut stats = ShadowStats::new("s@1", "s@2", 0);
        stats.note(&batch, ("t", 1), (&ours, 400), (&theirs, 800));
        assert_eq!((stats.events, stats.agree, stats.differ), (4, 1, 3));
        assert_eq!((stats.candidate_failed, stats.current_failed), (1, 0));
        assert_eq!((stats.current_ns, stats.candidate_ns), (400, 800));
        let offsets: Vec<i64> = stats.samples.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, [11, 12, 13]);
        assert_eq!(stats.samples[2].current["records"][0], "d");
        assert_eq!(stats.samples[2].candidate["records"][0], "D");
        assert_eq!(stats.samples[1].candidate["status"], "failed");
    }

    #[test]
    fn samples_keep_the_latest_few() {
        let mut batch = Batch::new("5", "t", 0);
        for offset in 0..25 {
            batch.push(offset, b"{}").unwrap();
        }
        let x: &[&str] = &["x"];
        let ours = result(&[(Status::Emitted, true, x); 25]);
        let theirs = result(&[(Status::Dropped, false, &[][..]); 25]);
        let mut stats = ShadowStats::new("s@1", "s@2", 0);
        stats.note(&batch, ("t", 0), (&ours, 1), (&theirs, 1));
        assert_eq!(stats.samples.len(), SAMPLES);
        assert_eq!(stats.samples[0].offset, 15);
        assert_eq!(stats.differ, 25);
    }
}
