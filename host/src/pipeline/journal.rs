//! The journal: each cycle's results, committed with its outputs, so that the
//! sinks only ever see what Kafka keeps.
//!
//! A cycle's transaction carries, besides the outputs and dead letters, one or
//! more journal records per partition batch (topic `pipeline.journal_topic`,
//! keyed `<group>/<topic>/<partition>`): every scenario's outcome for every event, with
//! the output records, the event times and the cycle's processing time. The
//! sinks get the batches only after the transaction committed. When they have
//! not made all of it durable before a restart or a rebalance, the partition's
//! next owner reads those results back from the journal (where the commit's
//! metadata points, `journal=<partition>@<offset>`) instead of running the
//! plugins again: a replay reproduces exactly what the committed outputs, dead
//! letters and counters say, whatever changed since (a plugin push, a scenario
//! edit, a member import, a quarantine, a CPU deadline met under other load).
//!
//! A record is a small binary layout of our own ([`encode`]), cut into records
//! that fit the producer's `message.max.bytes`; one event's part never spans
//! two records (`produce.rs` fails an event whose outputs would not fit one).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::sink::{EventMeta, PartitionBatch, ScenarioBatch};
use crate::runtime::{BatchResult, Status};

/// The first bytes of every journal record: the layout and its version.
const MAGIC: &[u8; 4] = b"WJR1";

/// Bytes of a record's header besides the topic name.
const HEADER_FIXED: usize = 4 + 2 + 4 + 8 + 8 + 8 + 4 + 4 + 4;

/// Bytes of a scenario's header besides its id and plugin label.
const SCENARIO_FIXED: usize = 2 + 2 + 4;

/// The journal key of a source partition, for consumer group `group`: groups
/// that share a journal topic never read each other's results.
pub(crate) fn key(group: &str, topic: &str, partition: i32) -> String {
    format!("{group}/{topic}/{partition}")
}

/// The key journal records had before they carried the group; still read.
fn legacy_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Bytes one event takes in a record.
fn event_size(records: impl Iterator<Item = usize>) -> usize {
    8 + 1 + 8 + 4 + records.map(|len| 4 + len).sum::<usize>()
}

