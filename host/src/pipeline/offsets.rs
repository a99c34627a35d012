//! The commit arithmetic: where each partition stands and what a commit may
//! say about it, as plain functions over plain data.
//!
//! Three marks per partition: `produced` (every offset below it has its outputs,
//! dead letters and journal records in a committed transaction), `handed` (every
//! offset below it went through a cycle or a replay) and `committed` (the
//! consumer group's offset). The commit stops at the first event a sink has not
//! made durable (not handed to it yet, or held in the archive's open files),
//! while `produced` moves on; the commit's metadata carries `produced`
//! ([`PRODUCED_METADATA`]) and where the journal holds the range's results
//! ([`metadata`]), so a restart or the partition's next owner gives the range
//! between the two to the sinks only, read back from the journal.

/// Prefix of the committed offset's metadata that carries the produced mark.
pub const PRODUCED_METADATA: &str = "weir:produced=";

/// What follows the produced mark in the metadata when a replay is due:
/// `;journal=<partition>@<offset>`, where the journal's records of the range
/// begin (see `journal.rs`).
const JOURNAL_METADATA: &str = ";journal=";

/// The metadata a commit carries: the produced mark, and where the journal
/// holds the results of the range a replay must give the sinks.
pub(crate) fn metadata(produced: i64, journal: Option<(i32, i64)>) -> String {
    match journal {
        Some((partition, offset)) => {
            format!("{PRODUCED_METADATA}{produced}{JOURNAL_METADATA}{partition}@{offset}")
        }
        None => format!("{PRODUCED_METADATA}{produced}"),
    }
}

/// Where a partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// Outputs and dead letters were produced for every offset below this.
    pub(crate) produced: i64,
    /// Every offset below this was handed to the sinks (known once a cycle ran).
    pub(crate) handed: Option<i64>,
    /// The committed offset, when there is one.
    pub(crate) committed: Option<i64>,
    /// Where the journal's records of a replay's range begin, as the commit's
    /// metadata gives it (journal partition, offset).
    pub(crate) journal: Option<(i32, i64)>,
}

impl Position {
    /// A partition as its committed offset and metadata leave it: produced up to
    /// the mark in the metadata, else up to the committed offset, else nothing.
    pub(crate) fn from_commit(committed: Option<i64>, metadata: &str) -> Self {
        let (mark, journal) = match metadata.split_once(JOURNAL_METADATA) {
            Some((mark, at)) => (mark, at),
            None => (metadata, ""),
        };
        let produced = mark
            .strip_prefix(PRODUCED_METADATA)
            .and_then(|n| n.parse::<i64>().ok())
            .or(committed)
            .unwrap_or(0);
        let journal = journal.split_once('@').and_then(|(partition, offset)| {
            Some((partition.parse::<i32>().ok()?, offset.parse::<i64>().ok()?))
        });
        Self {
            produced,
            handed: None,
            committed,
            journal,
        }
    }

    /// Whether offsets below `produced` but at or above the commit must go to
    /// the sinks again, and only to them.
    pub(crate) fn replays(&self) -> bool {
        self.committed.is_some_and(|c| self.produced > c)
    }

