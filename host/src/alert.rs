//! Alerts for people without Alertmanager: rules from `[alerts]` evaluated
//! every `interval_secs` over the pipeline's own figures, and notifications
//! (`firing`, then `resolved`) posted to webhooks.
//!
//! A rule watches one condition: a scenario's success ratio below or above a
//! threshold over a window, dead letters per minute, consumer lag, a
//! quarantined scenario, or a sink failing longer than a while. Whether a rule
//! changes state is a pure function ([`step`]) of its state, what was seen and
//! the time; the evaluator around it reads the counters and metrics, and hands
//! notifications to delivery tasks. Delivery retries with a doubling backoff,
//! runs beside the pipeline (never in its thread), and is bounded: when too
//! many notifications are in flight, new ones are dropped and counted.
//! A webhook gets a Slack-compatible `{"text": …}` body or a generic JSON one.
//! `docs/observability.md` is the user's guide.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::aggregate::Counters;
use crate::pipeline::Metrics;

/// `[alerts]`: the rules and where their notifications go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often every rule is evaluated, in seconds.
    pub interval_secs: u64,
    /// A rule that keeps firing is notified again this often, in seconds.
    pub repeat_secs: u64,
    /// Where notifications go (`[[alerts.webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
    /// What to watch (`[[alerts.rules]]`).
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            interval_secs: 15,
            repeat_secs: 3600,
            webhooks: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// One webhook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its name, for rules and metrics.
    pub name: String,
    /// `http://` or `https://` URL the notifications are posted to.
    pub url: String,
    /// `slack` (`{"text": …}`, also what Mattermost and Rocket.Chat take) or
    /// `json` (every field of the notification).
    #[serde(default)]
    pub format: Format,
    /// Time one attempt may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts before a notification is given up (logged and counted).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, doubled after each, in milliseconds.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5000
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    1000
}

/// The body a webhook gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"text": "…"}`.
    #[default]
    Slack,
    /// The whole notification as JSON.
    Json,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// The scenario's success ratio over the window is below `threshold`.
    RatioBelow,
    /// The scenario's success ratio over the window is above `threshold`.
    RatioAbove,
    /// Dead letters per minute over the window (the scenario's, or all) are
    /// above `threshold`.
    DeadLettersPerMinute,
    /// Some partition's consumer lag is above `threshold` records.
    LagAbove,
    /// The scenario (or any, without `scenario`) is quarantined.
    Quarantined,
    /// A sink has been failing for at least `for_secs`.
    SinkFailing,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Its name, unique, in notifications and metrics.
    pub name: String,
    /// What it watches.
    pub kind: RuleKind,
    /// The scenario id (required for the ratio rules; optional for dead
    /// letters and quarantines).
    #[serde(default)]
    pub scenario: Option<String>,
    /// The threshold: a ratio in 0..=1, dead letters per minute, or records of lag.
    #[serde(default)]
    pub threshold: f64,
    /// Minutes the ratio and dead-letter rules look back over.
    #[serde(default = "default_window")]
    pub window_minutes: u32,
    /// The ratio rules decide nothing on fewer events in the window (the rule
    /// keeps its state).
    #[serde(default = "default_min_events")]
    pub min_events: u64,
    /// How long a sink must be failing before `sink_failing` fires, in seconds.
    #[serde(default = "default_for_secs")]
    pub for_secs: u64,
    /// The webhooks to notify (default: every webhook).
    #[serde(default)]
    pub webhooks: Vec<String>,
}

fn default_window() -> u32 {
    5
}
fn default_min_events() -> u64 {
    10
}
fn default_for_secs() -> u64 {
    300
}

