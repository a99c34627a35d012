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

use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

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
    bounded_while(call, timeout, margin, &InFlight::default(), work, || false)
}

/// Whether a bounded call is running, for a rebalance to wait for it: the
/// pipeline polls the consumer while its commit is under way, and partitions
/// move only once that commit has answered (or was given up as hung).
#[derive(Debug, Clone, Default)]
pub(super) struct InFlight(Arc<(Mutex<Calls>, Condvar)>);

#[derive(Debug, Default)]
struct Calls {
    /// The last call started, and until when it is waited for while it runs.
    running: Option<(u64, Instant)>,
    started: u64,
}

impl InFlight {
    fn start(&self, until: Instant) -> u64 {
        let mut calls = self.0.0.lock().expect("in-flight lock");
        calls.started += 1;
        calls.running = Some((calls.started, until));
        calls.started
    }

    fn end(&self, call: u64) {
        let (calls, changed) = &*self.0;
        let mut calls = calls.lock().expect("in-flight lock");
        // A call given up as hung that answers late does not end a newer one.
        if calls.running.is_some_and(|(running, _)| running == call) {
            calls.running = None;
        }
        changed.notify_all();
    }

    /// Returns once no bounded call runs, or the running one is past the time
    /// its caller waits for it; whether one was waited for.
    pub(super) fn wait(&self) -> bool {
        let (calls, changed) = &*self.0;
        let mut calls = calls.lock().expect("in-flight lock");
        let mut waited = false;
        while let Some((_, until)) = calls.running {
            let now = Instant::now();
            if now >= until {
                break;
            }
            waited = true;
            calls = changed
                .wait_timeout(calls, until - now)
                .expect("in-flight lock")
                .0;
        }
        waited
    }
}

/// Ends the call in `InFlight` when dropped: after the call answered, or
/// when its thread unwinds.
struct Ending(InFlight, u64);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}

/// As [`bounded`], noting the call in `flight` while it runs, and calling
/// `meanwhile` until it answers, for as long as `meanwhile` says it did
/// something (then the caller just waits). `meanwhile` must return soon.
pub(super) fn bounded_while<T: Send + 'static>(
    call: &'static str,
    timeout: Duration,
    margin: Duration,
    flight: &InFlight,
    work: impl FnOnce() -> T + Send + 'static,
    mut meanwhile: impl FnMut() -> bool,
) -> Result<T, CallError> {
    let waited = timeout + margin;
    let until = Instant::now() + waited;
    let (answer, answered) = mpsc::sync_channel(1);
    let ending = Ending(flight.clone(), flight.start(until));
    std::thread::Builder::new()
        .name("weir-txn-call".to_owned())
        .spawn(move || {
            let _ending = ending;
            // The caller may have stopped waiting: then nobody hears it.
            let _ = answer.send(work());
        })
        .map_err(|source| CallError::Thread { call, source })?;
    let mut busy = true;
    loop {
        let now = Instant::now();
        if now >= until {
            return Err(CallError::Hung { call, waited });
        }
        let got = if busy {
            answered.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
            })
        } else {
            answered.recv_timeout(until - now)
        };
        match got {
            Ok(answer) => return Ok(answer),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(CallError::Died { call }),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if busy {
                    busy = meanwhile();
                }
            }
        }
    }
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
    fn work_goes_on_beside_a_call_and_a_rebalance_waits_for_the_call() {
        let flight = InFlight::default();
        assert!(!flight.wait(), "nothing runs yet");
        let (release, released) = mpsc::channel::<()>();
        let mut turns = 0;
        let waiter = flight.clone();
        let answer = bounded_while(
            "commit_transaction",
            Duration::from_secs(30),
            MARGIN,
            &flight,
            move || released.recv().is_ok(),
            || {
                turns += 1;
                if turns == 3 {
                    // A rebalance in a poll here waits until the call answered.
                    let release = release.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(50));
                        release.send(()).unwrap();
                    });
                    let started = Instant::now();
                    assert!(waiter.wait(), "the call was running");
                    assert!(started.elapsed() >= Duration::from_millis(40));
                }
                turns < 3
            },
        );
        assert!(answer.unwrap());
        assert_eq!(turns, 3, "nothing more to do after the third turn");
        assert!(!flight.wait(), "the call ended");
    }

    #[test]
    fn a_hung_call_is_waited_for_no_longer_than_its_caller_waits() {
        let flight = InFlight::default();
        let (_hold, never) = mpsc::channel::<()>();
        let waiter = flight.clone();
        let started = Instant::now();
        let answer = bounded_while(
            "send_offsets_to_transaction",
            Duration::from_millis(100),
            Duration::from_millis(100),
            &flight,
            move || never.recv().is_ok(),
            || {
                waiter.wait();
                false
            },
        );
        assert!(matches!(answer, Err(CallError::Hung { .. })), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!flight.wait(), "past its time, the hung call holds nobody");
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
