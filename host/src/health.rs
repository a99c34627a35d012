//! Whether what the service depends on is reachable now: the registry's
//! database, Kafka, the counters' Redis and the archive's store. One rule for
//! all four (`docs/operations.md`):
//!
//! - at start, and whenever one is lost at run time, weir retries with backoff
//!   and says once, in one line, what it waits for and where; once more when it
//!   is back;
//! - a misconfiguration that retrying cannot fix (a bad URL, refused
//!   credentials, an unknown scheme) fails at once with a message naming it.
//!
//! [`Health`] holds each dependency's state and since when; the start-up code
//! ([`until_up`]) and the watchers of the running service (the pipeline's
//! metrics, a registry poll) report what they see to it, and `GET /readyz`,
//! `GET /livez`, the dashboard and `weir_dependency_up` read it. The decision of
//! what a report changes, and what is worth a line, is [`step`], a plain
//! function.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::telemetry::Telemetry;

/// Something outside the process the service needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    /// The SQL database of plugins, scenarios and members.
    Registry,
    /// The Kafka cluster (or the embedded broker).
    Kafka,
    /// The Redis that holds the counters.
    Redis,
    /// The store of the Parquet archive (HDFS or a directory).
    Archive,
}

impl Dependency {
    /// The name in `/readyz` and in the `dependency` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Kafka => "kafka",
            Self::Redis => "redis",
            Self::Archive => "archive",
        }
    }

    /// The name in a log line.
    fn title(self) -> &'static str {
        match self {
            Self::Registry => "the registry database",
            Self::Kafka => "Kafka",
            Self::Redis => "Redis",
            Self::Archive => "the archive",
        }
    }
}

/// What is known of one dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not tried yet.
    Starting,
    /// Reachable at the last look.
    Up,
    /// Unreachable: the reason of the first failure of this outage.
    Down(String),
}

/// A dependency's state, where it is and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Which one.
    pub dependency: Dependency,
    /// Where it is (a URL without credentials, `host:port` list or path).
    pub target: String,
    /// Its state.
    pub state: State,
    /// When the state began, Unix ms.
    pub since_ms: i64,
}

/// Decides what one look at a dependency changes: the new state, when it is
/// one, and the line worth logging. A failure while already down keeps the
/// first reason and its time, and says nothing more.
pub fn step(
    dependency: Dependency,
    target: &str,
    state: &State,
    seen: Result<(), &str>,
    down_for: Duration,
) -> Option<(State, Option<String>)> {
    let title = dependency.title();
    match (state, seen) {
        (State::Up, Ok(())) | (State::Down(_), Err(_)) => None,
        (State::Starting, Ok(())) => Some((State::Up, None)),
        (State::Down(_), Ok(())) => Some((
            State::Up,
            Some(format!(
                "{title} at {target} is back after {} s",
                down_for.as_secs()
            )),
        )),
        (State::Starting | State::Up, Err(reason)) => Some((
            State::Down(reason.to_owned()),
            Some(format!(
                "waiting for {title} at {target}: {reason}; retrying"
            )),
        )),
    }
}

/// The states of every dependency the service has, and of its pipeline.
#[derive(Debug)]
pub struct Health {
    statuses: Mutex<BTreeMap<Dependency, Status>>,
    telemetry: Telemetry,
    /// The consumer has been given its partitions (possibly none) once.
    assigned: AtomicBool,
    /// When the pipeline's loop last turned, Unix ms; 0 before it runs.
    last_turn_ms: AtomicI64,
    /// The pipeline ended (stopped, or failed).
    ended: AtomicBool,
}

impl Default for Health {
    /// No dependency yet, with a recorder of its own.
    fn default() -> Self {
        Self::new(Telemetry::new())
    }
}

impl Health {
    /// No dependency yet; `telemetry` gets `weir_dependency_up`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            statuses: Mutex::default(),
            telemetry,
            assigned: AtomicBool::new(false),
            last_turn_ms: AtomicI64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// The recorder the service's metrics go to.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The service needs `dependency` at `target`; it starts as not tried.
    pub fn track(&self, dependency: Dependency, target: &str) {
        let mut statuses = self.statuses.lock().expect("health lock");
        statuses.entry(dependency).or_insert_with(|| Status {
            dependency,
            target: target.to_owned(),
            state: State::Starting,
            since_ms: now_ms(),
        });
        self.gauge(dependency, false);
    }