/// Whether an event with records of these sizes fits one journal record of at
/// most `budget` bytes, beside its batch's and scenario's headers.
pub(crate) fn event_fits(
    budget: usize,
    topic: &str,
    scenario: &str,
    plugin: &str,
    records: impl Iterator<Item = usize>,
) -> bool {
    HEADER_FIXED
        + topic.len()
        + SCENARIO_FIXED
        + scenario.len()
        + plugin.len()
        + event_size(records)
        <= budget
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

fn status_code(status: Status) -> u8 {
    match status {
        Status::Dropped => 0,
        Status::Emitted => 1,
        Status::Failed => 2,
    }
}

/// A record being filled: its bytes, where its scenario count and the current
/// scenario's event count sit, and those counts.
struct Open {
    bytes: Vec<u8>,
    scenarios_at: usize,
    scenarios: u32,
    events_at: usize,
    events: u32,
}

/// The journal records of one partition batch, none over `budget` bytes
/// unless a single event needs more (which `produce.rs` prevents). A batch
/// without scenario events still gets one record, so a replay knows the range
/// was handled.
pub(crate) fn encode(batch: &PartitionBatch, budget: usize) -> Vec<Vec<u8>> {
    // Each record's buffer is allocated once, for what is left of the batch
    // (at most the budget), rather than grown.
    let whole: usize = HEADER_FIXED
        + batch.topic.len()
        + batch
            .scenarios
            .iter()
            .map(|scenario| {
                SCENARIO_FIXED
                    + scenario.scenario.len()
                    + scenario.plugin.len()
                    + scenario
                        .result
                        .outcomes()
                        .iter()
                        .map(|o| event_size(scenario.result.records(o).map(<[u8]>::len)))
                        .sum::<usize>()
            })
            .sum::<usize>();
    let written = std::cell::Cell::new(0usize);
    let start = |index: u32| {
        let left = whole.saturating_sub(written.get()) + HEADER_FIXED + batch.topic.len();
        let mut bytes = Vec::with_capacity(left.clamp(256, budget.max(256)));
        bytes.extend_from_slice(MAGIC);
        put_str(&mut bytes, &batch.topic);
        bytes.extend_from_slice(&batch.partition.to_le_bytes());
        bytes.extend_from_slice(&batch.first_offset.to_le_bytes());
        bytes.extend_from_slice(&batch.last_offset.to_le_bytes());
        bytes.extend_from_slice(&batch.processed_ms.to_le_bytes());
        bytes.extend_from_slice(&index.to_le_bytes());
        // The record count, patched at the end.
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let scenarios_at = bytes.len();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        Open {
            bytes,
            scenarios_at,
            scenarios: 0,
            events_at: 0,
            events: 0,
        }
    };
    let close = |open: &mut Open| {
        if open.scenarios > 0 {
            open.bytes[open.events_at..open.events_at + 4]
                .copy_from_slice(&open.events.to_le_bytes());
        }
        open.bytes[open.scenarios_at..open.scenarios_at + 4]
            .copy_from_slice(&open.scenarios.to_le_bytes());
    };
    let begin_scenario = |open: &mut Open, scenario: &ScenarioBatch| {
        if open.scenarios > 0 {
            open.bytes[open.events_at..open.events_at + 4]
                .copy_from_slice(&open.events.to_le_bytes());
        }
        put_str(&mut open.bytes, &scenario.scenario);
        put_str(&mut open.bytes, &scenario.plugin);
        open.events_at = open.bytes.len();
        open.bytes.extend_from_slice(&0u32.to_le_bytes());
        open.scenarios += 1;
        open.events = 0;
    };
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut open = start(0);
    for scenario in &batch.scenarios {
        let mut begun = false;
        for (event, outcome) in scenario.events.iter().zip(scenario.result.outcomes()) {
            let size = event_size(scenario.result.records(outcome).map(<[u8]>::len));
            let header = if begun {
                0
            } else {
                SCENARIO_FIXED + scenario.scenario.len() + scenario.plugin.len()
            };
            if open.events > 0 && open.bytes.len() + header + size > budget {
                close(&mut open);
                written.set(written.get() + open.bytes.len());
                done.push(std::mem::replace(&mut open, start(done.len() as u32 + 1)).bytes);
                begun = false;
            }
            if !begun {
                begin_scenario(&mut open, scenario);
                begun = true;
            }
            let bytes = &mut open.bytes;
            bytes.extend_from_slice(&event.offset.to_le_bytes());
            let mut flags = status_code(outcome.status);
            if outcome.matched {
                flags |= 0x10;
            }
            if event.timestamp_ms.is_some() {
                flags |= 0x20;
            }
            bytes.push(flags);
            bytes.extend_from_slice(&event.timestamp_ms.unwrap_or(0).to_le_bytes());
            let records = scenario.result.records(outcome);
            bytes.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for record in records {
                bytes.extend_from_slice(&(record.len() as u32).to_le_bytes());
                bytes.extend_from_slice(record);
            }
            open.events += 1;
        }
    }
    close(&mut open);
    done.push(open.bytes);
    let count = (done.len() as u32).to_le_bytes();
    let count_at = 4 + 2 + batch.topic.len().min(usize::from(u16::MAX)) + 4 + 8 + 8 + 8 + 4;
    for record in &mut done {
        record[count_at..count_at + 4].copy_from_slice(&count);
    }
    done
}

/// One journal record read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    /// The partition batch's part in this record (its scenarios' events here).
    pub(crate) batch: PartitionBatch,
    /// Which record of the batch this is, from 0.
    pub(crate) index: u32,
    /// How many records the batch has.
    pub(crate) count: u32,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("the record ends early (at byte {})", self.at))?;
        let part = &self.bytes[self.at..end];
        self.at = end;
        Ok(part)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<String, String> {
        let len = u16::from_le_bytes(self.array()?);
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_owned())
    }
}

