//! What the producer will take: the size rules that keep one record from
//! failing a whole cycle.
//!
//! librdkafka refuses, synchronously and before sending, any message whose
//! value, key and headers together pass the producer's `message.max.bytes`
//! (1,000,000 by default). A refusal inside a cycle would fail the cycle, and
//! its retry would meet the same record for ever. So the pipeline decides
//! before it sends, from sizes alone (which a replay sees the same way):
//!
//! - an output record that would not fit fails its event (`output_limit`,
//!   to the dead-letter topic), before any record of that event is sent; so
//!   does an event whose records together would not fit one journal record
//!   (see `journal.rs`);
//! - a dead letter whose source value (or key) would not fit carries the first
//!   [`DEAD_LETTER_PREVIEW`] bytes of the value (and no key when the key is too
//!   large), with [`HEADER_VALUE_SIZE`] giving the original size.

use std::collections::BTreeMap;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room kept for librdkafka's own per-message and per-header overhead.
const OVERHEAD: usize = 512;

/// Bytes of a source value a truncated dead letter keeps.
pub const DEAD_LETTER_PREVIEW: usize = 64 << 10;

/// Header of a dead letter whose value was cut: the source value's full size.
pub const HEADER_VALUE_SIZE: &str = "weir-value-size";

/// Header of a dead letter whose source key was too large to keep: its size.
pub const HEADER_KEY_SIZE: &str = "weir-key-size";

/// The producer's `message.max.bytes`, from the extra librdkafka settings.
pub(crate) fn message_limit(kafka: &BTreeMap<String, String>) -> Result<usize, String> {
    match kafka.get("message.max.bytes") {
        None => Ok(DEFAULT_MESSAGE_MAX_BYTES),
        Some(text) => text.trim().parse::<usize>().map_err(|_| {
            format!("pipeline.kafka.\"message.max.bytes\" = {text:?}: expected a number of bytes")
        }),
    }
}

/// Whether a message of these parts fits under `limit`.
pub(crate) fn fits(limit: usize, value: usize, key: usize, headers: &[(&str, &str)]) -> bool {
    let headers: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    value + key + headers + OVERHEAD <= limit
}

/// The largest journal record for source `topic`: what the producer takes
/// with the record's key.
pub(crate) fn journal_budget(limit: usize, topic: &str) -> usize {
    limit.saturating_sub(OVERHEAD + topic.len() + 12)
}

/// What a dead letter of a source value of `value` bytes and key of `key`
/// bytes carries: `(value bytes kept, whether the key is kept)`.
pub(crate) fn dead_letter_parts(
    limit: usize,
    value: usize,
    key: usize,
    headers: &[(&str, &str)],
) -> (usize, bool) {
    if fits(limit, value, key, headers) {
        return (value, true);
    }
    let keep_key = key <= DEAD_LETTER_PREVIEW;
    (
        value.min(DEAD_LETTER_PREVIEW),
        keep_key && fits(limit, value.min(DEAD_LETTER_PREVIEW), key, headers),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_comes_from_the_producer_settings() {
        assert_eq!(message_limit(&BTreeMap::new()), Ok(1_000_000));
        let set = BTreeMap::from([("message.max.bytes".to_owned(), "2000000".to_owned())]);
        assert_eq!(message_limit(&set), Ok(2_000_000));
        let bad = BTreeMap::from([("message.max.bytes".to_owned(), "big".to_owned())]);
        assert!(
            message_limit(&bad)
                .unwrap_err()
                .contains("expected a number")
        );
    }

    #[test]
    fn value_key_and_headers_count_together() {
        let headers = [("weir-scenario", "5")];
        assert!(fits(1_000_000, 900_000, 10, &headers));
        assert!(!fits(1_000_000, 999_990, 0, &[]));
        assert!(!fits(1_000_000, 999_000, 1_000, &headers));
    }

    #[test]
    fn an_oversized_dead_letter_keeps_a_preview_and_a_small_key() {
        let headers = [("weir-reason", "unknown_scenario")];
        assert_eq!(dead_letter_parts(1_000_000, 300, 8, &headers), (300, true));
        assert_eq!(
            dead_letter_parts(1_000_000, 1_000_100, 8, &headers),
            (DEAD_LETTER_PREVIEW, true)
        );
        // A key too large to keep goes; the value preview stays.
        assert_eq!(
            dead_letter_parts(1_000_000, 10, 999_700, &headers),
            (10, false)
        );
    }
}
