//! Batches going into a plugin and results coming out.
//!
//! A [`Batch`] fills the columns of the WIT `batch` record directly (every
//! value concatenated with end offsets, one list entry per event and
//! attribute), so handing it to the guest copies each list once. A
//! [`BatchResult`] keeps the output records the same way: one buffer, end
//! offsets, and per event a range of record indices.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use super::RuntimeError;
use super::bindings::{self, EMITTED, EventValues, FAILED, MATCHED, NO_TIMESTAMP, STATUS_MASK};

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
                offsets: Vec::new(),
                values: EventValues::Text(String::new()),
                value_ends: Vec::new(),
                timestamps: Vec::new(),
                keys: None,
                headers: None,
            },
        }
    }

    /// An empty batch like [`Batch::new`], with room for `events` events
    /// whose values take `value_bytes` together: the buffers are allocated
    /// once rather than grown (each growth copies the values into fresh
    /// pages the kernel zeroes first).
    pub fn with_capacity(
        scenario_id: &str,
        topic: &str,
        partition: i32,
        events: usize,
        value_bytes: usize,
    ) -> Self {
        let mut batch = Self::new(scenario_id, topic, partition);
        let b = &mut batch.inner;
        b.offsets.reserve_exact(events);
        b.values = EventValues::Text(String::with_capacity(value_bytes));
        b.value_ends.reserve_exact(events);
        b.timestamps.reserve_exact(events);
        batch
    }

    /// The topic the batch's events come from.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The partition the batch's events come from.
    pub fn partition(&self) -> i32 {
        self.inner.partition
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
    /// a WIT end offset can address; the batch is then left as it was.
    pub fn push_event(&mut self, event: EventInput<'_>) -> Result<(), RuntimeError> {
        let b = &mut self.inner;
        let earlier = b.offsets.len();
        let key = event.key.unwrap_or_default();
        let value_end = to_u32(value_bytes(&b.values).len() + event.value.len())?;
        let key_end = to_u32(b.keys.as_ref().map_or(0, |k| k.bytes.len()) + key.len())?;
        let header_end =
            to_u32(b.headers.as_ref().map_or(0, |h| h.items.len()) + event.headers.len())?;
        if event.key.is_some() && b.keys.is_none() {
            // The first key of the batch: the events before it had none.
            b.keys = Some(bindings::EventKeys {
                present: vec![0; earlier],
                bytes: Vec::new(),
                ends: vec![0; earlier],
            });
        }
        if let Some(keys) = &mut b.keys {
            keys.bytes.extend_from_slice(key);
            keys.ends.push(key_end);
            keys.present.push(u8::from(event.key.is_some()));
        }
        if !event.headers.is_empty() && b.headers.is_none() {
            b.headers = Some(bindings::EventHeaders {
                items: Vec::new(),
                ends: vec![0; earlier],
            });
        }
        if let Some(headers) = &mut b.headers {
            headers
                .items
                .extend(event.headers.iter().map(|(key, value)| bindings::Header {
                    key: (*key).to_owned(),
                    value: value.to_vec(),
                }));
            headers.ends.push(header_end);
        }
        append_value(&mut b.values, event.value);
        b.value_ends.push(value_end);
        b.offsets.push(event.offset);
        b.timestamps
            .push(event.timestamp_ms.unwrap_or(NO_TIMESTAMP));
        Ok(())
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.inner.offsets.len()
    }

    /// Whether the batch has no events.
    pub fn is_empty(&self) -> bool {
        self.inner.offsets.is_empty()
    }

    /// Source offset of event `index`.
    pub fn offset(&self, index: usize) -> Option<i64> {
        self.inner.offsets.get(index).copied()
    }

    /// Value bytes of event `index`.
    pub fn value(&self, index: usize) -> Option<&[u8]> {
        let b = &self.inner;
        value_bytes(&b.values).get(part(&b.value_ends, index)?)
    }

    /// Removes every event, keeping the buffers' capacity for reuse.
    pub fn clear(&mut self) {
        let b = &mut self.inner;
        b.offsets.clear();
        b.values = match std::mem::replace(&mut b.values, EventValues::Text(String::new())) {
            EventValues::Text(mut text) => {
                text.clear();
                EventValues::Text(text)
            }
            // Emptied, the buffer is valid UTF-8 and keeps its capacity.
            EventValues::Bytes(mut bytes) => {
                bytes.clear();
                EventValues::Text(String::from_utf8(bytes).unwrap_or_default())
            }
        };
        b.value_ends.clear();
        b.timestamps.clear();
        b.keys = None;
        b.headers = None;
    }

    /// A batch holding only `range` of this one's events, with compacted
    /// buffers. Used to retry part of a batch after a failed call.
    pub(crate) fn slice(&self, range: Range<usize>) -> bindings::Batch {
        let b = &self.inner;
        // The batch's own end offsets are in order and within its buffers
        // (push_event keeps them so), and a slice's are smaller.
        let rebased = |ends: &[u32]| {
            let start = range.start.checked_sub(1).map_or(0, |i| ends[i]);
            let end = range.end.checked_sub(1).map_or(0, |i| ends[i]).max(start);
            let ends = ends[range.clone()].iter().map(|&e| e - start).collect();
            (start as usize..end as usize, ends)
        };
        let (values, value_ends) = rebased(&b.value_ends);
        bindings::Batch {
            scenario_id: b.scenario_id.clone(),
            topic: b.topic.clone(),
            partition: b.partition,
            offsets: b.offsets[range.clone()].to_vec(),
            values: match &b.values {
                // Each value is UTF-8 on its own, so event boundaries are
                // char boundaries.
                EventValues::Text(text) => match text.get(values.clone()) {
                    Some(text) => EventValues::Text(text.to_owned()),
                    None => EventValues::Bytes(text.as_bytes()[values].to_vec()),
                },
                EventValues::Bytes(bytes) => EventValues::Bytes(bytes[values].to_vec()),
            },
            value_ends,
            timestamps: b.timestamps[range.clone()].to_vec(),
            keys: b.keys.as_ref().map(|keys| {
                let (bytes, ends) = rebased(&keys.ends);
                bindings::EventKeys {
                    present: keys.present[range.clone()].to_vec(),
                    bytes: keys.bytes[bytes].to_vec(),
                    ends,
                }
            }),
            headers: b.headers.as_ref().map(|headers| {
                let (items, ends) = rebased(&headers.ends);
                bindings::EventHeaders {
                    items: headers.items[items].to_vec(),
                    ends,
                }
            }),
        }
    }
}