impl AlertsConfig {
    /// Every problem with this configuration, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.interval_secs == 0 {
            problems.push("alerts.interval_secs: use at least 1".to_owned());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            let at = format!("alerts.webhooks[{i}]");
            if !names.insert(hook.name.as_str()) || hook.name.is_empty() {
                problems.push(format!(
                    "{at}.name = {:?}: each webhook needs a name of its own",
                    hook.name
                ));
            }
            match reqwest::Url::parse(&hook.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => problems.push(format!(
                    "{at}.url: expected an http:// or https:// URL (the value is not repeated: it may hold a secret)"
                )),
            }
            if hook.max_attempts == 0 {
                problems.push(format!("{at}.max_attempts: use at least 1"));
            }
            if hook.timeout_ms == 0 {
                problems.push(format!("{at}.timeout_ms: use at least 1"));
            }
        }
        let mut rules = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("alerts.rules[{i}]");
            if !rules.insert(rule.name.as_str()) || rule.name.is_empty() {
                problems.push(format!(
                    "{at}.name = {:?}: each rule needs a name of its own",
                    rule.name
                ));
            }
            let ratio = matches!(rule.kind, RuleKind::RatioBelow | RuleKind::RatioAbove);
            if ratio && rule.scenario.is_none() {
                problems.push(format!("{at}.scenario: a ratio rule needs the scenario id"));
            }
            if ratio && !(0.0..=1.0).contains(&rule.threshold) {
                problems.push(format!(
                    "{at}.threshold = {}: a ratio is between 0 and 1",
                    rule.threshold
                ));
            }
            if !rule.threshold.is_finite() || rule.threshold < 0.0 {
                problems.push(format!("{at}.threshold: use a number of at least 0"));
            }
            if rule.window_minutes == 0 || rule.window_minutes > 24 * 60 {
                problems.push(format!("{at}.window_minutes: use 1 to 1440"));
            }
            for hook in &rule.webhooks {
                if !self.webhooks.iter().any(|w| &w.name == hook) {
                    problems.push(format!(
                        "{at}.webhooks: {hook:?} is not the name of an [[alerts.webhooks]]"
                    ));
                }
            }
        }
        if !self.rules.is_empty() && self.webhooks.is_empty() {
            problems
                .push("alerts.webhooks: rules are configured but no webhook to notify".to_owned());
        }
        problems
    }
}

/// Where a rule stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleState {
    /// Since when it fires, Unix ms.
    pub firing_since: Option<i64>,
    /// When it was last notified as firing, Unix ms.
    pub last_sent: Option<i64>,
    /// What it saw last, for people.
    pub summary: String,
}

/// Whether a notification says a rule fires or stopped firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The condition holds.
    Firing,
    /// It held and does no more.
    Resolved,
}

/// What one evaluation saw: `None` when it cannot tell (too few events, the
/// counters did not answer), and the rule keeps its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Whether the condition holds.
    pub holds: bool,
    /// The figure compared with the threshold.
    pub value: f64,
    /// One line for people.
    pub summary: String,
}

/// The state change of one evaluation, and the notification it makes, if any:
/// a rule starts firing (notified), keeps firing (notified again every
/// `repeat_ms`), or stops (notified as resolved).
pub fn step(
    state: &mut RuleState,
    seen: Option<&Seen>,
    now_ms: i64,
    repeat_ms: i64,
) -> Option<Status> {
    let seen = seen?;
    state.summary = seen.summary.clone();
    match (seen.holds, state.firing_since) {
        (true, None) => {
            state.firing_since = Some(now_ms);
            state.last_sent = Some(now_ms);
            Some(Status::Firing)
        }
        (true, Some(_))
            if state
                .last_sent
                .is_none_or(|sent| now_ms - sent >= repeat_ms) =>
        {
            state.last_sent = Some(now_ms);
            Some(Status::Firing)
        }
        (false, Some(_)) => {
            state.firing_since = None;
            state.last_sent = None;
            Some(Status::Resolved)
        }
        _ => None,
    }
}

/// One notification, as the `json` format posts it.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// `firing` or `resolved`.
    pub status: Status,
    /// The rule's name.
    pub rule: String,
    /// What it watches.
    pub kind: RuleKind,
    /// Its scenario, if any.
    pub scenario: Option<String>,
    /// The figure compared with the threshold.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// One line for people.
    pub summary: String,
    /// When the rule started firing (RFC 3339).
    pub since: Option<String>,
    /// When this was sent (RFC 3339).
    pub at: String,
}