/// Reads one journal record. Anything that is not a whole record of this
/// layout is an error, never a panic: the topic is ours, but anyone allowed to
/// write it could put anything there.
pub(crate) fn decode(bytes: &[u8]) -> Result<Piece, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err("not a journal record of this version".into());
    }
    let topic = r.str()?;
    let partition = i32::from_le_bytes(r.array()?);
    let first_offset = r.i64()?;
    let last_offset = r.i64()?;
    let processed_ms = r.i64()?;
    let index = r.u32()?;
    let count = r.u32()?;
    let scenarios = r.u32()?;
    let mut batch = PartitionBatch {
        topic,
        partition,
        first_offset,
        last_offset,
        processed_ms,
        scenarios: Vec::new(),
        ..PartitionBatch::default()
    };
    for _ in 0..scenarios {
        let scenario = r.str()?;
        let plugin = r.str()?;
        let events = r.u32()?;
        let mut metas = Vec::new();
        let mut result = BatchResult::default();
        for _ in 0..events {
            let offset = r.i64()?;
            let [flags] = r.array()?;
            let timestamp = r.i64()?;
            let status = match flags & 0x0f {
                0 => Status::Dropped,
                1 => Status::Emitted,
                2 => Status::Failed,
                other => return Err(format!("unknown status {other}")),
            };
            let n = r.u32()?;
            let mut records = Vec::new();
            for _ in 0..n {
                let len = r.u32()? as usize;
                records.push(r.take(len)?);
            }
            result.push_outcome(status, flags & 0x10 != 0, None, records);
            metas.push(EventMeta {
                offset,
                timestamp_ms: (flags & 0x20 != 0).then_some(timestamp),
            });
        }
        batch.scenarios.push(ScenarioBatch {
            scenario,
            plugin,
            events: metas,
            result,
        });
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes past the end", bytes.len() - r.at));
    }
    if index >= count {
        return Err(format!("record {index} of {count}"));
    }
    Ok(Piece {
        batch,
        index,
        count,
    })
}

/// Joins the pieces of one partition batch, in their order, keeping only the
/// events from `from` on (below it everything is durable already).
fn join(pieces: Vec<Piece>, from: i64) -> PartitionBatch {
    // A scenario with a canary has two parts, one per version (`canary.rs`).
    let mut by_scenario: BTreeMap<(String, String), ScenarioBatch> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    let mut head: Option<PartitionBatch> = None;
    for piece in pieces {
        for part in piece.batch.scenarios.iter() {
            let part_key = (part.scenario.clone(), part.plugin.clone());
            let into = by_scenario.entry(part_key.clone()).or_insert_with(|| {
                order.push(part_key);
                ScenarioBatch {
                    scenario: part.scenario.clone(),
                    plugin: part.plugin.clone(),
                    events: Vec::new(),
                    result: BatchResult::default(),
                }
            });
            for (event, outcome) in part.events.iter().zip(part.result.outcomes()) {
                if event.offset < from {
                    continue;
                }
                into.events.push(*event);
                into.result.push_outcome(
                    outcome.status,
                    outcome.matched,
                    None,
                    part.result.records(outcome),
                );
            }
        }
        head.get_or_insert(PartitionBatch {
            scenarios: Vec::new(),
            ..piece.batch
        });
    }
    let mut batch = head.expect("at least one piece");
    batch.first_offset = batch.first_offset.max(from);
    batch.scenarios = order
        .into_iter()
        .filter_map(|id| by_scenario.remove(&id))
        .filter(|scenario| !scenario.events.is_empty())
        .collect();
    batch
}

/// Where a journal record of a partition sits, and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    /// The source batch's last offset.
    pub(crate) last: i64,
    /// Journal partition and offset.
    pub(crate) at: (i32, i64),
}

/// Journal records of a partition that a replay may still need, in source order.
#[derive(Debug, Default)]
pub(crate) struct Placements {
    by_partition: HashMap<(String, i32), VecDeque<Placed>>,
}

impl Placements {
    /// Notes a record of `tp` (records arrive in source order).
    pub(crate) fn note(&mut self, tp: &(String, i32), placed: Placed) {
        let list = self.by_partition.entry(tp.clone()).or_default();
        if list.back().is_none_or(|back| back.last <= placed.last) {
            list.push_back(placed);
        }
    }

