//! The columnar batch and the output layouts of the WIT contract, as plain
//! Rust types.
//!
//! The same types are used inside the component (converted from the generated
//! bindings without copying the buffers) and natively by [`Harness`](crate::Harness).

use std::ops::Range;

use crate::Event;

/// A Kafka record header.
///
/// ```
/// let header = weir_sdk::Header { key: "trace-id".into(), value: b"abc".to_vec() };
/// assert_eq!(header.key, "trace-id");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value bytes.
    pub value: Vec<u8>,
}

/// `timestamps` entry of an event without a timestamp.
pub(crate) const NO_TIMESTAMP: i64 = i64::MIN;

/// Every event value, concatenated: text while every value is UTF-8 (then
/// events read their value as `&str` without checking it again), else bytes.
#[derive(Debug, Clone)]
pub(crate) enum Values {
    Text(String),
    Bytes(Vec<u8>),
}

impl Default for Values {
    fn default() -> Self {
        Values::Text(String::new())
    }
}

impl Values {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Values::Text(text) => text.as_bytes(),
            Values::Bytes(bytes) => bytes,
        }
    }

    /// Appends `value`; the first one that is not UTF-8 turns the buffer
    /// into bytes.
    fn push(&mut self, value: &[u8]) {
        match self {
            Values::Text(text) => match std::str::from_utf8(value) {
                Ok(value) => text.push_str(value),
                Err(_) => {
                    let mut bytes = std::mem::take(text).into_bytes();
                    bytes.extend_from_slice(value);
                    *self = Values::Bytes(bytes);
                }
            },
            Values::Bytes(bytes) => bytes.extend_from_slice(value),
        }
    }
}

/// A batch of events in the columnar layout the host sends: every value in
/// one buffer, every key in another, each with end offsets, and one list per
/// event attribute. Build one to drive a plugin natively with
/// [`Harness`](crate::Harness).
///
/// ```
/// let mut batch = weir_sdk::Batch::new("5");
/// batch.push(br#"{"age":31}"#).timestamp_ms(1_700_000_000_000).key(b"member-1");
/// batch.push(br#"{"age":12}"#);
/// assert_eq!(batch.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub(crate) scenario_id: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offsets: Vec<i64>,
    pub(crate) values: Values,
    pub(crate) value_ends: Vec<u32>,
    pub(crate) timestamps: Vec<i64>,
    /// The key columns, all empty when no event has a key.
    pub(crate) key_present: Vec<u8>,
    pub(crate) keys: Vec<u8>,
    pub(crate) key_ends: Vec<u32>,
    /// The header columns, both empty when no event has headers.
    pub(crate) headers: Vec<Header>,
    pub(crate) header_ends: Vec<u32>,
}

impl Batch {
    /// An empty batch routed to `scenario_id`, from topic `events`, partition 0.
    ///
    /// ```
    /// assert!(weir_sdk::Batch::new("5").is_empty());
    /// ```
    pub fn new(scenario_id: &str) -> Self {
        Self {
            scenario_id: scenario_id.to_owned(),
            topic: "events".to_owned(),
            ..Self::default()
        }
    }

