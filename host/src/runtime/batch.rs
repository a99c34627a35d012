//! Batches going into a plugin and results coming out.
//!
//! A [`Batch`] fills the flat buffers of the WIT `batch` record directly (every
//! value concatenated, spans into it), so handing it to the guest copies each
//! buffer once. A [`BatchResult`] keeps the output records the same way: one
//! buffer, end offsets, and per event a range of record indices.

use std::fmt;
use std::ops::Range;

use super::RuntimeError;
use super::bindings::{self, Span};

/// One input event for [`Batch::push_event`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EventInput<'a> {
    /// Source offset within the batch's topic and partition.
    pub offset: i64,
    /// The event's value bytes (usually JSON).
    pub value: &'a [u8],
    /// The event's key, if it has one.
    pub key: Option<&'a [u8]>,
    /// Record timestamp, milliseconds since the Unix epoch, when known.
    pub timestamp_ms: Option<i64>,
    /// Kafka record headers.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// A batch of events from one topic partition, routed to one scenario.
#[derive(Debug, Clone)]
pub struct Batch {
    pub(crate) inner: bindings::Batch,
}

impl Batch {
    /// An empty batch for `scenario_id`, from `topic` / `partition`.
    pub fn new(scenario_id: &str, topic: &str, partition: i32) -> Self {
        Self {
            inner: bindings::Batch {
                scenario_id: scenario_id.to_owned(),
                topic: topic.to_owned(),
                partition,
                events: Vec::new(),
                values: Vec::new(),
                keys: Vec::new(),
                headers: Vec::new(),
            },
        }
    }

    /// Appends an event with only an offset and a value.
    pub fn push(&mut self, offset: i64, value: &[u8]) -> Result<(), RuntimeError> {
        self.push_event(EventInput {
            offset,
            value,
            ..EventInput::default()
        })
    }

    /// Appends an event. Fails only when a buffer would pass 4 GiB, the most
    /// a WIT span can address.
    pub fn push_event(&mut self, event: EventInput<'_>) -> Result<(), RuntimeError> {
        let b = &mut self.inner;
        let value = append(&mut b.values, event.value)?;
        let key = event.key.map(|key| append(&mut b.keys, key)).transpose()?;
        let headers_start = to_u32(b.headers.len())?;
        b.headers
            .extend(event.headers.iter().map(|(key, value)| bindings::Header {
                key: (*key).to_owned(),
                value: value.to_vec(),
            }));
        let headers = Span {
            start: headers_start,
            end: to_u32(b.headers.len())?,
        };
        b.events.push(bindings::Event {
            value,
            key,
            headers,
            offset: event.offset,
            timestamp_ms: event.timestamp_ms,
        });
        Ok(())
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.inner.events.len()
    }

    /// Whether the batch has no events.
    pub fn is_empty(&self) -> bool {
        self.inner.events.is_empty()
    }

    /// Source offset of event `index`.
    pub fn offset(&self, index: usize) -> Option<i64> {
        self.inner.events.get(index).map(|e| e.offset)
    }

    /// Value bytes of event `index`.
    pub fn value(&self, index: usize) -> Option<&[u8]> {
        let span = self.inner.events.get(index)?.value;
        self.inner
            .values
            .get(span.start as usize..span.end as usize)
    }

    /// Removes every event, keeping the buffers' capacity for reuse.
    pub fn clear(&mut self) {
        let b = &mut self.inner;
        b.events.clear();
        b.values.clear();
        b.keys.clear();
        b.headers.clear();
    }

    /// A batch holding only `range` of this one's events, with compacted
    /// buffers. Used to retry part of a batch after a failed call.
    pub(crate) fn slice(&self, range: Range<usize>) -> bindings::Batch {
        let b = &self.inner;
        let mut out = bindings::Batch {
            scenario_id: b.scenario_id.clone(),
            topic: b.topic.clone(),
            partition: b.partition,
            events: Vec::with_capacity(range.len()),
            values: Vec::new(),
            keys: Vec::new(),
            headers: Vec::new(),
        };
        for event in &b.events[range] {
            // Spans of a slice are never larger than those of the whole batch,
            // which already fit in u32; the conversions cannot fail.
            let value = rebase(&mut out.values, &b.values, event.value);
            let key = event.key.map(|k| rebase(&mut out.keys, &b.keys, k));
            let start = out.headers.len() as u32;
            out.headers.extend_from_slice(
                &b.headers[event.headers.start as usize..event.headers.end as usize],
            );
            out.events.push(bindings::Event {
                value,
                key,
                headers: Span {
                    start,
                    end: out.headers.len() as u32,
                },
                offset: event.offset,
                timestamp_ms: event.timestamp_ms,
            });
        }
        out
    }
}

