//! Counters kept in the process, for the embedded defaults. The same rules as
//! `fenced_add.lua`, step for step, over the same tally encoding: a fence per
//! (topic, partition), events at or below it skipped, a batch refused when the
//! fence is below what the caller knows was counted, minute buckets dropped after
//! the retention.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::{
    Applied, BatchTally, Behind, CountersError, Gap, MinuteCounts, SuccessRatio, Totals,
    merge_applied, minute_range,
};

#[derive(Debug, Default)]
struct State {
    /// Per scenario: field (`total`, `v:<plugin>:total`, ...) → count.
    counts: HashMap<String, HashMap<String, u64>>,
    /// (topic, partition) → last applied offset.
    fences: HashMap<(String, i32), i64>,
    /// (scenario, unix minute) → [total, success, errors] and the unix minute of the
    /// last write (a bucket expires `retention` after it, like the Redis key's EXPIRE).
    minutes: HashMap<(String, i64), ([u64; 3], i64)>,
    /// Scenario → its success-ratio view.
    views: HashMap<String, SuccessRatio>,
    /// Scenario → when counting began, unix milliseconds.
    since: HashMap<String, i64>,
    /// Ranges noted as not counted.
    gaps: Vec<Gap>,
}

#[derive(Debug, Clone)]
pub(super) struct MemoryCounters {
    retention_minutes: i64,
    state: Arc<Mutex<State>>,
}

impl MemoryCounters {
    pub(super) fn new(retention_secs: u64) -> Self {
        Self {
            retention_minutes: (retention_secs / 60).max(1) as i64,
            state: Arc::default(),
        }
    }

    pub(super) fn apply(
        &self,
        tally: &BatchTally,
        now: DateTime<Utc>,
    ) -> Result<Vec<Applied>, CountersError> {
        let Some(last_offset) = tally.last() else {
            return Ok(Vec::new());
        };
        let tp = (tally.topic.clone(), tally.partition);
        let mut state = self.state.lock().expect("counters lock");
        let fence = state.fences.get(&tp).copied().unwrap_or(-1);
        if fence < tally.counted_through {
            return Err(CountersError::Behind(Behind {
                topic: tally.topic.clone(),
                partition: tally.partition,
                counted_through: fence,
                journal: None,
                expected: tally.counted_through,
            }));
        }
        let now_minute = now.timestamp().div_euclid(60);
        let retention = self.retention_minutes;
        state
            .minutes
            .retain(|_, (_, written)| now_minute - *written < retention);
        let mut applied = Vec::with_capacity(tally.scenarios.len());
        for ((scenario, _), events) in &tally.scenarios {
            let mut offset = events.first_offset;
            let mut added = Totals {
                total: 0,
                matched: 0,
                errors: 0,
                dropped: 0,
            };
            for token in events.tokens.split(' ').filter(|t| !t.is_empty()) {
                let code_at = token
                    .find(|c: char| c.is_ascii_alphabetic())
                    .expect("a code in every token");
                let delta: i64 = token[..code_at].parse().expect("a delta in every token");
                let code = token[code_at..].chars().next().expect("code");
                let bucket: usize = token[code_at + 1..]
                    .parse()
                    .expect("a bucket in every token");
                offset += delta;
                if offset <= fence {
                    continue;
                }
                let matched = code.is_ascii_uppercase();
                let failed = code.eq_ignore_ascii_case(&'f');
                added.total += 1;
                added.matched += u64::from(matched);
                added.errors += u64::from(failed);
                added.dropped += u64::from(code.eq_ignore_ascii_case(&'d'));
                let minute = events.minutes[bucket - 1];
                let (slot, written) = state.minutes.entry((scenario.clone(), minute)).or_default();
                slot[0] += 1;
                slot[1] += u64::from(matched);
                slot[2] += u64::from(failed);
                *written = now_minute;
            }
            if added.total > 0 {
                state
                    .since
                    .entry(scenario.clone())
                    .or_insert(now.timestamp_millis());
                let counts = state.counts.entry(scenario.clone()).or_default();
                for prefix in [String::new(), format!("v:{}:", events.plugin)] {
                    for (field, n) in [
                        ("total", added.total),
                        ("matched", added.matched),
                        ("errors", added.errors),
                        ("dropped", added.dropped),
                    ] {
                        *counts.entry(format!("{prefix}{field}")).or_default() += n;
                    }
                }
            }
            let totals = read(&state, scenario, "");
            state
                .views
                .insert(scenario.clone(), SuccessRatio::new(totals, now));
            applied.push(Applied {
                scenario: scenario.clone(),
                newly_counted: added.total,
                totals,
            });
        }
        if last_offset > fence {
            state.fences.insert(tp, last_offset);
        }
        Ok(merge_applied(applied))
    }