    /// A batch with one event per non-blank line of `jsonl` (offsets 0, 1, …).
    ///
    /// ```
    /// let batch = weir_sdk::Batch::from_lines("5", "{\"a\":1}\n\n{\"a\":2}\n");
    /// assert_eq!(batch.len(), 2);
    /// ```
    pub fn from_lines(scenario_id: &str, jsonl: &str) -> Self {
        let mut batch = Self::new(scenario_id);
        for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
            batch.push(line.as_bytes());
        }
        batch
    }

    /// Sets the source topic and partition of every event.
    ///
    /// ```
    /// let batch = weir_sdk::Batch::new("5").source("clicks", 3);
    /// # let _ = batch;
    /// ```
    pub fn source(mut self, topic: &str, partition: i32) -> Self {
        self.topic = topic.to_owned();
        self.partition = partition;
        self
    }

    /// Appends an event with this value; its offset is its index in the batch.
    /// Chain [`EventMut`] calls to give it a key, timestamp or headers.
    ///
    /// ```
    /// let mut batch = weir_sdk::Batch::new("5");
    /// batch.push(b"{}").offset(42).header("h", b"v");
    /// ```
    pub fn push(&mut self, value: &[u8]) -> EventMut<'_> {
        self.offsets.push(self.offsets.len() as i64);
        self.values.push(value);
        self.value_ends.push(offset_u32(self.values.bytes().len()));
        self.timestamps.push(NO_TIMESTAMP);
        if !self.key_ends.is_empty() {
            self.key_present.push(0);
            self.key_ends.push(offset_u32(self.keys.len()));
        }
        if !self.header_ends.is_empty() {
            self.header_ends.push(offset_u32(self.headers.len()));
        }
        EventMut { batch: self }
    }

    /// How many events the batch holds.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Batch::from_lines("5", "{}").len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the batch holds no events.
    ///
    /// ```
    /// assert!(weir_sdk::Batch::new("5").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Event `index` as the plugin will see it, or an error when the columns
    /// do not describe it (a host bug, reported rather than trapping).
    pub(crate) fn event(&self, index: usize) -> Result<Event<'_>, String> {
        let range = span(
            &self.value_ends,
            index,
            "value",
            "values",
            self.values.bytes().len(),
        )?;
        let (value, text) = match &self.values {
            Values::Text(text) => {
                let text = text.get(range.clone()).ok_or_else(|| {
                    format!(
                        "event value {}..{} does not start and end at characters of batch.values",
                        range.start, range.end
                    )
                })?;
                (text.as_bytes(), Some(text))
            }
            Values::Bytes(bytes) => (&bytes[range], None),
        };
        // Empty key or header columns: no event of the batch has any.
        let key = if self.key_present.is_empty()
            || *entry(&self.key_present, index, "keys.present")? == 0
        {
            None
        } else {
            Some(part(
                &self.keys,
                &self.key_ends,
                index,
                "key",
                "keys.bytes",
            )?)
        };
        let headers = if self.header_ends.is_empty() {
            &[][..]
        } else {
            let (items, ends) = (&self.headers, &self.header_ends);
            part(items, ends, index, "headers", "headers.items")?
        };
        let timestamp = *entry(&self.timestamps, index, "timestamps")?;
        Ok(Event::from_parts(
            value,
            text,
            key,
            headers,
            *entry(&self.offsets, index, "offsets")?,
            (timestamp != NO_TIMESTAMP).then_some(timestamp),
            &self.scenario_id,
            &self.topic,
            self.partition,
        ))
    }
}

fn entry<'a, T>(column: &'a [T], index: usize, name: &str) -> Result<&'a T, String> {
    column
        .get(index)
        .ok_or_else(|| format!("batch.{name} has no entry for event {index}"))
}

/// Event `index`'s part of a concatenated buffer: from the previous event's
/// end offset to its own.
fn part<'a, T>(
    buffer: &'a [T],
    ends: &[u32],
    index: usize,
    what: &str,
    buffer_name: &str,
) -> Result<&'a [T], String> {
    let range = span(ends, index, what, buffer_name, buffer.len())?;
    Ok(&buffer[range])
}

/// Where event `index`'s part of a concatenated buffer of `len` items is,
/// checked against the buffer.
fn span(
    ends: &[u32],
    index: usize,
    what: &str,
    buffer_name: &str,
    len: usize,
) -> Result<Range<usize>, String> {
    let ends_name = || match buffer_name.split_once('.') {
        Some((group, _)) => format!("{group}.ends"),
        None => format!("{what}_ends"),
    };
    let end_at = |i: usize| {
        ends.get(i)
            .copied()
            .ok_or_else(|| format!("batch.{} has no entry for event {i}", ends_name()))
    };
    let start = match index.checked_sub(1) {
        Some(previous) => end_at(previous)?,
        None => 0,
    };
    let end = end_at(index)?;
    if start > end || end as usize > len {
        return Err(format!(
            "event {what} {start}..{end} is outside batch.{buffer_name} (length {len})"
        ));
    }
    Ok(start as usize..end as usize)
}

fn offset_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a batch buffer is limited to 4 GiB by the WIT contract")
}

/// The event just pushed onto a [`Batch`], to set its optional parts.
///
/// ```
/// let mut batch = weir_sdk::Batch::new("5");
/// batch.push(b"{}").key(b"k").timestamp_ms(0).offset(7).header("a", b"1");
/// ```
#[derive(Debug)]
pub struct EventMut<'b> {
    batch: &'b mut Batch,
}