fn append(buffer: &mut Vec<u8>, bytes: &[u8]) -> Result<Span, RuntimeError> {
    let start = to_u32(buffer.len())?;
    let end = to_u32(buffer.len() + bytes.len())?;
    buffer.extend_from_slice(bytes);
    Ok(Span { start, end })
}

fn rebase(out: &mut Vec<u8>, source: &[u8], span: Span) -> Span {
    let start = out.len() as u32;
    out.extend_from_slice(&source[span.start as usize..span.end as usize]);
    Span {
        start,
        end: out.len() as u32,
    }
}

fn to_u32(n: usize) -> Result<u32, RuntimeError> {
    u32::try_from(n).map_err(|_| RuntimeError::BatchTooLarge { bytes: n })
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The event produced no output.
    Dropped,
    /// The event produced one or more output records.
    Emitted,
    /// The event could not be handled; [`Outcome::error`] says why.
    Failed,
}

impl Status {
    /// The lowercase name used on the wire and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Dropped => "dropped",
            Status::Emitted => "emitted",
            Status::Failed => "failed",
        }
    }
}

/// Who or what failed an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The plugin reported the failure itself (bad input, usually).
    Plugin,
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, ...).
    Trap,
    /// The call ran past its CPU budget (epoch deadline or fuel).
    CpuLimit,
    /// The guest tried to grow its memory past the cap.
    MemoryLimit,
    /// The event's output records passed the per-batch output cap.
    OutputLimit,
    /// The plugin's answer broke the contract (wrong outcome count, bad offsets).
    InvalidOutput,
}

impl FailureKind {
    /// The reason prefix used in error messages and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Plugin => "plugin error",
            FailureKind::Trap => "trap",
            FailureKind::CpuLimit => "cpu limit exceeded",
            FailureKind::MemoryLimit => "memory limit exceeded",
            FailureKind::OutputLimit => "output limit exceeded",
            FailureKind::InvalidOutput => "invalid plugin output",
        }
    }
}

/// Why one event failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// Details: the plugin's message, the trap, the limit.
    pub message: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FailureKind::Plugin => f.write_str(&self.message),
            kind => write!(f, "{}: {}", kind.as_str(), self.message),
        }
    }
}

/// The answer for one input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened to the event.
    pub status: Status,
    /// Whether the event matched the scenario.
    pub matched: bool,
    /// Why the event failed; `None` unless `status` is [`Status::Failed`].
    pub error: Option<EventError>,
    records: Range<usize>,
}

impl Outcome {
    fn failed(error: EventError, at: usize) -> Self {
        Self {
            status: Status::Failed,
            matched: false,
            error: Some(error),
            records: at..at,
        }
    }

    /// How many output records the event produced.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }
}

/// The answer for a whole batch: one [`Outcome`] per input event, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchResult {
    outcomes: Vec<Outcome>,
    data: Vec<u8>,
    ends: Vec<usize>,
    failed_calls: u32,
}

impl BatchResult {
    /// Outcomes, one per input event, in input order.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// The output records of `outcome` (which must come from this result).
    pub fn records<'a>(
        &'a self,
        outcome: &Outcome,
    ) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        outcome.records.clone().map(move |i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.data[start..self.ends[i]]
        })
    }

    /// Total bytes of every output record.
    pub fn output_bytes(&self) -> usize {
        self.data.len()
    }

    /// How many guest calls failed (trap or limit) while this batch ran.
    pub fn failed_calls(&self) -> u32 {
        self.failed_calls
    }

    pub(crate) fn note_failed_call(&mut self) {
        self.failed_calls += 1;
    }

    /// Appends `count` failed outcomes with the same reason.
    pub(crate) fn push_failed(&mut self, error: &EventError, count: usize) {
        let at = self.ends.len();
        self.outcomes.extend(std::iter::repeat_n(
            Outcome::failed(error.clone(), at),
            count,
        ));
    }

    /// Appends a plugin's checked output for `events` events.
    pub(crate) fn push_output(&mut self, output: bindings::Output) {
        let base = self.data.len();
        let mut next = 0usize;
        for outcome in output.outcomes {
            let at = self.ends.len() + next;
            let count = outcome.records as usize;
            next += count;
            self.outcomes.push(Outcome {
                status: match outcome.status {
                    bindings::Status::Dropped => Status::Dropped,
                    bindings::Status::Emitted => Status::Emitted,
                    bindings::Status::Failed => Status::Failed,
                },
                matched: outcome.matched,
                error: match outcome.status {
                    bindings::Status::Failed => Some(EventError {
                        kind: FailureKind::Plugin,
                        message: outcome.error.unwrap_or_else(|| {
                            "the plugin failed the event without a reason".to_owned()
                        }),
                    }),
                    _ => None,
                },
                records: at..at + count,
            });
        }
        self.ends
            .extend(output.record_ends.iter().map(|&end| base + end as usize));
        if self.data.is_empty() {
            self.data = output.records;
        } else {
            self.data.extend_from_slice(&output.records);
        }
    }
}