    /// Reports one look at `dependency`: reachable, or not and why. Logs a
    /// line when it is lost or back ([`step`]).
    pub fn seen(&self, dependency: Dependency, seen: Result<(), &str>) {
        let now = now_ms();
        let mut statuses = self.statuses.lock().expect("health lock");
        let Some(status) = statuses.get_mut(&dependency) else {
            return;
        };
        let down_for = Duration::from_millis((now - status.since_ms).max(0) as u64);
        let Some((state, line)) = step(dependency, &status.target, &status.state, seen, down_for)
        else {
            return;
        };
        let up = state == State::Up;
        status.state = state;
        status.since_ms = now;
        drop(statuses);
        self.gauge(dependency, up);
        if let Some(line) = line {
            // For people, at any log level (as weir's other status lines);
            // the event is for structured logs.
            eprintln!("weir: {line}");
            tracing::debug!(dependency = dependency.name(), up, "{line}");
        }
    }

    fn gauge(&self, dependency: Dependency, up: bool) {
        self.telemetry
            .gauge("weir_dependency_up", &[("dependency", dependency.name())])
            .set(if up { 1.0 } else { 0.0 });
    }

    /// Every tracked dependency's status.
    pub fn statuses(&self) -> Vec<Status> {
        self.statuses
            .lock()
            .expect("health lock")
            .values()
            .cloned()
            .collect()
    }

    /// The consumer got its (possibly empty) assignment.
    pub fn note_assigned(&self) {
        self.assigned.store(true, Ordering::Relaxed);
    }

    /// Whether the consumer has had an assignment.
    pub fn assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    /// The pipeline's loop turned (fetched, waited on purpose, or committed)
    /// at `ms`, Unix ms.
    pub fn note_turn_at(&self, ms: i64) {
        self.last_turn_ms.store(ms, Ordering::Relaxed);
    }