/// The concatenated values, text or not.
fn value_bytes(values: &EventValues) -> &[u8] {
    match values {
        EventValues::Text(text) => text.as_bytes(),
        EventValues::Bytes(bytes) => bytes,
    }
}

/// Appends `value`, checking it is UTF-8 while every value so far was: the
/// guest then gets the batch as text and need not check it again. The first
/// value that is not turns the buffer into bytes for the rest of the batch.
fn append_value(values: &mut EventValues, value: &[u8]) {
    match values {
        EventValues::Text(text) => match std::str::from_utf8(value) {
            Ok(value) => text.push_str(value),
            Err(_) => {
                let mut bytes = std::mem::take(text).into_bytes();
                bytes.extend_from_slice(value);
                *values = EventValues::Bytes(bytes);
            }
        },
        EventValues::Bytes(bytes) => bytes.extend_from_slice(value),
    }
}

/// Where event `index`'s part of a concatenated buffer is, from the
/// buffer's end offsets.
fn part(ends: &[u32], index: usize) -> Option<Range<usize>> {
    let start = match index.checked_sub(1) {
        Some(previous) => *ends.get(previous)?,
        None => 0,
    };
    Some(start as usize..*ends.get(index)? as usize)
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
    failed_call_time: Duration,
}

/// The per-event caps an answer is held to (from the runtime configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutputCaps {
    /// Largest single record, in bytes.
    pub(crate) record_bytes: usize,
    /// Longest failure reason, in bytes.
    pub(crate) error_bytes: usize,
}

impl OutputCaps {
    pub(crate) fn of(config: &super::RuntimeConfig) -> Self {
        Self {
            record_bytes: usize::try_from(config.max_record_bytes).unwrap_or(usize::MAX),
            error_bytes: config.max_error_bytes,
        }
    }
}

/// Cuts `message` to at most `max` bytes at a character boundary, marking
/// the cut with the full length.
fn truncate_reason(mut message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let full = message.len();
    let mut cut = max;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("… [cut: {full} bytes in all]"));
    message
}

