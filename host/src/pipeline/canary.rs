//! Canary rollouts: a scenario's candidate plugin (`"canary": {"plugin":
//! "name@N", "share": 0.1}` in its document) handles a share of the
//! scenario's events in place of its plugin. Its outputs are produced, its
//! failures dead-lettered and its events counted, each naming the version
//! that made it.
//!
//! Which version an event meets is [`takes`]: a fixed hash of the record key
//! (or of the topic and partition), the same on every replica and in every
//! release, so a key keeps meeting one version. What each event met is part of
//! the cycle's result: the journal keeps the two versions' shares as two
//! scenario parts, so a replay gives every event the version it had.
//!
//! Each replica keeps [`CanaryStats`] for the partitions it owns and judges
//! them with [`verdict`]: the candidate is rolled back when its failure rate
//! passes the plugin's by the margin (or at once, when it cannot be made or
//! its failures are costly), and promoted when a `promote_after` rule is met.
//! The replica acts on a verdict from its next batch on and writes it into
//! the scenario's document, from where every replica takes it.

use serde::Serialize;

use crate::registry::{CanaryBy, CanarySpec};

/// FNV-1a, 64 bits: a fixed hash that every build and platform computes
/// alike (the standard library's hasher is seeded per process).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether the canary takes the event at `topic`/`partition`/`offset` with
/// `key`: its hash, in basis points, falls below `share_bp`.
pub fn takes(
    by: CanaryBy,
    share_bp: u32,
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
) -> bool {
    let hash = match (by, key) {
        (CanaryBy::Key, Some(key)) => fnv1a(&[key]),
        (CanaryBy::Key, None) => fnv1a(&[
            topic.as_bytes(),
            &partition.to_le_bytes(),
            &offset.to_le_bytes(),
        ]),
        (CanaryBy::Partition, _) => fnv1a(&[topic.as_bytes(), &partition.to_le_bytes()]),
    };
    (hash % 10_000) < u64::from(share_bp)
}

/// What one replica saw of a scenario's canary.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryStats {
    /// The scenario's own plugin, `name@version`.
    pub current: String,
    /// The candidate, `name@version`.
    pub candidate: String,
    /// Its share, in basis points.
    pub share_bp: u32,
    /// Since when these figures are kept, Unix ms.
    pub since_ms: i64,
    /// Events the scenario's plugin handled.
    pub current_events: u64,
    /// Of those, how many it failed.
    pub current_failed: u64,
    /// Events the candidate handled.
    pub candidate_events: u64,
    /// Of those, how many it failed.
    pub candidate_failed: u64,
    /// Time the plugin took, nanoseconds.
    pub current_ns: u64,
    /// Time the candidate took, nanoseconds.
    pub candidate_ns: u64,
    /// What was decided, once it was.
    pub verdict: Option<Verdict>,
    /// Why the candidate takes no events, when it could not load.
    pub error: Option<String>,
}

/// What becomes of a canary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// It takes no more events; why.
    RolledBack(String),
    /// It becomes the scenario's plugin; why.
    Promoted(String),
}

impl CanaryStats {
    /// Nothing seen yet of `candidate` beside `current`.
    pub fn new(current: &str, candidate: &str, share_bp: u32, now_ms: i64) -> Self {
        Self {
            current: current.to_owned(),
            candidate: candidate.to_owned(),
            share_bp,
            since_ms: now_ms,
            current_events: 0,
            current_failed: 0,
            candidate_events: 0,
            candidate_failed: 0,
            current_ns: 0,
            candidate_ns: 0,
            verdict: None,
            error: None,
        }
    }

    /// The candidate's failure rate and the plugin's (0 when it handled nothing).
    pub fn rates(&self) -> (f64, f64) {
        let rate = |failed: u64, events: u64| {
            if events == 0 {
                0.0
            } else {
                failed as f64 / events as f64
            }
        };
        (
            rate(self.candidate_failed, self.candidate_events),
            rate(self.current_failed, self.current_events),
        )
    }
}