    /// What to commit after a cycle that handled this partition up to
    /// `last_done` (inclusive; `None` when the cycle did not touch it, as on an
    /// idle turn), with sinks holding rows from `held` on: the offset to commit,
    /// the produced mark, and the position after the commit. `None` when there
    /// is nothing to commit: no cycle ran on the partition yet, or an idle turn
    /// would commit what is committed already.
    pub(crate) fn commit(
        &self,
        last_done: Option<i64>,
        held: Option<i64>,
    ) -> Option<(i64, i64, Position)> {
        // A replay may have handed more than the cycle's last event: the
        // consumer still delivers what the journal already gave the sinks.
        let handed = last_done.map(|last| last + 1).max(self.handed)?;
        let produced = self.produced.max(handed);
        let commit = held.map_or(handed, |held| held.min(handed));
        if last_done.is_none() && self.committed == Some(commit) {
            return None;
        }
        Some((
            commit,
            produced,
            Position {
                produced,
                handed: Some(handed),
                committed: Some(commit),
                journal: None,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(produced: i64, handed: Option<i64>, committed: Option<i64>) -> Position {
        Position {
            produced,
            handed,
            committed,
            journal: None,
        }
    }

    #[test]
    fn a_position_comes_back_from_the_commit_and_its_metadata() {
        assert_eq!(Position::from_commit(None, ""), at(0, None, None));
        assert_eq!(
            Position::from_commit(Some(100), ""),
            at(100, None, Some(100))
        );
        let ahead = Position::from_commit(Some(100), "weir:produced=250");
        assert_eq!(ahead, at(250, None, Some(100)));
        assert!(ahead.replays());
        // Metadata of another writer, or damaged: the commit alone counts.
        assert_eq!(
            Position::from_commit(Some(100), "weir:produced=lots"),
            at(100, None, Some(100))
        );
        assert_eq!(
            Position::from_commit(Some(7), "other"),
            at(7, None, Some(7))
        );
        assert!(!Position::from_commit(Some(7), "weir:produced=7").replays());
    }

    #[test]
    fn the_journal_pointer_rides_in_the_metadata() {
        assert_eq!(metadata(250, None), "weir:produced=250");
        let text = metadata(250, Some((3, 9_001)));
        assert_eq!(text, "weir:produced=250;journal=3@9001");
        let back = Position::from_commit(Some(100), &text);
        assert_eq!(back.produced, 250);
        assert_eq!(back.journal, Some((3, 9_001)));
        assert!(back.replays());
        // A damaged pointer is no pointer: the replay reports the range missing.
        for bad in [
            "weir:produced=250;journal=x@1",
            "weir:produced=250;journal=3",
        ] {
            let back = Position::from_commit(Some(100), bad);
            assert_eq!((back.produced, back.journal), (250, None), "{bad}");
        }
    }

    #[test]
    fn a_cycle_commits_past_what_it_handled_unless_a_sink_holds_it_back() {
        // The first cycle on a fresh partition.
        let fresh = at(0, None, None);
        assert_eq!(
            fresh.commit(Some(99), None),
            Some((100, 100, at(100, Some(100), Some(100))))
        );
        // A sink holds rows from 60: the commit stays there, produced moves on.
        assert_eq!(
            fresh.commit(Some(99), Some(60)),
            Some((60, 100, at(100, Some(100), Some(60))))
        );
        // A sink holding rows beyond the cycle does not push the commit past it.
        assert_eq!(
            fresh.commit(Some(99), Some(500)),
            Some((100, 100, at(100, Some(100), Some(100))))
        );
    }

    #[test]
    fn a_replay_keeps_the_produced_mark_ahead_of_the_commit() {
        // Restarted with outputs produced up to 250 and the commit at 100: the
        // replay of 100..199 goes to the sinks only, and the mark stays at 250.
        let restarted = Position::from_commit(Some(100), "weir:produced=250");
        assert_eq!(
            restarted.commit(Some(199), None),
            Some((200, 250, at(250, Some(200), Some(200))))
        );
        // Replayed from the journal up to the mark, the cycle that follows
        // (on events the consumer still delivers from below the mark) does not
        // take the commit back below what the replay handed.
        let replayed = at(250, Some(250), Some(100));
        assert_eq!(
            replayed.commit(Some(199), None),
            Some((250, 250, at(250, Some(250), Some(250))))
        );
        // Past the mark, production resumes and the mark follows the commit.
        let caught_up = at(250, Some(200), Some(200));
        assert_eq!(
            caught_up.commit(Some(299), None),
            Some((300, 300, at(300, Some(300), Some(300))))
        );
    }

    #[test]
    fn an_idle_turn_commits_only_what_sinks_released() {
        let held_back = at(300, Some(300), Some(150));
        // Still held at 150: nothing new to commit.
        assert_eq!(held_back.commit(None, Some(150)), None);
        // Released to 250, then entirely: the commit follows.
        assert_eq!(
            held_back.commit(None, Some(250)),
            Some((250, 300, at(300, Some(300), Some(250))))
        );
        assert_eq!(
            held_back.commit(None, None),
            Some((300, 300, at(300, Some(300), Some(300))))
        );
        // A partition assigned but never run: nothing at all.
        assert_eq!(at(40, None, Some(40)).commit(None, None), None);
    }
}