    /// Where a replay from `commit` must start reading: the first record of a
    /// batch that reaches `commit`.
    pub(crate) fn from(&self, tp: &(String, i32), commit: i64) -> Option<(i32, i64)> {
        self.by_partition
            .get(tp)?
            .iter()
            .find(|placed| placed.last >= commit)
            .map(|placed| placed.at)
    }

    /// Forgets the records of batches wholly below `commit`.
    pub(crate) fn committed(&mut self, tp: &(String, i32), commit: i64) {
        if let Some(list) = self.by_partition.get_mut(tp) {
            while list.front().is_some_and(|placed| placed.last < commit) {
                list.pop_front();
            }
        }
    }

    /// Forgets a partition (revoked, or its position read again).
    pub(crate) fn forget(&mut self, tp: &(String, i32)) {
        self.by_partition.remove(tp);
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.by_partition.clear();
    }
}

/// The producer's context: notes where each journal record was written (the
/// record's delivery opaque is a tag, 0 for every other record).
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    placed: Mutex<HashMap<usize, (i32, i64)>>,
}

impl Deliveries {
    /// Where the record sent with `tag` was written, once it was; forgets it.
    pub(crate) fn take(&self, tag: usize) -> Option<(i32, i64)> {
        self.placed.lock().expect("deliveries lock").remove(&tag)
    }

    /// Forgets every noted delivery (a transaction was aborted).
    pub(crate) fn clear(&self) {
        self.placed.lock().expect("deliveries lock").clear();
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        if tag == 0 {
            return;
        }
        if let Ok(message) = result {
            self.placed
                .lock()
                .expect("deliveries lock")
                .insert(tag, (message.partition(), message.offset()));
        }
    }
}

/// What a replay read back for one source partition.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The batches, in source order, cut to the replayed range.
    pub(crate) batches: Vec<PartitionBatch>,
    /// Where each batch's first record sits, for the next commit's metadata.
    pub(crate) placed: Vec<Placed>,
    /// The first offset of the range the journal did not have (its records were
    /// deleted by retention, or the commit predates the journal); `None` when
    /// it had all of it.
    pub(crate) missing_from: Option<i64>,
}

impl Replay {
    /// How many scenario events the batches hold.
    pub(crate) fn events(&self) -> usize {
        self.batches
            .iter()
            .flat_map(|b| &b.scenarios)
            .map(|s| s.events.len())
            .sum()
    }

    /// The batches, each with where the journal holds it.
    pub(crate) fn placed_batches(&self) -> Vec<PartitionBatch> {
        self.batches
            .iter()
            .zip(&self.placed)
            .map(|(batch, placed)| PartitionBatch {
                journal: Some(placed.at),
                ..batch.clone()
            })
            .collect()
    }
}