/// The rule's answer for what `stats` saw, if it decides anything: rolled
/// back once the candidate handled `min_events` and failed more than the
/// plugin by over the margin; promoted once it handled `promote_after`
/// within it.
pub fn verdict(rule: &CanarySpec, stats: &CanaryStats) -> Option<Verdict> {
    if stats.candidate_events < rule.min_events {
        return None;
    }
    let (candidate, current) = stats.rates();
    if candidate > current + rule.rollback_margin {
        return Some(Verdict::RolledBack(format!(
            "{} failed {} of {} events ({:.2} %), {} failed {} of {} ({:.2} %); \
             the margin is {:.2} points",
            stats.candidate,
            stats.candidate_failed,
            stats.candidate_events,
            candidate * 100.0,
            stats.current,
            stats.current_failed,
            stats.current_events,
            current * 100.0,
            rule.rollback_margin * 100.0
        )));
    }
    match rule.promote_after {
        Some(after) if stats.candidate_events >= after => Some(Verdict::Promoted(format!(
            "{} handled {} events and failed {:.2} % of them, within {:.2} points of {}",
            stats.candidate,
            stats.candidate_events,
            candidate * 100.0,
            rule.rollback_margin * 100.0,
            stats.current
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::PluginRef;

    fn rule(margin: f64, min_events: u64, promote_after: Option<u64>) -> CanarySpec {
        CanarySpec {
            plugin: PluginRef {
                name: "c".into(),
                version: Some(2),
            },
            share_bp: 1_000,
            by: CanaryBy::Key,
            rollback_margin: margin,
            min_events,
            promote_after,
            rolled_back: None,
        }
    }

    fn seen(current: (u64, u64), candidate: (u64, u64)) -> CanaryStats {
        let mut stats = CanaryStats::new("c@1", "c@2", 1_000, 0);
        (stats.current_events, stats.current_failed) = current;
        (stats.candidate_events, stats.candidate_failed) = candidate;
        stats
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // These values pin the rule: changing them moves keys between
        // versions on a replay of an old journal's neighbours.
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        let pinned: Vec<bool> = (0..8)
            .map(|i| {
                takes(
                    CanaryBy::Key,
                    5_000,
                    "t",
                    0,
                    0,
                    Some(format!("k{i}").as_bytes()),
                )
            })
            .collect();
        assert_eq!(pinned, PINNED);
    }

    // Computed independently (Python, the same FNV-1a with the separator).
    const PINNED: [bool; 8] = [true, false, true, true, false, false, false, true];

    #[test]
    fn a_key_meets_one_version_whatever_its_partition_or_offset() {
        for i in 0..200 {
            let key = format!("member-{i}");
            let first = takes(CanaryBy::Key, 2_500, "a", 0, 0, Some(key.as_bytes()));
            for (topic, partition, offset) in [("a", 3, 17), ("b", 9, 1 << 40)] {
                assert_eq!(
                    takes(
                        CanaryBy::Key,
                        2_500,
                        topic,
                        partition,
                        offset,
                        Some(key.as_bytes())
                    ),
                    first
                );
            }
        }
    }

    #[test]
    fn the_share_is_close_to_what_was_asked_and_grows_by_inclusion() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("visitor-{i}")).collect();
        let taken = |bp: u32| -> Vec<bool> {
            keys.iter()
                .map(|k| takes(CanaryBy::Key, bp, "t", 0, 0, Some(k.as_bytes())))
                .collect()
        };
        let ten = taken(1_000);
        let share = ten.iter().filter(|t| **t).count() as f64 / keys.len() as f64;
        assert!((0.09..0.11).contains(&share), "{share}");
        // Raising the share keeps every key the canary had.
        let twenty = taken(2_000);
        assert!(ten.iter().zip(&twenty).all(|(a, b)| !a || *b));
        assert!(taken(10_000).iter().all(|t| *t));
        // Keyless events spread by offset; partitions go whole.
        let keyless = (0..10_000)
            .filter(|o| takes(CanaryBy::Key, 5_000, "t", 1, *o, None))
            .count();
        assert!((4_500..5_500).contains(&keyless), "{keyless}");
        for partition in 0..16 {
            let first = takes(CanaryBy::Partition, 5_000, "t", partition, 0, Some(b"x"));
            assert!((0..50).all(|o| takes(
                CanaryBy::Partition,
                5_000,
                "t",
                partition,
                o,
                Some(format!("{o}").as_bytes())
            ) == first));
        }
    }

    #[test]
    fn no_verdict_before_the_candidate_handled_enough() {
        assert_eq!(
            verdict(&rule(0.01, 100, None), &seen((1000, 0), (99, 99))),
            None
        );
    }

    #[test]
    fn a_candidate_failing_more_than_the_margin_is_rolled_back() {
        let v = verdict(&rule(0.01, 100, Some(150)), &seen((1000, 10), (100, 3)));
        match v {
            Some(Verdict::RolledBack(why)) => {
                assert!(why.contains("c@2 failed 3 of 100 events (3.00 %)"), "{why}");
                assert!(why.contains("c@1 failed 10 of 1000 (1.00 %)"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Within the margin: nothing yet, then promoted by the rule.
        let rule = rule(0.01, 100, Some(150));
        assert_eq!(verdict(&rule, &seen((1000, 10), (100, 2))), None);
        assert!(matches!(
            verdict(&rule, &seen((1000, 10), (150, 3))),
            Some(Verdict::Promoted(_))
        ));
    }

    #[test]
    fn without_a_rule_promotion_waits_for_a_command() {
        assert_eq!(
            verdict(&rule(0.0, 1, None), &seen((10, 0), (1_000_000, 0))),
            None
        );
    }
}