    pub(super) fn note_gap(
        &self,
        topic: &str,
        partition: i32,
        (from, until): (i64, i64),
        now: DateTime<Utc>,
    ) {
        self.state.lock().expect("counters lock").gaps.push(Gap {
            topic: topic.to_owned(),
            partition,
            from,
            until,
            noted_ms: now.timestamp_millis(),
        });
    }

    pub(super) fn fences(&self, partitions: &[(String, i32)]) -> Vec<(i64, Option<(i32, i64)>)> {
        let state = self.state.lock().expect("counters lock");
        partitions
            .iter()
            .map(|tp| (state.fences.get(tp).copied().unwrap_or(-1), None))
            .collect()
    }

    pub(super) fn gaps(&self) -> Vec<Gap> {
        self.state.lock().expect("counters lock").gaps.clone()
    }

    pub(super) fn fields(&self, scenario: &str) -> std::collections::BTreeMap<String, u64> {
        let state = self.state.lock().expect("counters lock");
        state
            .counts
            .get(scenario)
            .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    pub(super) fn since(&self, scenario: &str) -> Option<i64> {
        self.state
            .lock()
            .expect("counters lock")
            .since
            .get(scenario)
            .copied()
    }

    pub(super) fn totals(&self, scenario: &str, prefix: &str) -> Totals {
        read(&self.state.lock().expect("counters lock"), scenario, prefix)
    }

    pub(super) fn minutes(
        &self,
        scenario: &str,
        from_ms: i64,
        to_ms: i64,
        max: usize,
    ) -> Vec<MinuteCounts> {
        let state = self.state.lock().expect("counters lock");
        minute_range(from_ms, to_ms, max)
            .into_iter()
            .filter_map(|minute| {
                state.minutes.get(&(scenario.to_owned(), minute)).map(
                    |([total, success, errors], _)| MinuteCounts {
                        minute_ms: minute * 60_000,
                        total: *total,
                        success: *success,
                        errors: *errors,
                    },
                )
            })
            .collect()
    }
}

fn read(state: &State, scenario: &str, prefix: &str) -> Totals {
    let counts = state.counts.get(scenario);
    let get = |field: &str| {
        counts
            .and_then(|c| c.get(&format!("{prefix}{field}")))
            .copied()
            .unwrap_or(0)
    };
    Totals {
        total: get("total"),
        matched: get("matched"),
        errors: get("errors"),
        dropped: get("dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BatchTally, Counters, Tallied, Totals};
    use chrono::Utc;

    fn batch(range: std::ops::Range<i64>) -> BatchTally {
        let mut tally = BatchTally::new("events", 0);
        for offset in range {
            let tallied = if offset % 5 == 0 {
                Tallied::Failed
            } else {
                Tallied::Emitted
            };
            tally
                .record(
                    "5",
                    "scenario@1",
                    offset,
                    offset * 1_000,
                    tallied,
                    offset % 2 == 0,
                )
                .unwrap();
        }
        tally
    }

    #[tokio::test]
    async fn in_memory_counters_fence_replays_like_the_script() {
        let counters = Counters::in_memory(7 * 24 * 3600);
        let now = Utc::now();
        for range in [0..100, 100..170] {
            counters.apply(&batch(range), now).await.unwrap();
        }
        // A replay from offset 100 with other boundaries counts only 170..250.
        let mut newly = 0;
        for range in [100..200, 200..250] {
            newly += counters.apply(&batch(range), now).await.unwrap()[0].newly_counted;
        }
        assert_eq!(newly, 80);
        let totals = counters.totals("5").await.unwrap();
        assert_eq!(
            totals,
            Totals {
                total: 250,
                matched: 125,
                errors: 50,
                dropped: 0
            }
        );
        assert_eq!(
            counters.version_totals("5", "scenario@1").await.unwrap(),
            totals
        );
        let minutes = counters.minutes("5", 0, 250_000, 100).await.unwrap();
        assert_eq!(minutes.iter().map(|m| m.total).sum::<u64>(), 250);
        assert_eq!(minutes.len(), 5, "offsets 0..250 s span five minutes");
    }
}