/// Reads the results of `topic`/`partition` for offsets `from..until` back from
/// the journal, starting at `at` (partition, offset). Waits at most `timeout`
/// (the journal is read with `read_committed`, so another replica's open
/// transaction holds it back until it ends).
pub(crate) fn read(
    reader: &BaseConsumer,
    (journal_topic, group): (&str, &str),
    (topic, partition): (&str, i32),
    (from, until): (i64, i64),
    at: Option<(i32, i64)>,
    timeout: Duration,
) -> Result<Replay, KafkaError> {
    let mut replay = Replay::default();
    let Some((journal_partition, journal_offset)) = at else {
        replay.missing_from = Some(from);
        return Ok(replay);
    };
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(
        journal_topic,
        journal_partition,
        Offset::Offset(journal_offset),
    )?;
    reader.assign(&assignment)?;
    let wanted = key(group, topic, partition);
    let legacy = legacy_key(topic, partition);
    let started = Instant::now();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut first_at: Option<(i32, i64)> = None;
    let mut reached = from;
    let outcome = loop {
        if reached >= until {
            break Ok(());
        }
        let Some(left) = timeout.checked_sub(started.elapsed()) else {
            break Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        };
        match reader.poll(left.min(Duration::from_millis(200))) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // With read_committed, the end reported may be where another
                // replica's open transaction begins, with committed records of
                // ours after it: only at the high watermark is the range missing.
                let (_, high) = reader.fetch_watermarks(journal_topic, journal_partition, left)?;
                let at = reader
                    .position()?
                    .find_partition(journal_topic, journal_partition)
                    .and_then(|element| element.offset().to_raw())
                    .filter(|&offset| offset >= 0)
                    .unwrap_or(journal_offset);
                if at >= high {
                    replay.missing_from = Some(reached);
                    break Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The records were deleted (retention): what is left of the range is missing.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
            ))) => {
                replay.missing_from = Some(reached);
                break Ok(());
            }
            Some(Err(err)) => break Err(err),
            Some(Ok(message)) => {
                if message.key() != Some(wanted.as_bytes())
                    && message.key() != Some(legacy.as_bytes())
                {
                    continue;
                }
                let piece = match decode(message.payload().unwrap_or_default()) {
                    Ok(piece) => piece,
                    Err(why) => {
                        tracing::error!(
                            journal_partition,
                            offset = message.offset(),
                            error = %why,
                            "a journal record cannot be read; it is passed over"
                        );
                        continue;
                    }
                };
                if piece.batch.last_offset < from {
                    continue;
                }
                if piece.index == 0 {
                    pieces.clear();
                    first_at = Some((message.partition(), message.offset()));
                } else if pieces.last().is_none_or(|last| {
                    last.index + 1 != piece.index
                        || last.batch.first_offset != piece.batch.first_offset
                }) {
                    // A piece without those before it: from a batch whose start
                    // lies before `at`, already durable.
                    continue;
                }
                let (index, count, last) = (piece.index, piece.count, piece.batch.last_offset);
                pieces.push(piece);
                if index + 1 == count {
                    let batch = join(std::mem::take(&mut pieces), reached);
                    replay.placed.push(Placed {
                        last,
                        at: first_at.take().expect("a first piece"),
                    });
                    reached = last + 1;
                    batch_into(&mut replay.batches, batch, until);
                }
            }
        }
    };
    let _ = reader.unassign();
    outcome.map(|()| replay)
}

