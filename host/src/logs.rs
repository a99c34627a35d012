//! librdkafka's own log lines (and the HDFS client's), through `tracing` at
//! their level but at most one a minute of each kind.
//!
//! rdkafka hands librdkafka's log and error callbacks to the `log` crate
//! (targets `librdkafka` and `rdkafka::client`), which `tracing` receives. A
//! broker that is down makes librdkafka repeat its connection error every
//! retry, a line a millisecond at worst; [`ClientLogFilter`] lets the first line
//! of each kind through and then one a minute. Lines of a kind are alike but for
//! their numbers (times, counts, ports), so the kind is the text with every run
//! of digits folded ([`kind`]). Every other line passes untouched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// How often a line of one kind may pass.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Kinds remembered at most; past that the memory starts again.
const MAX_KINDS: usize = 1024;

/// Lets a kind of line through at most once per window.
#[derive(Debug)]
pub struct Limiter {
    window: Duration,
    last: HashMap<String, Instant>,
}

impl Limiter {
    /// A limiter with `window` between two lines of one kind.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last: HashMap::new(),
        }
    }

    /// Whether a line of `kind` seen at `now` passes.
    pub fn admit(&mut self, kind: &str, now: Instant) -> bool {
        if let Some(last) = self.last.get(kind)
            && now.duration_since(*last) < self.window
        {
            return false;
        }
        if self.last.len() >= MAX_KINDS {
            self.last.clear();
        }
        self.last.insert(kind.to_owned(), now);
        true
    }
}

/// The kind of a line: its text with every run of digits folded to `#`.
pub fn kind(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// A `tracing` filter that limits the lines of librdkafka and the HDFS client
/// ([`Limiter`]) and passes everything else.
#[derive(Debug)]
pub struct ClientLogFilter {
    limiter: Mutex<Limiter>,
}

impl Default for ClientLogFilter {
    fn default() -> Self {
        Self {
            limiter: Mutex::new(Limiter::new(WINDOW)),
        }
    }
}

/// librdkafka's lines, and the HDFS client's, which repeats its own retries
/// of a NameNode that is down the same way.
fn from_a_client(target: &str) -> bool {
    target == "librdkafka" || target.starts_with("rdkafka") || target.starts_with("hdfs_native")
}

impl<S> Filter<S> for ClientLogFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    /// It passes every level: the filter it is joined to says the most
    /// verbose level. Without a hint the joined filter has none either, and
    /// the `log` crate's records (rdkafka writes a trace line per message
    /// polled) would each reach the subscriber to be turned away there.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        if !from_a_client(event.metadata().target()) {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let kind = kind(&message.0);
        self.limiter
            .lock()
            .expect("log limiter lock")
            .admit(&kind, Instant::now())
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_alike_but_for_numbers_are_one_kind() {
        let a = "librdkafka: FAIL [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: \
                 Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)";
        let b = "librdkafka: FAIL [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: \
                 Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 12ms in state CONNECT, 4 identical error(s) suppressed)";
        assert_eq!(kind("after 0ms"), kind("after 1234ms"));
        assert_ne!(kind(a), kind(b), "the suppressed count changes the text");
        assert_eq!(
            kind(a),
            kind(&a.replace("0ms", "7ms")),
            "a time is not a kind"
        );
        assert_eq!(kind("ipv4#127.0.0.1:1"), "ipv###.#.#.#:#");
    }

    #[test]
    fn a_kind_passes_once_a_window() {
        let mut limiter = Limiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(limiter.admit("refused", t0));
        assert!(!limiter.admit("refused", t0 + Duration::from_secs(1)));
        assert!(!limiter.admit("refused", t0 + Duration::from_secs(59)));
        assert!(limiter.admit("other", t0 + Duration::from_secs(2)));
        assert!(limiter.admit("refused", t0 + Duration::from_secs(60)));
        assert!(!limiter.admit("refused", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn the_memory_of_kinds_is_bounded() {
        let mut limiter = Limiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 0..(MAX_KINDS * 3) {
            assert!(limiter.admit(&format!("kind {n}"), t0));
        }
        assert!(limiter.last.len() <= MAX_KINDS);
    }

    #[test]
    fn only_librdkafkas_targets_are_limited() {
        assert!(from_a_client("librdkafka"));
        assert!(from_a_client("rdkafka::client"));
        assert!(from_a_client("hdfs_native::hdfs::proxy"));
        assert!(!from_a_client("weir::pipeline"));
    }
}