    /// When the pipeline's loop last turned, Unix ms, if it ever did.
    pub fn last_turn_ms(&self) -> Option<i64> {
        Some(self.last_turn_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// The pipeline thread ended.
    pub fn note_ended(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// Whether the pipeline thread ended.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// Ready: every dependency is up and the consumer has its assignment.
    pub fn ready(&self) -> bool {
        self.assigned()
            && !self.ended()
            && self
                .statuses
                .lock()
                .expect("health lock")
                .values()
                .all(|s| s.state == State::Up)
    }

    /// Why the process is not live, if it is not: the pipeline ended, or its
    /// loop has not turned for longer than `wedged_after`.
    pub fn wedged(&self, wedged_after: Duration) -> Option<String> {
        if self.ended() {
            return Some("the pipeline stopped".into());
        }
        let last = self.last_turn_ms()?;
        let quiet = Duration::from_millis((now_ms() - last).max(0) as u64);
        (quiet > wedged_after).then(|| {
            format!(
                "the pipeline's loop has not turned for {} s (more than {} s)",
                quiet.as_secs(),
                wedged_after.as_secs()
            )
        })
    }
}

/// What a start-up attempt found: worth another try, or not.
#[derive(Debug)]
pub enum Attempt<E> {
    /// Unreachable now; another try may work.
    Retry(E),
    /// A misconfiguration no retry fixes.
    Fatal(E),
}

/// The first wait between tries, doubling up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Tries `attempt` until it works, reporting each failure to `health` (the
/// first of an outage is logged in one line), with backoff. Returns `None` when
/// `stop` fired first, and the error of a fatal failure.
pub async fn until_up<T, E, F, Fut>(
    health: &Health,
    dependency: Dependency,
    stop: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => {
                health.seen(dependency, Ok(()));
                return Ok(Some(value));
            }
            Err(Attempt::Fatal(error)) => {
                health.seen(dependency, Err(&error.to_string()));
                return Err(error);
            }
            Err(Attempt::Retry(error)) => {
                health.seen(dependency, Err(&first_line(&error.to_string())));
                tracing::debug!(dependency = dependency.name(), %error, "not reachable yet");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The first line of an error's text, at most 300 bytes: a reason for a log
/// line and a JSON field.
pub fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut end = line.len().min(300);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEVER: Duration = Duration::ZERO;

    #[test]
    fn the_first_failure_says_what_is_awaited_and_where() {
        let (state, line) = step(
            Dependency::Kafka,
            "127.0.0.1:1",
            &State::Starting,
            Err("connection refused"),
            NEVER,
        )
        .unwrap();
        assert_eq!(state, State::Down("connection refused".into()));
        assert_eq!(
            line.as_deref(),
            Some("waiting for Kafka at 127.0.0.1:1: connection refused; retrying")
        );
        let (_, lost) = step(
            Dependency::Redis,
            "redis://127.0.0.1:6379",
            &State::Up,
            Err("broken pipe"),
            NEVER,
        )
        .unwrap();
        assert_eq!(
            lost.as_deref(),
            Some("waiting for Redis at redis://127.0.0.1:6379: broken pipe; retrying")
        );
    }

    #[test]
    fn further_failures_of_an_outage_say_nothing_and_keep_its_start() {
        let down = State::Down("connection refused".into());
        assert_eq!(
            step(Dependency::Kafka, "k", &down, Err("timed out"), NEVER),
            None
        );
        assert_eq!(
            step(Dependency::Kafka, "k", &State::Up, Ok(()), NEVER),
            None
        );
    }

    #[test]
    fn coming_back_is_said_once_and_a_first_success_quietly() {
        let (state, line) = step(
            Dependency::Archive,
            "hdfs://nn:9000/a",
            &State::Down("x".into()),
            Ok(()),
            Duration::from_secs(42),
        )
        .unwrap();
        assert_eq!(state, State::Up);
        assert_eq!(
            line.as_deref(),
            Some("the archive at hdfs://nn:9000/a is back after 42 s")
        );
        assert_eq!(
            step(Dependency::Registry, "r", &State::Starting, Ok(()), NEVER),
            Some((State::Up, None))
        );
    }

    #[test]
    fn ready_needs_every_dependency_up_and_an_assignment() {
        let health = Health::new(Telemetry::new());
        health.track(Dependency::Kafka, "k");
        health.track(Dependency::Redis, "r");
        health.seen(Dependency::Kafka, Ok(()));
        health.seen(Dependency::Redis, Ok(()));
        assert!(!health.ready(), "no assignment yet");
        health.note_assigned();
        assert!(health.ready());
        health.seen(Dependency::Redis, Err("gone"));
        assert!(!health.ready());
        let text = health.telemetry().render();
        assert!(
            text.contains(r#"weir_dependency_up{dependency="redis"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_dependency_up{dependency="kafka"} 1"#),
            "{text}"
        );
        health.seen(Dependency::Redis, Ok(()));
        assert!(health.ready());
        health.note_ended();
        assert!(!health.ready());
    }

    #[test]
    fn live_until_the_loop_stops_turning() {
        let health = Health::new(Telemetry::new());
        assert_eq!(health.wedged(Duration::from_secs(60)), None, "not started");
        health.note_turn_at(now_ms());
        assert_eq!(health.wedged(Duration::from_secs(60)), None);
        health.note_turn_at(now_ms() - 120_000);
        let why = health.wedged(Duration::from_secs(60)).unwrap();
        assert!(why.contains("has not turned for 120 s"), "{why}");
        health.note_ended();
        assert_eq!(
            health.wedged(Duration::from_secs(60)).as_deref(),
            Some("the pipeline stopped")
        );
    }

    #[tokio::test]
    async fn until_up_retries_with_backoff_and_stops_at_a_fatal_error() {
        let health = Health::new(Telemetry::new());
        health.track(Dependency::Redis, "r");
        let stop = CancellationToken::new();
        let mut tries = 0;
        let got = until_up(&health, Dependency::Redis, &stop, || {
            tries += 1;
            let n = tries;
            async move {
                // Two failures: 250 ms and 500 ms of backoff.
                if n < 3 {
                    Err(Attempt::Retry("refused"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), Some(3));
        assert_eq!(health.statuses()[0].state, State::Up);

        let fatal: Result<Option<()>, &str> =
            until_up(&health, Dependency::Redis, &stop, || async {
                Err(Attempt::Fatal("auth refused"))
            })
            .await;
        assert_eq!(fatal.unwrap_err(), "auth refused");

        stop.cancel();
        let stopped: Result<Option<()>, &str> =
            until_up(&health, Dependency::Redis, &stop, || async {
                Err(Attempt::Retry("refused"))
            })
            .await;
        assert_eq!(stopped.unwrap(), None);
    }
}