/// Why one event's part of an answer breaks the contract or a cap, if it does.
/// Whether every record of an answer is within the record cap and UTF-8:
/// one pass over the whole buffer (the common case), so that only an answer
/// with a bad record is examined record by record.
fn records_fine(output: &bindings::Output, caps: &OutputCaps) -> bool {
    let bytes = &output.records;
    let mut start = 0usize;
    for &end in &output.record_ends {
        let end = end as usize;
        // A record that ends inside a character is not UTF-8 on its own
        // (the test is `str::is_char_boundary`'s: not a continuation byte).
        if end - start > caps.record_bytes || bytes.get(end).is_some_and(|&b| (b as i8) < -0x40) {
            return false;
        }
        start = end;
    }
    simdutf8::basic::from_utf8(bytes).is_ok()
}

/// `records` are only examined when `check_records` (see [`records_fine`]).
fn event_breach<'a>(
    status: u8,
    matched: bool,
    records: impl ExactSizeIterator<Item = &'a [u8]>,
    check_records: bool,
    caps: &OutputCaps,
) -> Option<EventError> {
    let invalid = |message: String| {
        Some(EventError {
            kind: FailureKind::InvalidOutput,
            message,
        })
    };
    if status == EMITTED && records.len() == 0 {
        return invalid("the event is emitted but has no records".to_owned());
    }
    if matched && status != EMITTED {
        return invalid("the event is matched but not emitted".to_owned());
    }
    for (i, record) in records.enumerate().filter(|_| check_records) {
        if record.len() > caps.record_bytes {
            return Some(EventError {
                kind: FailureKind::OutputLimit,
                message: format!(
                    "record {i} of the event is {} bytes; the limit is {} per record",
                    record.len(),
                    caps.record_bytes
                ),
            });
        }
        if let Err(e) = std::str::from_utf8(record) {
            return invalid(format!(
                "record {i} of the event is not UTF-8 (at byte {})",
                e.valid_up_to()
            ));
        }
    }
    None
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

    /// Wall time spent in guest calls that failed (traps, limits) while this
    /// batch ran: what the plugin's failures cost the pipeline.
    pub fn failed_call_time(&self) -> Duration {
        self.failed_call_time
    }

    pub(crate) fn note_failed_call(&mut self, took: Duration) {
        self.failed_calls += 1;
        self.failed_call_time += took;
    }

    /// A result in which all `count` events failed with `error`: what a caller
    /// answers for a batch it did not run (a scenario set aside, an instance
    /// that could not be made).
    pub fn all_failed(error: &EventError, count: usize) -> Self {
        let mut result = Self::default();
        result.push_failed(error, count);
        result
    }

    /// Fails event `index` after the fact, by a rule of the caller's (what its
    /// producer can take, say): it gets `error` and loses its records.
    pub fn fail_event(&mut self, index: usize, error: EventError) {
        if let Some(outcome) = self.outcomes.get_mut(index) {
            outcome.status = Status::Failed;
            outcome.matched = false;
            outcome.records = outcome.records.start..outcome.records.start;
            outcome.error = Some(error);
        }
    }

    /// Appends one event's outcome with its records, as a result recorded
    /// elsewhere gives it back (the pipeline's journal): a failed event keeps
    /// no records, and only an emitted one may be matched.
    pub fn push_outcome<'r>(
        &mut self,
        status: Status,
        matched: bool,
        error: Option<EventError>,
        records: impl IntoIterator<Item = &'r [u8]>,
    ) {
        let start = self.ends.len();
        if status != Status::Failed {
            for record in records {
                self.data.extend_from_slice(record);
                self.ends.push(self.data.len());
            }
        }
        self.outcomes.push(Outcome {
            status,
            matched: matched && status == Status::Emitted,
            error: error.filter(|_| status == Status::Failed),
            records: start..self.ends.len(),
        });
    }

    /// Appends `count` failed outcomes with the same reason.
    pub(crate) fn push_failed(&mut self, error: &EventError, count: usize) {
        let at = self.ends.len();
        self.outcomes.extend(std::iter::repeat_n(
            Outcome::failed(error.clone(), at),
            count,
        ));
    }

    /// Appends a plugin's checked output (see [`check_output`]). An event
    /// whose part breaks the contract or `caps` fails alone, with the reason.
    pub(crate) fn push_output(&mut self, output: bindings::Output, caps: &OutputCaps) {
        let base = self.data.len();
        let mut at = self.ends.len();
        let check_records = !records_fine(&output, caps);
        let mut errors = output.errors.into_iter();
        let mut record_start = 0usize;
        for (&byte, &count) in output.outcomes.iter().zip(&output.record_counts) {
            let count = count as usize;
            // `check_output` made sure the ends are in order and in bounds.
            let ends = &output.record_ends[at - self.ends.len()..][..count];
            let mut start = record_start;
            let records = ends.iter().map(|&end| {
                let record = &output.records[start..end as usize];
                start = end as usize;
                record
            });
            record_start = ends.last().map_or(record_start, |&end| end as usize);
            let matched = byte & MATCHED != 0;
            let (status, error) = match byte & STATUS_MASK {
                FAILED => (
                    Status::Failed,
                    Some(EventError {
                        kind: FailureKind::Plugin,
                        message: truncate_reason(
                            errors.next().unwrap_or_default(),
                            caps.error_bytes,
                        ),
                    }),
                ),
                status => match event_breach(status, matched, records, check_records, caps) {
                    Some(breach) => (Status::Failed, Some(breach)),
                    None if status == 0 => (Status::Dropped, None),
                    None => (Status::Emitted, None),
                },
            };
            let kept = if status == Status::Failed { 0 } else { count };
            self.outcomes.push(Outcome {
                status,
                matched: matched && status != Status::Failed,
                error,
                records: at..at + kept,
            });
            at += count;
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
    if output.outcomes.len() != events || output.record_counts.len() != events {
        return Some(format!(
            "{} outcomes and {} record counts for {events} events (exactly one of each per event is required)",
            output.outcomes.len(),
            output.record_counts.len()
        ));
    }
    let mut records = 0usize;
    let mut failed = 0usize;
    for (i, (&byte, &count)) in output
        .outcomes
        .iter()
        .zip(&output.record_counts)
        .enumerate()
    {
        let status = byte & STATUS_MASK;
        if byte & !(STATUS_MASK | MATCHED) != 0 || status > FAILED {
            return Some(format!(
                "event {i} has outcome {byte}, which is not a status (0, 1, 2) plus 4 for matched"
            ));
        }
        if status == FAILED {
            failed += 1;
            if byte & MATCHED != 0 {
                return Some(format!("event {i} is both failed and matched"));
            }
        }
        if count > 0 && status != EMITTED {
            return Some(format!(
                "event {i} has status {} but {count} records (only emitted events have records)",
                if status == FAILED {
                    "failed"
                } else {
                    "dropped"
                }
            ));
        }
        records += count as usize;
    }
    if failed != output.errors.len() {
        return Some(format!(
            "{failed} failed events but {} error messages (one per failed event is required)",
            output.errors.len()
        ));
    }
    if records != output.record_ends.len() {
        return Some(format!(
            "record counts add up to {records} records but record-ends has {}",
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

    /// An output with one entry per `(status, records)`; emitted events match.
    fn output(outcomes: Vec<(u8, u32)>, records: &[&str]) -> bindings::Output {
        let mut data = Vec::new();
        let mut ends = Vec::new();
        for r in records {
            data.extend_from_slice(r.as_bytes());
            ends.push(data.len() as u32);
        }
        let failed = outcomes.iter().filter(|(s, _)| *s == FAILED).count();
        bindings::Output {
            outcomes: outcomes
                .iter()
                .map(|&(status, _)| status | if status == EMITTED { MATCHED } else { 0 })
                .collect(),
            record_counts: outcomes.iter().map(|&(_, n)| n).collect(),
            errors: (0..failed).map(|i| format!("bad event {i}")).collect(),
            records: data,
            record_ends: ends,
        }
    }

    const DROPPED: u8 = 0;

    const CAPS: OutputCaps = OutputCaps {
        record_bytes: 8,
        error_bytes: 16,
    };

    /// A character cut between two records is caught although the buffer as a
    /// whole is UTF-8.
    #[test]
    fn a_character_split_across_records_is_not_utf8() {
        let mut answer = output(vec![(EMITTED, 2)], &["é", ""]);
        answer.record_ends = vec![1, 2];
        assert!(std::str::from_utf8(&answer.records).is_ok());
        assert!(!records_fine(&answer, &CAPS));
        let mut result = BatchResult::default();
        result.push_output(answer, &CAPS);
        let error = result.outcomes()[0].error.as_ref().unwrap();
        assert_eq!(error.kind, FailureKind::InvalidOutput);
        assert!(records_fine(&output(vec![(EMITTED, 1)], &["é"]), &CAPS));
    }

    /// One event's breach fails that event alone; its neighbours keep their
    /// records, and a reason that is too long is cut and marked.
    #[test]
    fn an_event_that_breaks_a_rule_fails_alone() {
        let mut answer = output(
            vec![
                (EMITTED, 1),
                (EMITTED, 0),
                (EMITTED, 1),
                (EMITTED, 2),
                (DROPPED, 0),
                (FAILED, 0),
                (EMITTED, 1),
            ],
            &["ok", "123456789", "x", "\u{fffd}", "last"],
        );
        // Record 3 (the event at index 3's second record) is not UTF-8.
        answer.records[answer.record_ends[2] as usize + 1] = 0xff;
        answer.outcomes[4] |= MATCHED;
        answer.errors = vec!["é".repeat(20)];
        let mut result = BatchResult::default();
        result.push_output(answer, &CAPS);
        let kinds: Vec<(Status, Option<FailureKind>)> = result
            .outcomes()
            .iter()
            .map(|o| (o.status, o.error.as_ref().map(|e| e.kind)))
            .collect();
        use FailureKind::{InvalidOutput, OutputLimit, Plugin};
        assert_eq!(
            kinds,
            [
                (Status::Emitted, None),
                (Status::Failed, Some(InvalidOutput)),
                (Status::Failed, Some(OutputLimit)),
                (Status::Failed, Some(InvalidOutput)),
                (Status::Failed, Some(InvalidOutput)),
                (Status::Failed, Some(Plugin)),
                (Status::Emitted, None),
            ]
        );
        let outcomes = result.outcomes();
        assert_eq!(result.records(&outcomes[0]).collect::<Vec<_>>(), [b"ok"]);
        assert_eq!(result.records(&outcomes[6]).collect::<Vec<_>>(), [b"last"]);
        assert!(
            outcomes[1..6]
                .iter()
                .all(|o| o.record_count() == 0 && !o.matched)
        );
        let message = |i: usize| outcomes[i].error.as_ref().unwrap().message.clone();
        assert!(
            message(1).contains("emitted but has no records"),
            "{}",
            message(1)
        );
        assert!(
            message(2).contains("9 bytes; the limit is 8"),
            "{}",
            message(2)
        );
        assert!(
            message(3).contains("record 1 of the event is not UTF-8"),
            "{}",
            message(3)
        );
        assert!(
            message(4).contains("matched but not emitted"),
            "{}",
            message(4)
        );
        assert_eq!(
            message(5),
            format!("{}… [cut: 40 bytes in all]", "é".repeat(8))
        );
    }

    #[test]
    fn batch_fills_columns_and_slices_rebase_ends() {
        let mut batch = Batch::new("5", "events", 3);
        batch.push(10, b"aaa").unwrap();
        assert!(batch.inner.keys.is_none() && batch.inner.headers.is_none());
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
        assert_eq!(batch.inner.values, EventValues::Text("aaabbbbcc".into()));
        assert_eq!(batch.inner.value_ends, [3, 7, 9]);
        assert_eq!(batch.inner.timestamps, [NO_TIMESTAMP, 1, NO_TIMESTAMP]);
        let keys = batch.inner.keys.as_ref().unwrap();
        assert_eq!(
            (&keys.present[..], &keys.ends[..]),
            (&[0, 1, 0][..], &[0, 1, 1][..])
        );
        assert_eq!(batch.inner.headers.as_ref().unwrap().ends, [0, 1, 1]);
        assert_eq!(batch.value(0), Some(&b"aaa"[..]));
        assert_eq!(batch.value(1), Some(&b"bbbb"[..]));
        assert_eq!(batch.value(3), None);

        let tail = batch.slice(1..3);
        assert_eq!(tail.values, EventValues::Text("bbbbcc".into()));
        assert_eq!(tail.value_ends, [4, 6]);
        let keys = tail.keys.unwrap();
        assert_eq!(
            (keys.bytes, keys.ends, keys.present),
            (b"k".to_vec(), vec![1, 1], vec![1, 0])
        );
        let headers = tail.headers.unwrap();
        assert_eq!((headers.items.len(), headers.ends), (1, vec![1, 1]));
        assert_eq!(tail.offsets, [11, 12]);
        assert_eq!(tail.timestamps, [1, NO_TIMESTAMP]);

        let middle = batch.slice(1..2);
        assert_eq!(
            (middle.values, middle.value_ends),
            (EventValues::Text("bbbb".into()), vec![4])
        );
        let empty = batch.slice(2..2);
        assert!(empty.offsets.is_empty());
        assert_eq!(empty.values, EventValues::Text(String::new()));

        batch.clear();
        assert!(batch.is_empty() && batch.inner.keys.is_none());
    }

    /// Values travel as text while all are UTF-8; one that is not turns the
    /// batch into bytes (slices of it too) until it is cleared.
    #[test]
    fn values_are_text_until_one_is_not() {
        let mut batch = Batch::new("5", "events", 0);
        batch.push(0, "구매".as_bytes()).unwrap();
        batch.push(1, b"ok").unwrap();
        assert_eq!(batch.inner.values, EventValues::Text("구매ok".into()));
        batch.push(2, &[0xff, b'x']).unwrap();
        batch.push(3, b"after").unwrap();
        let mut expected = "구매ok".as_bytes().to_vec();
        expected.extend_from_slice(b"\xffxafter");
        assert_eq!(batch.inner.values, EventValues::Bytes(expected));
        assert_eq!(batch.value(2), Some(&[0xff, b'x'][..]));
        assert_eq!(batch.value(0), Some("구매".as_bytes()));
        assert_eq!(
            batch.slice(0..2).values,
            EventValues::Bytes("구매ok".as_bytes().to_vec())
        );
        batch.clear();
        batch.push(0, b"{}").unwrap();
        assert_eq!(batch.inner.values, EventValues::Text("{}".into()));
    }

    #[test]
    fn results_from_several_calls_keep_records_with_their_events() {
        let mut result = BatchResult::default();
        result.push_output(
            output(vec![(EMITTED, 2), (DROPPED, 0)], &["a", "bb"]),
            &CAPS,
        );
        result.push_failed(
            &EventError {
                kind: FailureKind::Trap,
                message: "unreachable".into(),
            },
            1,
        );
        result.push_output(output(vec![(EMITTED, 1), (FAILED, 0)], &["ccc"]), &CAPS);

        let outcomes = result.outcomes();
        assert_eq!(outcomes.len(), 5);
        assert!(outcomes[0].matched && !outcomes[1].matched);
        assert_eq!(outcomes[1].status, Status::Dropped);
        assert_eq!(outcomes[4].status, Status::Failed);
        assert_eq!(
            outcomes[4].error.as_ref().unwrap().to_string(),
            "bad event 0"
        );
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
        let check = |output: &bindings::Output, events| check_output(output, events).unwrap();
        assert!(check_output(&output(vec![(EMITTED, 1)], &["x"]), 1).is_none());
        assert!(check_output(&output(vec![(FAILED, 0), (DROPPED, 0)], &[]), 2).is_none());
        let short = check(&output(vec![(EMITTED, 1)], &["x"]), 2);
        assert!(
            short.contains("1 outcomes and 1 record counts for 2 events"),
            "{short}"
        );
        let dropped_with_records = check(&output(vec![(DROPPED, 1)], &["x"]), 1);
        assert!(
            dropped_with_records.contains("only emitted"),
            "{dropped_with_records}"
        );
        let mut bad_ends = output(vec![(EMITTED, 2)], &["x", "y"]);
        bad_ends.record_ends = vec![2, 1];
        assert!(check(&bad_ends, 1).contains("out of order"));
        let mut unknown = output(vec![(EMITTED, 1)], &["x"]);
        unknown.outcomes[0] = 3;
        assert!(check(&unknown, 1).contains("not a status"));
        let mut failed_matched = output(vec![(FAILED, 0)], &[]);
        failed_matched.outcomes[0] |= MATCHED;
        assert!(check(&failed_matched, 1).contains("both failed and matched"));
        let mut no_reason = output(vec![(FAILED, 0)], &[]);
        no_reason.errors.clear();
        assert!(check(&no_reason, 1).contains("1 failed events but 0 error messages"));
    }
}
