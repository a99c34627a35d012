//! librdkafka's transactional calls, bounded in time.
//!
//! `send_offsets_to_transaction` can wait for ever. librdkafka 2.12 gives its
//! request to the group coordinator a timeout but never checks it, and when the
//! broker it remembers as that coordinator drops out of the metadata (a broker
//! killed: KRaft fences it once its session runs out) the request waits until
//! some broker's connection changes state, which may take minutes. The pipeline's
//! thread would wait with it: every partition of the replica stands still, and
//! no failed cycle says so.
//!
//! So the pipeline makes its transactional calls through [`bounded`]. The call
//! runs on a thread of its own, holding its own handle on the producer, and the
//! pipeline waits for it [`MARGIN`] longer than the call's own timeout (so a
//! call that honours its timeout always answers first). A call that has not
//! answered by then is left to its thread with the producer it holds (a producer
//! is never dropped under a call), and the caller gets [`CallError::Hung`]. The
//! pipeline then makes a new producer under the same transactional id: its
//! `init_transactions` fences the stuck one and aborts the open transaction, so
//! the cycle's retry loses and doubles nothing.

use std::sync::mpsc;
use std::time::Duration;

/// How much longer than its own timeout a call is waited for.
pub(super) const MARGIN: Duration = Duration::from_secs(10);

/// Why a bounded call gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The call did not return in time; it is left running on its thread.
    #[error("{call} did not return within {} s; the producer is made again", .waited.as_secs())]
    Hung {
        call: &'static str,
        waited: Duration,
    },
    /// The call's thread ended without an answer (it panicked).
    #[error("{call} ended without an answer; the producer is made again")]
    Died { call: &'static str },
    /// No thread could be started for the call; it was not made.
    #[error("{call}: no thread for the call: {source}")]
    Thread {
        call: &'static str,
        source: std::io::Error,
    },
}

/// Runs `work` (the transactional call `call`, whose own timeout is `timeout`)
/// on a thread of its own and waits for its answer at most `timeout` +
/// `margin`.
pub(super) fn bounded<T: Send + 'static>(
    call: &'static str,
    timeout: Duration,
    margin: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CallError> {
    let (answer, answered) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("weir-txn-call".to_owned())
        .spawn(move || {
            // The caller may have stopped waiting: then nobody hears it.
            let _ = answer.send(work());
        })
        .map_err(|source| CallError::Thread { call, source })?;
    let waited = timeout + margin;
    answered.recv_timeout(waited).map_err(|lost| match lost {
        mpsc::RecvTimeoutError::Timeout => CallError::Hung { call, waited },
        mpsc::RecvTimeoutError::Disconnected => CallError::Died { call },
    })
}

impl CallError {
    /// Whether the producer's state is unknown after it: the call may still
    /// be running, or died half-way.
    pub(crate) fn leaves_producer_unknown(&self) -> bool {
        matches!(self, CallError::Hung { .. } | CallError::Died { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_call_that_answers_gives_its_answer() {
        let answer = bounded("a call", Duration::from_millis(50), MARGIN, || 7);
        assert_eq!(answer.unwrap(), 7);
    }

    #[test]
    fn a_call_that_never_answers_is_left_after_its_timeout_and_the_margin() {
        let started = Instant::now();
        let (_hold, never) = mpsc::channel::<()>();
        let answer = bounded(
            "send_offsets_to_transaction",
            Duration::from_millis(100),
            Duration::from_millis(100),
            move || never.recv().is_ok(),
        );
        let took = started.elapsed();
        match answer {
            Err(CallError::Hung { call, waited }) => {
                assert_eq!(call, "send_offsets_to_transaction");
                assert_eq!(waited, Duration::from_millis(200));
            }
            other => panic!("expected a hung call, got {other:?}"),
        }
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_call_that_panics_is_not_mistaken_for_an_answer() {
        let answer = bounded(
            "commit_transaction",
            Duration::from_secs(30),
            MARGIN,
            || -> u8 { panic!("inside the call") },
        );
        match answer {
            Err(err @ CallError::Died { .. }) => assert!(err.leaves_producer_unknown()),
            other => panic!("expected a call that died, got {other:?}"),
        }
    }
}