impl Notification {
    /// The `{"text": …}` line of the `slack` format. `&`, `<` and `>` are
    /// escaped as Slack asks: a summary quotes plugin errors, which may quote
    /// events, and must not turn into mentions or links.
    pub fn text(&self) -> String {
        let mark = match self.status {
            Status::Firing => "FIRING",
            Status::Resolved => "RESOLVED",
        };
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let summary = crate::pipeline::cut(&self.summary, SUMMARY_BYTES);
        format!(
            "[{mark}] weir alert {}: {}",
            escape(&self.rule),
            escape(summary)
        )
    }
}

/// A rule firing now.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The rule's name.
    pub rule: String,
    /// What it saw last.
    pub summary: String,
    /// Since when, Unix ms.
    pub since_ms: i64,
}

/// The rules, their state, and the way to the webhooks.
#[derive(Debug)]
pub struct Alerts {
    config: AlertsConfig,
    states: Mutex<BTreeMap<String, RuleState>>,
    client: reqwest::Client,
    /// Bounds the notifications in flight (each with its retries).
    in_flight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    counters: Counters,
    /// Dead letters seen at each evaluation: `(Unix ms, total)`.
    dead_samples: Mutex<std::collections::VecDeque<(i64, u64)>>,
}

/// Notifications in flight at most; more are dropped (and counted).
const MAX_IN_FLIGHT: usize = 256;

/// Bytes of a summary a notification carries.
const SUMMARY_BYTES: usize = 1000;

impl Alerts {
    /// The rules of `config`, evaluated over `metrics` and `counters`.
    pub fn new(config: AlertsConfig, metrics: Arc<Metrics>, counters: Counters) -> Self {
        let states = config
            .rules
            .iter()
            .map(|r| (r.name.clone(), RuleState::default()))
            .collect();
        Self {
            config,
            states: Mutex::new(states),
            // No redirects: a webhook that answers one is not followed elsewhere.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
            counters,
            dead_samples: Mutex::default(),
        }
    }

    /// The rules firing now.
    pub fn firing(&self) -> Vec<Firing> {
        self.states
            .lock()
            .expect("alerts lock")
            .iter()
            .filter_map(|(rule, s)| {
                Some(Firing {
                    rule: rule.clone(),
                    summary: s.summary.clone(),
                    since_ms: s.firing_since?,
                })
            })
            .collect()
    }