/// Keeps `batch`'s events below `until` (the produced mark: past it nothing
/// was produced by the run that wrote the journal).
fn batch_into(batches: &mut Vec<PartitionBatch>, mut batch: PartitionBatch, until: i64) {
    for scenario in &mut batch.scenarios {
        let keep = scenario
            .events
            .iter()
            .take_while(|e| e.offset < until)
            .count();
        if keep < scenario.events.len() {
            let mut result = BatchResult::default();
            for outcome in &scenario.result.outcomes()[..keep] {
                result.push_outcome(
                    outcome.status,
                    outcome.matched,
                    None,
                    scenario.result.records(outcome),
                );
            }
            scenario.events.truncate(keep);
            scenario.result = result;
        }
    }
    batch.last_offset = batch.last_offset.min(until - 1);
    batches.push(batch);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(id: &str, events: &[(i64, Status, bool, &[&str])]) -> ScenarioBatch {
        let mut result = BatchResult::default();
        let mut metas = Vec::new();
        for &(offset, status, matched, records) in events {
            result.push_outcome(status, matched, None, records.iter().map(|r| r.as_bytes()));
            metas.push(EventMeta {
                offset,
                timestamp_ms: (offset % 2 == 0).then_some(1_700_000_000_000 + offset),
            });
        }
        ScenarioBatch {
            scenario: id.into(),
            plugin: format!("plugin-{id}@3"),
            events: metas,
            result,
        }
    }

    fn batch() -> PartitionBatch {
        PartitionBatch {
            topic: "events".into(),
            partition: 4,
            first_offset: 100,
            last_offset: 105,
            processed_ms: 1_765_000_000_000,
            scenarios: vec![
                scenario(
                    "7",
                    &[
                        (100, Status::Emitted, true, &["{\"a\":1}", "{\"a\":2}"]),
                        (101, Status::Dropped, false, &[]),
                        (103, Status::Failed, false, &[]),
                        (105, Status::Emitted, false, &["{}"]),
                    ],
                ),
                scenario("9", &[(102, Status::Emitted, true, &["x"; 3])]),
                // Scenario 7's canary: a second part, by its own version.
                ScenarioBatch {
                    plugin: "plugin-7@4".into(),
                    ..scenario("7", &[(104, Status::Emitted, true, &["{\"b\":1}"])])
                },
            ],
            ..PartitionBatch::default()
        }
    }

    #[test]
    fn a_batch_comes_back_from_its_records_whatever_the_cut() {
        let whole = batch();
        for budget in [10_000, 200, 120, 1] {
            let records = encode(&whole, budget);
            if budget == 10_000 {
                assert_eq!(records.len(), 1);
            } else {
                assert!(records.len() > 1, "budget {budget}");
            }
            for record in &records {
                // Only a record holding one event may pass the budget.
                let piece = decode(record).expect("decodes");
                let events: usize = piece.batch.scenarios.iter().map(|s| s.events.len()).sum();
                assert!(record.len() <= budget || events == 1, "budget {budget}");
            }
            let pieces: Vec<Piece> = records.iter().map(|r| decode(r).unwrap()).collect();
            assert!(
                pieces
                    .iter()
                    .enumerate()
                    .all(|(i, p)| p.index as usize == i && p.count as usize == records.len())
            );
            assert_eq!(join(pieces, 0), whole, "budget {budget}");
        }
    }

    #[test]
    fn a_batch_without_scenario_events_still_has_a_record() {
        let empty = PartitionBatch {
            scenarios: Vec::new(),
            ..batch()
        };
        let records = encode(&empty, 1_000);
        assert_eq!(records.len(), 1);
        assert_eq!(join(vec![decode(&records[0]).unwrap()], 0), empty);
    }

    #[test]
    fn a_replay_keeps_only_its_range() {
        let whole = batch();
        let pieces = encode(&whole, 10_000)
            .iter()
            .map(|r| decode(r).unwrap())
            .collect();
        let from_102 = join(pieces, 102);
        assert_eq!(from_102.first_offset, 102);
        let offsets: Vec<Vec<i64>> = from_102
            .scenarios
            .iter()
            .map(|s| s.events.iter().map(|e| e.offset).collect())
            .collect();
        assert_eq!(offsets, vec![vec![103, 105], vec![102], vec![104]]);
        let mut batches = Vec::new();
        batch_into(&mut batches, from_102, 104);
        assert_eq!(batches[0].last_offset, 103);
        assert_eq!(batches[0].scenarios[0].events.len(), 1);
        assert_eq!(batches[0].scenarios[0].result.outcomes().len(), 1);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let record = encode(&batch(), 10_000).remove(0);
        for cut in 0..record.len() {
            assert!(decode(&record[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut bad_status = record.clone();
        // The first event's flags sit after the headers and its offset.
        let at = HEADER_FIXED + "events".len() + SCENARIO_FIXED + 1 + "plugin-7@3".len() + 8;
        bad_status[at] = 0x0f;
        assert!(decode(&bad_status).unwrap_err().contains("status"));
        assert!(decode(b"WJR0rest").is_err());
    }

    #[test]
    fn placements_point_at_the_first_batch_a_replay_needs() {
        let tp = ("events".to_owned(), 0);
        let mut placed = Placements::default();
        placed.note(
            &tp,
            Placed {
                last: 99,
                at: (2, 10),
            },
        );
        placed.note(
            &tp,
            Placed {
                last: 199,
                at: (2, 14),
            },
        );
        placed.note(
            &tp,
            Placed {
                last: 299,
                at: (2, 20),
            },
        );
        assert_eq!(placed.from(&tp, 50), Some((2, 10)));
        assert_eq!(placed.from(&tp, 100), Some((2, 14)));
        assert_eq!(placed.from(&tp, 299), Some((2, 20)));
        assert_eq!(placed.from(&tp, 300), None);
        placed.committed(&tp, 150);
        assert_eq!(placed.from(&tp, 0), Some((2, 14)));
        placed.forget(&tp);
        assert_eq!(placed.from(&tp, 0), None);
    }
}