impl EventMut<'_> {
    /// Index of the event just pushed.
    fn last(&self) -> usize {
        self.batch.offsets.len() - 1
    }

    /// Sets the key.
    ///
    /// ```
    /// weir_sdk::Batch::new("5").push(b"{}").key(b"member-1");
    /// ```
    pub fn key(self, key: &[u8]) -> Self {
        let last = self.last();
        let b = &mut *self.batch;
        if b.key_ends.is_empty() {
            // The first key of the batch: the events before had none.
            b.key_present = vec![0; last + 1];
            b.key_ends = vec![0; last + 1];
        }
        // A second call replaces the key.
        let start = last.checked_sub(1).map_or(0, |i| b.key_ends[i]);
        b.keys.truncate(start as usize);
        b.keys.extend_from_slice(key);
        b.key_ends[last] = offset_u32(b.keys.len());
        b.key_present[last] = 1;
        self
    }

    /// Sets the record timestamp, in milliseconds since the Unix epoch.
    ///
    /// ```
    /// weir_sdk::Batch::new("5").push(b"{}").timestamp_ms(1_700_000_000_000);
    /// ```
    pub fn timestamp_ms(self, timestamp_ms: i64) -> Self {
        let last = self.last();
        self.batch.timestamps[last] = timestamp_ms;
        self
    }

    /// Sets the source offset (by default the event's index in the batch).
    ///
    /// ```
    /// weir_sdk::Batch::new("5").push(b"{}").offset(1234);
    /// ```
    pub fn offset(self, offset: i64) -> Self {
        let last = self.last();
        self.batch.offsets[last] = offset;
        self
    }

    /// Appends a header.
    ///
    /// ```
    /// weir_sdk::Batch::new("5").push(b"{}").header("trace-id", b"abc");
    /// ```
    pub fn header(self, key: &str, value: &[u8]) -> Self {
        let last = self.last();
        if self.batch.header_ends.is_empty() {
            self.batch.header_ends = vec![0; last + 1];
        }
        self.batch.headers.push(Header {
            key: key.to_owned(),
            value: value.to_vec(),
        });
        self.batch.header_ends[last] = offset_u32(self.batch.headers.len());
        self
    }
}

/// What happened to one event.
///
/// ```
/// assert_ne!(weir_sdk::Status::Emitted, weir_sdk::Status::Failed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The event produced no output.
    Dropped,
    /// The event produced one or more output records.
    Emitted,
    /// The plugin could not handle the event; the outcome's `error` says why.
    Failed,
}

/// The answer for one input event, as the host receives it.
///
/// ```
/// let out = weir_sdk::Output::default();
/// assert!(out.outcomes().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened.
    pub status: Status,
    /// Whether the event matched (counted as a success for the scenario).
    pub matched: bool,
    /// How many output records the event produced.
    pub records: u32,
    /// Why the event failed; `None` unless `status` is [`Status::Failed`].
    pub error: Option<String>,
}

/// The answer for a whole batch: one [`Outcome`] per event, every record in
/// one buffer with end offsets (the glue turns the outcomes into the WIT
/// output's columns).
///
/// ```
/// let out = weir_sdk::Output::default();
/// assert_eq!(out.record_count(), 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) records: Vec<u8>,
    pub(crate) record_ends: Vec<u32>,
}

impl Output {
    pub(crate) fn with_capacity(events: usize, bytes: usize) -> Self {
        Self {
            outcomes: Vec::with_capacity(events),
            records: Vec::with_capacity(bytes),
            record_ends: Vec::with_capacity(events),
        }
    }

    /// One outcome per input event, in input order.
    ///
    /// ```
    /// assert!(weir_sdk::Output::default().outcomes().is_empty());
    /// ```
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// How many output records there are in total.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Output::default().record_count(), 0);
    /// ```
    pub fn record_count(&self) -> usize {
        self.record_ends.len()
    }

    /// Output record `index` (counted over the whole batch).
    ///
    /// ```
    /// assert_eq!(weir_sdk::Output::default().record(0), None);
    /// ```
    pub fn record(&self, index: usize) -> Option<&[u8]> {
        let end = *self.record_ends.get(index)? as usize;
        let start = match index {
            0 => 0,
            _ => self.record_ends[index - 1] as usize,
        };
        self.records.get(start..end)
    }