/// Checks a plugin's answer for `events` events against the contract.
/// Returns the reason it breaks it, if it does.
pub(crate) fn check_output(output: &bindings::Output, events: usize) -> Option<String> {
    if output.outcomes.len() != events {
        return Some(format!(
            "{} outcomes for {events} events (exactly one per event is required)",
            output.outcomes.len()
        ));
    }
    let mut records = 0usize;
    for (i, outcome) in output.outcomes.iter().enumerate() {
        if outcome.records > 0 && outcome.status != bindings::Status::Emitted {
            return Some(format!(
                "event {i} has status {:?} but {} records (only emitted events have records)",
                outcome.status, outcome.records
            ));
        }
        records += outcome.records as usize;
    }
    if records != output.record_ends.len() {
        return Some(format!(
            "outcomes announce {records} records but record-ends has {}",
            output.record_ends.len()
        ));
    }
    let mut previous = 0u32;
    for (i, &end) in output.record_ends.iter().enumerate() {
        if end < previous || end as usize > output.records.len() {
            return Some(format!(
                "record-ends[{i}] = {end} is out of order or past the {} record bytes",
                output.records.len()
            ));
        }
        previous = end;
    }
    if previous as usize != output.records.len() {
        return Some(format!(
            "record-ends stop at {previous} but there are {} record bytes",
            output.records.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindings::Outcome as WitOutcome;

    fn output(outcomes: Vec<(bindings::Status, u32)>, records: &[&str]) -> bindings::Output {
        let mut data = Vec::new();
        let mut ends = Vec::new();
        for r in records {
            data.extend_from_slice(r.as_bytes());
            ends.push(data.len() as u32);
        }
        bindings::Output {
            outcomes: outcomes
                .into_iter()
                .map(|(status, records)| WitOutcome {
                    status,
                    matched: status == bindings::Status::Emitted,
                    records,
                    error: None,
                })
                .collect(),
            records: data,
            record_ends: ends,
        }
    }

    #[test]
    fn batch_fills_flat_buffers_and_slices_rebase_spans() {
        let mut batch = Batch::new("5", "events", 3);
        batch.push(10, b"aaa").unwrap();
        batch
            .push_event(EventInput {
                offset: 11,
                value: b"bbbb",
                key: Some(b"k"),
                timestamp_ms: Some(1),
                headers: &[("h", b"v")],
            })
            .unwrap();
        batch.push(12, b"cc").unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.inner.values, b"aaabbbbcc");
        assert_eq!(batch.value(1), Some(&b"bbbb"[..]));

        let tail = batch.slice(1..3);
        assert_eq!(tail.values, b"bbbbcc");
        assert_eq!(tail.events[0].value, Span { start: 0, end: 4 });
        assert_eq!(tail.events[1].value, Span { start: 4, end: 6 });
        assert_eq!(tail.events[0].key, Some(Span { start: 0, end: 1 }));
        assert_eq!(tail.headers.len(), 1);
        assert_eq!(tail.events[1].offset, 12);
    }

    #[test]
    fn results_from_several_calls_keep_records_with_their_events() {
        use bindings::Status::*;
        let mut result = BatchResult::default();
        result.push_output(output(vec![(Emitted, 2), (Dropped, 0)], &["a", "bb"]));
        result.push_failed(
            &EventError {
                kind: FailureKind::Trap,
                message: "unreachable".into(),
            },
            1,
        );
        result.push_output(output(vec![(Emitted, 1)], &["ccc"]));

        let outcomes = result.outcomes();
        assert_eq!(outcomes.len(), 4);
        let records: Vec<Vec<&[u8]>> = outcomes
            .iter()
            .map(|o| result.records(o).collect())
            .collect();
        assert_eq!(records[0], vec![&b"a"[..], b"bb"]);
        assert!(records[1].is_empty());
        assert!(records[2].is_empty());
        assert_eq!(
            outcomes[2].error.as_ref().unwrap().to_string(),
            "trap: unreachable"
        );
        assert_eq!(records[3], vec![&b"ccc"[..]]);
    }

    #[test]
    fn outputs_that_break_the_contract_are_named() {
        use bindings::Status::*;
        assert!(check_output(&output(vec![(Emitted, 1)], &["x"]), 1).is_none());
        let short = check_output(&output(vec![(Emitted, 1)], &["x"]), 2).unwrap();
        assert!(short.contains("1 outcomes for 2 events"), "{short}");
        let dropped_with_records = check_output(&output(vec![(Dropped, 1)], &["x"]), 1).unwrap();
        assert!(
            dropped_with_records.contains("only emitted"),
            "{dropped_with_records}"
        );
        let mut bad_ends = output(vec![(Emitted, 2)], &["x", "y"]);
        bad_ends.record_ends = vec![2, 1];
        assert!(check_output(&bad_ends, 1).unwrap().contains("out of order"));
    }
}