    /// Evaluates every rule every `interval_secs` until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(self.config.interval_secs));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while tokio::select! { _ = every.tick() => true, () = stop.cancelled() => false } {
            self.evaluate().await;
        }
    }

    /// One evaluation of every rule.
    pub async fn evaluate(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        self.sample_dead_letters(now);
        let repeat_ms = self.config.repeat_secs.saturating_mul(1000) as i64;
        for rule in &self.config.rules {
            let seen = self.observe(rule, now).await;
            let (status, since, firing) = {
                let mut states = self.states.lock().expect("alerts lock");
                let state = states.entry(rule.name.clone()).or_default();
                let before = state.firing_since;
                let status = step(state, seen.as_ref(), now, repeat_ms);
                (
                    status,
                    state.firing_since.or(before),
                    state.firing_since.is_some(),
                )
            };
            self.metrics
                .telemetry
                .gauge("weir_alert_firing", &[("rule", &rule.name)])
                .set(if firing { 1.0 } else { 0.0 });
            let (Some(status), Some(seen)) = (status, seen) else {
                continue;
            };
            tracing::info!(rule = %rule.name, ?status, summary = %seen.summary, "alert");
            let notification = Notification {
                status,
                rule: rule.name.clone(),
                kind: rule.kind,
                scenario: rule.scenario.clone(),
                value: seen.value,
                threshold: rule.threshold,
                summary: seen.summary,
                since: since.map(rfc3339),
                at: rfc3339(now),
            };
            self.notify(rule, notification);
        }
    }

    fn sample_dead_letters(&self, now: i64) {
        let total = self
            .metrics
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut samples = self.dead_samples.lock().expect("alerts lock");
        samples.push_back((now, total));
        let keep_ms = 24 * 60 * 60_000;
        while samples.front().is_some_and(|&(t, _)| now - t > keep_ms) {
            samples.pop_front();
        }
    }

    /// What `rule` sees now.
    async fn observe(&self, rule: &RuleConfig, now: i64) -> Option<Seen> {
        let threshold = rule.threshold;
        let window_ms = i64::from(rule.window_minutes) * 60_000;
        match rule.kind {
            RuleKind::RatioBelow | RuleKind::RatioAbove => {
                let id = rule.scenario.as_deref()?;
                let minutes = self
                    .counters
                    .minutes(id, now - window_ms, now + 1, rule.window_minutes as usize + 1)
                    .await
                    .map_err(|e| tracing::warn!(rule = %rule.name, error = %e, "alert: counters did not answer"))
                    .ok()?;
                let (success, total) = minutes
                    .iter()
                    .fold((0u64, 0u64), |(s, t), m| (s + m.success, t + m.total));
                if total < rule.min_events.max(1) {
                    return None;
                }
                let ratio = success as f64 / total as f64;
                let below = rule.kind == RuleKind::RatioBelow;
                Some(Seen {
                    holds: if below {
                        ratio < threshold
                    } else {
                        ratio > threshold
                    },
                    value: ratio,
                    summary: format!(
                        "scenario {id}: success ratio {:.2} % over the last {} min ({success} of {total}), {} {:.2} %",
                        ratio * 100.0,
                        rule.window_minutes,
                        if below {
                            "threshold below"
                        } else {
                            "threshold above"
                        },
                        threshold * 100.0
                    ),
                })
            }
            RuleKind::DeadLettersPerMinute => {
                let (count, minutes) = match rule.scenario.as_deref() {
                    Some(id) => {
                        let buckets = self
                            .counters
                            .minutes(
                                id,
                                now - window_ms,
                                now + 1,
                                rule.window_minutes as usize + 1,
                            )
                            .await
                            .ok()?;
                        (
                            buckets.iter().map(|m| m.errors).sum::<u64>(),
                            f64::from(rule.window_minutes),
                        )
                    }
                    None => {
                        let samples = self.dead_samples.lock().expect("alerts lock");
                        let (&(t1, d1), first) = (samples.back()?, samples.front()?);
                        let &(t0, d0) = samples
                            .iter()
                            .find(|&&(t, _)| now - t <= window_ms)
                            .unwrap_or(first);
                        if t1 <= t0 {
                            return None;
                        }
                        (d1.saturating_sub(d0), (t1 - t0) as f64 / 60_000.0)
                    }
                };
                let rate = count as f64 / minutes.max(1.0 / 60.0);
                let whose = rule
                    .scenario
                    .as_deref()
                    .map_or_else(|| "all scenarios".to_owned(), |id| format!("scenario {id}"));
                Some(Seen {
                    holds: rate > threshold,
                    value: rate,
                    summary: format!(
                        "{whose}: {rate:.1} dead letters per minute ({count} in {minutes:.1} min), threshold {threshold}"
                    ),
                })
            }
            RuleKind::LagAbove => {
                let lag = self.metrics.lag.lock().expect("metrics lock");
                let worst = lag.iter().max_by_key(|(_, lag)| **lag);
                let (value, summary) = match worst {
                    Some(((topic, partition), lag)) => (
                        *lag as f64,
                        format!(
                            "{topic} partition {partition} is {lag} records behind, threshold {threshold}"
                        ),
                    ),
                    None => (0.0, "no partition is behind".to_owned()),
                };
                Some(Seen {
                    holds: value > threshold,
                    value,
                    summary,
                })
            }
            RuleKind::Quarantined => {
                let now_set = self.metrics.quarantined_now();
                let hit: Vec<String> = now_set
                    .iter()
                    .filter(|(id, _)| rule.scenario.as_ref().is_none_or(|s| s == *id))
                    .map(|(id, q)| format!("scenario {id} ({}): {}", q.plugin, q.reason))
                    .collect();
                Some(Seen {
                    holds: !hit.is_empty(),
                    value: hit.len() as f64,
                    summary: if hit.is_empty() {
                        "no scenario is quarantined".to_owned()
                    } else {
                        format!("quarantined: {}", hit.join("; "))
                    },
                })
            }
            RuleKind::SinkFailing => {
                let failing = self.metrics.sink_failing.lock().expect("metrics lock");
                let longest = failing.iter().min_by_key(|(_, f)| f.since_ms);
                let (value, summary) = match longest {
                    Some((sink, f)) => {
                        let secs = (now - f.since_ms).max(0) as f64 / 1000.0;
                        (
                            secs,
                            format!("sink {sink} failing for {secs:.0} s: {}", f.error),
                        )
                    }
                    None => (0.0, "every sink takes results".to_owned()),
                };
                Some(Seen {
                    holds: value >= rule.for_secs as f64 && longest.is_some(),
                    value,
                    summary,
                })
            }
        }
    }

    /// Hands `notification` to a delivery task per webhook of `rule`.
    fn notify(&self, rule: &RuleConfig, notification: Notification) {
        for hook in self
            .config
            .webhooks
            .iter()
            .filter(|w| rule.webhooks.is_empty() || rule.webhooks.contains(&w.name))
        {
            let counter = |outcome: &'static str| {
                self.metrics.telemetry.counter(
                    "weir_alert_notifications_total",
                    &[("webhook", &hook.name), ("outcome", outcome)],
                )
            };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                tracing::warn!(webhook = %hook.name, rule = %rule.name, "alert dropped: too many notifications in flight");
                counter("dropped").increment(1);
                continue;
            };
            let body = match hook.format {
                Format::Slack => json!({"text": notification.text()}),
                Format::Json => serde_json::to_value(&notification).unwrap_or_default(),
            }
            .to_string();
            let (sent, retried, failed) = (counter("sent"), counter("retried"), counter("failed"));
            let (client, hook) = (self.client.clone(), hook.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let mut backoff = Duration::from_millis(hook.backoff_ms);
                for attempt in 1..=hook.max_attempts {
                    let answer = client
                        .post(&hook.url)
                        .timeout(Duration::from_millis(hook.timeout_ms))
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let problem = match answer {
                        Ok(r) if r.status().is_success() => {
                            sent.increment(1);
                            return;
                        }
                        Ok(r) => format!("answered {}", r.status()),
                        // Without the URL: it may hold a secret (Slack's do).
                        Err(e) => format!("could not be reached: {}", e.without_url()),
                    };
                    if attempt == hook.max_attempts {
                        tracing::warn!(webhook = %hook.name, attempts = attempt, problem, "alert notification given up");
                        failed.increment(1);
                        return;
                    }
                    tracing::info!(webhook = %hook.name, attempt, problem, retry_in_ms = backoff.as_millis() as u64, "alert notification failed; retrying");
                    retried.increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            });
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holds: bool) -> Seen {
        Seen {
            holds,
            value: 0.0,
            summary: String::new(),
        }
    }

    #[test]
    fn a_rule_fires_repeats_and_resolves() {
        let mut state = RuleState::default();
        assert_eq!(step(&mut state, Some(&seen(false)), 0, 1000), None);
        assert_eq!(
            step(&mut state, Some(&seen(true)), 10, 1000),
            Some(Status::Firing)
        );
        assert_eq!(state.firing_since, Some(10));
        assert_eq!(step(&mut state, Some(&seen(true)), 500, 1000), None);
        assert_eq!(
            step(&mut state, Some(&seen(true)), 1010, 1000),
            Some(Status::Firing)
        );
        assert_eq!(state.firing_since, Some(10), "a repeat keeps the start");
        // Not knowing changes nothing, either way.
        assert_eq!(step(&mut state, None, 5000, 1000), None);
        assert_eq!(state.firing_since, Some(10));
        assert_eq!(
            step(&mut state, Some(&seen(false)), 6000, 1000),
            Some(Status::Resolved)
        );
        assert_eq!(step(&mut state, Some(&seen(false)), 7000, 1000), None);
        assert_eq!(state.firing_since, None);
    }

    #[test]
    fn configuration_problems_name_their_fields() {
        let config: AlertsConfig = toml::from_str(
            r#"
            interval_secs = 0
            [[webhooks]]
            name = "ops"
            url = "ftp://example.com/x"
            [[webhooks]]
            name = "ops"
            url = "https://hooks.example.com/T0/B0/secret"
            [[rules]]
            name = "low"
            kind = "ratio_below"
            threshold = 1.5
            [[rules]]
            name = "low"
            kind = "lag_above"
            threshold = 1000
            webhooks = ["pager"]
            "#,
        )
        .unwrap();
        let problems = config.problems();
        for expected in [
            "alerts.interval_secs",
            "alerts.webhooks[0].url",
            "alerts.webhooks[1].name",
            "alerts.rules[0].scenario",
            "alerts.rules[0].threshold",
            "alerts.rules[1].name",
            "alerts.rules[1].webhooks",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected} missing from {problems:#?}"
            );
        }
        assert!(
            !problems.iter().any(|p| p.contains("T0/B0")),
            "{problems:#?}"
        );
        assert!(AlertsConfig::default().problems().is_empty());
    }

    #[test]
    fn notices_beyond_the_in_flight_bound_are_dropped_and_counted() {
        let config: AlertsConfig = toml::from_str(
            r#"
            [[webhooks]]
            name = "ops"
            url = "http://127.0.0.1:9/hook"
            [[rules]]
            name = "lag"
            kind = "lag_above"
            threshold = 10
            "#,
        )
        .unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut alerts = Alerts::new(config.clone(), metrics.clone(), Counters::in_memory(3600));
        // Every permit in use: the next notice cannot be delivered.
        alerts.in_flight = Arc::new(Semaphore::new(0));
        let notice = Notification {
            status: Status::Firing,
            rule: "lag".into(),
            kind: RuleKind::LagAbove,
            scenario: None,
            value: 11.0,
            threshold: 10.0,
            summary: "lag".into(),
            since: None,
            at: rfc3339(0),
        };
        alerts.notify(&config.rules[0], notice);
        let text = metrics.telemetry.render();
        assert!(
            text.contains(r#"weir_alert_notifications_total{webhook="ops",outcome="dropped"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_slack_text_escapes_what_would_be_markup() {
        let n = Notification {
            status: Status::Firing,
            rule: "q".into(),
            kind: RuleKind::Quarantined,
            scenario: None,
            value: 1.0,
            threshold: 0.0,
            summary: "quarantined: <!channel> <https://evil|log in> & more".into(),
            since: None,
            at: rfc3339(0),
        };
        assert_eq!(
            n.text(),
            "[FIRING] weir alert q: quarantined: &lt;!channel&gt; &lt;https://evil|log in&gt; &amp; more"
        );
    }

    #[test]
    fn the_slack_body_says_what_and_which_rule() {
        let n = Notification {
            status: Status::Resolved,
            rule: "scenario 5 low".into(),
            kind: RuleKind::RatioBelow,
            scenario: Some("5".into()),
            value: 0.3,
            threshold: 0.2,
            summary: "scenario 5: success ratio 30.00 %".into(),
            since: None,
            at: rfc3339(0),
        };
        assert_eq!(
            n.text(),
            "[RESOLVED] weir alert scenario 5 low: scenario 5: success ratio 30.00 %"
        );
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["status"], "resolved");
        assert_eq!(json["kind"], "ratio_below");
    }
}