    /// The output split per input event, for assertions in tests.
    ///
    /// ```
    /// assert!(weir_sdk::Output::default().results().is_empty());
    /// ```
    pub fn results(&self) -> Vec<EventResult> {
        let mut next = 0;
        self.outcomes
            .iter()
            .map(|outcome| {
                let records = (next..next + outcome.records as usize)
                    .map(|i| self.record(i).unwrap_or_default().to_vec())
                    .collect();
                next += outcome.records as usize;
                EventResult {
                    status: outcome.status,
                    matched: outcome.matched,
                    records,
                    error: outcome.error.clone(),
                }
            })
            .collect()
    }
}

/// What one input event produced, with its records copied out: the handy
/// form for assertions in tests.
///
/// ```
/// let result = weir_sdk::EventResult {
///     status: weir_sdk::Status::Emitted,
///     matched: true,
///     records: vec![br#"{"a":1}"#.to_vec()],
///     error: None,
/// };
/// assert_eq!(result.text(0), r#"{"a":1}"#);
/// assert_eq!(result.json(0)["a"], 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventResult {
    /// What happened.
    pub status: Status,
    /// Whether the event matched.
    pub matched: bool,
    /// The records it produced, in order.
    pub records: Vec<Vec<u8>>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl EventResult {
    /// Record `index` as UTF-8 text. Panics (this is for tests) when there is
    /// no such record or it is not UTF-8.
    ///
    /// ```
    /// # let result = weir_sdk::EventResult { status: weir_sdk::Status::Emitted,
    /// #     matched: true, records: vec![b"x".to_vec()], error: None };
    /// assert_eq!(result.text(0), "x");
    /// ```
    pub fn text(&self, index: usize) -> &str {
        let record = self.records.get(index).unwrap_or_else(|| {
            panic!(
                "no record {index}: the event produced {} ({self:?})",
                self.records.len()
            )
        });
        std::str::from_utf8(record).expect("record is UTF-8")
    }

    /// Record `index` parsed as JSON. Panics (this is for tests) when there is
    /// no such record or it is not JSON.
    ///
    /// ```
    /// # let result = weir_sdk::EventResult { status: weir_sdk::Status::Emitted,
    /// #     matched: true, records: vec![b"{\"a\":1}".to_vec()], error: None };
    /// assert_eq!(result.json(0)["a"], 1);
    /// ```
    pub fn json(&self, index: usize) -> serde_json::Value {
        let text = self.text(index);
        serde_json::from_str(text).unwrap_or_else(|e| panic!("record {text:?} is not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys, headers and timestamps set on some events only: every event
    /// reads back exactly what was set on it.
    #[test]
    fn optional_parts_read_back_per_event() {
        let mut batch = Batch::new("5");
        batch.push(b"a");
        batch.push(b"b").key(b"first").key(b"kb").timestamp_ms(7);
        batch.push(b"c").header("h1", b"x").header("h2", b"y");
        batch.push(b"d").key(b"").offset(99);
        batch.push(b"e");
        let event = |i| batch.event(i).unwrap();
        let keys: Vec<Option<&[u8]>> = (0..5).map(|i| event(i).key()).collect();
        assert_eq!(keys, [None, Some(&b"kb"[..]), None, Some(&b""[..]), None]);
        let headers: Vec<usize> = (0..5).map(|i| event(i).headers().len()).collect();
        assert_eq!(headers, [0, 0, 2, 0, 0]);
        assert_eq!(event(2).header("h2"), Some(&b"y"[..]));
        let timestamps: Vec<Option<i64>> = (0..5).map(|i| event(i).timestamp_ms()).collect();
        assert_eq!(timestamps, [None, Some(7), None, None, None]);
        let offsets: Vec<i64> = (0..5).map(|i| event(i).offset()).collect();
        assert_eq!(offsets, [0, 1, 2, 99, 4]);
        let values: Vec<&[u8]> = (0..5).map(|i| event(i).value()).collect();
        assert_eq!(values, [b"a", b"b", b"c", b"d", b"e"]);
    }
}
