//! Running a scenario's share through its plugin: instances, enrichment, and
//! quarantine (a scenario whose plugin's failures were costly is set aside).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};

use super::canary::{self, CanaryStats, Verdict};
use super::catalog::{Catalog, Route, Shadow};
use super::route;
use super::shadow::ShadowStats;
use super::{CycleError, Pipeline};
use crate::runtime::{Batch, BatchResult, EventError, FailureKind, Instance, Plugin, Status};

/// Why and until when a scenario is set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// `name@version` of the plugin whose failures caused it.
    pub plugin: String,
    /// The failure, as the dead letters give it.
    pub reason: String,
    /// Until when, Unix milliseconds.
    pub until_ms: i64,
}

/// A candidate's instances by scenario id, with the sha256 and the
/// configuration each was made for.
pub(super) type CandidateInstances = HashMap<String, (String, String, Instance)>;

/// Scenario `id`'s instance of `plugin` for `config` in `instances`: the one
/// kept when it was made for the same plugin and configuration, else a new one
/// in its place.
fn candidate_instance<'i>(
    instances: &'i mut CandidateInstances,
    id: &str,
    plugin: &Plugin,
    config: &str,
) -> Result<&'i mut Instance, crate::runtime::RuntimeError> {
    let sha = &plugin.info().sha256;
    let kept = instances
        .get(id)
        .is_some_and(|(made_for, made_with, _)| made_for == sha && made_with == config);
    if !kept {
        instances.remove(id);
        let instance = plugin.instantiate(config)?;
        instances.insert(id.to_owned(), (sha.clone(), config.to_owned(), instance));
    }
    Ok(&mut instances.get_mut(id).expect("kept or just made").2)
}

impl Pipeline {
    /// Runs one scenario's batch, unless the scenario is quarantined (then every
    /// event fails with the reason, and the flag says so). An instance that cannot
    /// be made fails every event with the reason.
    pub(super) fn run_scenario(
        &mut self,
        route: &Arc<Route>,
        batch: &Batch,
    ) -> (BatchResult, bool) {
        let id = route.id.as_str();
        let all_failed = |message: String| {
            let error = EventError {
                kind: FailureKind::Plugin,
                message,
            };
            BatchResult::all_failed(&error, batch.len())
        };
        if let Some((until, why)) = self.quarantine.get(id) {
            if Instant::now() < *until {
                let message = format!("plugin {} is set aside after: {why}", route.plugin_label);
                return (all_failed(message), true);
            }
            self.quarantine.remove(id);
            self.quarantined().remove(id);
        }
        let called = Instant::now();
        let outcome = self
            .instance(route)
            .and_then(|instance| instance.process(batch));
        let took = self.note_call(&route.plugin_label, called, batch.len());
        let result = match outcome {
            Ok(result) => result,
            Err(err) => {
                tracing::warn!(scenario = id, plugin = %route.plugin_label, error = %err, "scenario batch failed");
                self.instances.remove(id);
                return (
                    all_failed(format!(
                        "plugin {} could not run: {err}",
                        route.plugin_label
                    )),
                    false,
                );
            }
        };
        if let Some(shadow) = &route.shadow {
            self.run_shadow(route, shadow, batch, &result, took);
        }
        let cost = result.failed_call_time();
        let costly = cost >= Duration::from_millis(self.config.quarantine_after_ms);
        let error = result
            .outcomes()
            .iter()
            .rev()
            .find_map(|o| o.error.as_ref());
        if let Some(error) = error.filter(|_| costly)
            && self.config.quarantine_secs > 0
        {
            tracing::warn!(
                scenario = id,
                plugin = %route.plugin_label,
                error = %error,
                failed_calls = result.failed_calls(),
                failed_ms = cost.as_millis() as u64,
                seconds = self.config.quarantine_secs,
                "plugin failures were costly; its scenario is set aside"
            );
            let span = Duration::from_secs(self.config.quarantine_secs);
            let reason = format!(
                "{error} ({} failed calls took {} ms in one batch)",
                result.failed_calls(),
                cost.as_millis()
            );
            self.quarantine
                .insert(id.to_owned(), (Instant::now() + span, reason.clone()));
            self.metrics.quarantines.fetch_add(1, Ordering::Relaxed);
            let until_ms = chrono::Utc::now().timestamp_millis() + span.as_millis() as i64;
            self.quarantined().insert(
                id.to_owned(),
                Quarantine {
                    plugin: route.plugin_label.clone(),
                    reason,
                    until_ms,
                },
            );
        }
        (result, false)
    }

    /// Counts a call of `plugin` on `events` events that began at `called`
    /// in the cycle's plugin time and the call histograms; returns its time.
    fn note_call(&mut self, plugin: &str, called: Instant, events: usize) -> Duration {
        let took = called.elapsed();
        self.stages.plugin += took;
        let labels = [("plugin", plugin)];
        let telemetry = &self.metrics.telemetry;
        telemetry
            .histogram("weir_plugin_call_seconds", &labels)
            .record(took.as_secs_f64());
        telemetry
            .histogram("weir_plugin_call_events", &labels)
            .record(events as f64);
        took
    }

    /// Runs the scenario's shadow candidate on `batch` and compares its
    /// answers with `current` (which took `current_took`). Nothing of the
    /// candidate's reaches the outputs or the sinks.
    fn run_shadow(
        &mut self,
        route: &Arc<Route>,
        shadow: &Result<Shadow, String>,
        batch: &Batch,
        current: &BatchResult,
        current_took: Duration,
    ) {
        let candidate_label = match shadow {
            Ok(candidate) => candidate.label.clone(),
            Err(_) => "(not loaded)".to_owned(),
        };
        // A candidate whose failures were costly (a loop, a slow trap) is set
        // aside as a scenario's own plugin would be: the scenario's events do
        // not pay for it batch after batch.
        if let Some(until) = self.shadow_paused.get(&route.id) {
            if Instant::now() < *until {
                return;
            }
            self.shadow_paused.remove(&route.id);
        }
        let outcome = match shadow {
            Err(reason) => Err(format!("the candidate could not load: {reason}")),
            Ok(candidate) => {
                let made = candidate_instance(
                    &mut self.shadow_instances,
                    &route.id,
                    &candidate.plugin,
                    &route.config,
                );
                match made {
                    Err(err) => Err(format!(
                        "the candidate {} refused the scenario's configuration: {err}",
                        candidate.label
                    )),
                    Ok(instance) => {
                        let called = Instant::now();
                        match instance.process(batch) {
                            Ok(result) => Ok((result, called.elapsed())),
                            Err(err) => {
                                self.shadow_instances.remove(&route.id);
                                Err(format!(
                                    "the candidate {} could not run: {err}",
                                    candidate.label
                                ))
                            }
                        }
                    }
                }
            }
        };
        let mut shadows = self.metrics.shadows.lock().expect("metrics lock");
        let stats = shadows.entry(route.id.clone()).or_insert_with(|| {
            ShadowStats::new(
                &route.plugin_label,
                &candidate_label,
                chrono::Utc::now().timestamp_millis(),
            )
        });
        match outcome {
            Ok((result, took)) => {
                stats.note(
                    batch,
                    (batch.topic(), batch.partition()),
                    (current, current_took.as_nanos() as u64),
                    (&result, took.as_nanos() as u64),
                );
                let cost = result.failed_call_time();
                if cost >= Duration::from_millis(self.config.quarantine_after_ms)
                    && self.config.quarantine_secs > 0
                {
                    let span = Duration::from_secs(self.config.quarantine_secs);
                    stats.error = Some(format!(
                        "set aside for {} s: its failed calls took {} ms in one batch",
                        span.as_secs(),
                        cost.as_millis()
                    ));
                    tracing::warn!(scenario = %route.id, candidate = %candidate_label, failed_ms = cost.as_millis() as u64, "shadow candidate's failures were costly; set aside");
                    self.shadow_paused
                        .insert(route.id.clone(), Instant::now() + span);
                }
            }
            Err(error) => stats.error = Some(error),
        }
    }

    /// Scenario `route`'s `share` of a partition's `messages` by version: its
    /// plugin's part, and its canary's (flagged) when the canary takes events;
    /// empty parts left out.
    #[allow(clippy::type_complexity)]
    pub(super) fn parts<'m>(
        &mut self,
        route: &'m Arc<Route>,
        topic: &str,
        partition: i32,
        messages: &[&OwnedMessage],
        share: Vec<(usize, Option<String>)>,
    ) -> Vec<(&'m Arc<Route>, bool, Vec<(usize, Option<String>)>)> {
        let candidate = route
            .canary
            .as_ref()
            .and_then(|c| Some((c.route.as_ref().ok()?, &c.rule)))
            // A candidate with the plugin's own label is no other version: its
            // part could not be told from the plugin's in the counters.
            .filter(|(candidate, _)| candidate.plugin_label != route.plugin_label);
        let parts = match candidate {
            Some((candidate, rule)) if self.canary_ready(route, candidate) => {
                let (canary, own): (Vec<_>, Vec<_>) = share.into_iter().partition(|(index, _)| {
                    let message = messages[*index];
                    canary::takes(
                        rule.by,
                        rule.share_bp,
                        topic,
                        partition,
                        message.offset(),
                        message.key(),
                    )
                });
                vec![(route, false, own), (candidate, true, canary)]
            }
            _ => vec![(route, false, share)],
        };
        parts
            .into_iter()
            .filter(|(_, _, share)| !share.is_empty())
            .collect()
    }

    /// Whether scenario `route`'s canary `candidate` takes events: this
    /// replica has not decided on it, and it has an instance (one that cannot
    /// be made rolls it back, before any event meets it).
    pub(super) fn canary_ready(&mut self, route: &Arc<Route>, candidate: &Arc<Route>) -> bool {
        if self
            .canary_decided
            .get(&route.id)
            .is_some_and(|(label, verdict)| {
                *label == candidate.plugin_label && matches!(verdict, Verdict::RolledBack(_))
            })
        {
            return false;
        }
        let made = candidate_instance(
            &mut self.canary_instances,
            &route.id,
            &candidate.plugin,
            &candidate.config,
        );
        match made {
            Ok(_) => true,
            Err(err) => {
                let reason = format!(
                    "{} could not be made for the scenario's configuration: {err}",
                    candidate.plugin_label
                );
                self.decide_canary(route, candidate, Verdict::RolledBack(reason));
                false
            }
        }
    }

    /// Runs the canary `candidate` of scenario `route` on its share `batch`.
    /// Failed calls that were costly roll it back at once: the scenario's
    /// events do not pay for it batch after batch, and no quarantine of the
    /// scenario follows from a candidate's failures.
    pub(super) fn run_canary(
        &mut self,
        route: &Arc<Route>,
        candidate: &Arc<Route>,
        batch: &Batch,
    ) -> BatchResult {
        let called = Instant::now();
        let outcome = match self.canary_instances.get_mut(&route.id) {
            Some((_, _, instance)) => instance.process(batch).map_err(|e| e.to_string()),
            None => Err("no instance".to_owned()),
        };
        self.note_call(&candidate.plugin_label, called, batch.len());
        let result = match outcome {
            Ok(result) => result,
            Err(err) => {
                self.canary_instances.remove(&route.id);
                let message = format!("plugin {} could not run: {err}", candidate.plugin_label);
                let error = EventError {
                    kind: FailureKind::Plugin,
                    message: message.clone(),
                };
                self.decide_canary(route, candidate, Verdict::RolledBack(message));
                return BatchResult::all_failed(&error, batch.len());
            }
        };
        let cost = result.failed_call_time();
        if cost >= Duration::from_millis(self.config.quarantine_after_ms) {
            let reason = format!(
                "{}'s {} failed calls took {} ms in one batch",
                candidate.plugin_label,
                result.failed_calls(),
                cost.as_millis()
            );
            self.decide_canary(route, candidate, Verdict::RolledBack(reason));
        }
        result
    }

    /// Adds what one part of scenario `route`'s batch did (the canary's when
    /// `is_canary`, else its plugin's, in `took`) to the canary's figures,
    /// and acts on the rule's verdict once there is one.
    pub(super) fn note_canary(
        &mut self,
        route: &Arc<Route>,
        is_canary: bool,
        result: &BatchResult,
        took: Duration,
    ) {
        let Some(canary) = &route.canary else { return };
        let failed = result
            .outcomes()
            .iter()
            .filter(|o| o.status == Status::Failed)
            .count() as u64;
        let verdict = {
            let mut canaries = self.metrics.canaries.lock().expect("metrics lock");
            let (label, error) = match &canary.route {
                Ok(candidate) => (candidate.plugin_label.clone(), None),
                Err(why) => (
                    canary.rule.plugin.to_string(),
                    Some(format!("the candidate could not load: {why}")),
                ),
            };
            let stats = canaries.entry(route.id.clone()).or_insert_with(|| {
                CanaryStats::new(
                    &route.plugin_label,
                    &label,
                    canary.rule.share_bp,
                    chrono::Utc::now().timestamp_millis(),
                )
            });
            if stats.candidate != label || stats.current != route.plugin_label {
                *stats = CanaryStats::new(
                    &route.plugin_label,
                    &label,
                    canary.rule.share_bp,
                    chrono::Utc::now().timestamp_millis(),
                );
            }
            stats.share_bp = canary.rule.share_bp;
            stats.error = error;
            let events = result.outcomes().len() as u64;
            if is_canary {
                stats.candidate_events += events;
                stats.candidate_failed += failed;
                stats.candidate_ns += took.as_nanos() as u64;
            } else {
                stats.current_events += events;
                stats.current_failed += failed;
                stats.current_ns += took.as_nanos() as u64;
            }
            // After a promotion (until the document says so), a rollback may
            // still follow; after a rollback nothing does.
            match (&stats.verdict, canary::verdict(&canary.rule, stats)) {
                (None, verdict) => verdict,
                (Some(Verdict::Promoted(_)), Some(rollback @ Verdict::RolledBack(_))) => {
                    Some(rollback)
                }
                _ => None,
            }
        };
        if let (Some(verdict), Ok(candidate)) = (verdict, &canary.route) {
            self.decide_canary(route, candidate, verdict);
        }
    }

    /// Acts on a verdict on scenario `route`'s canary `candidate`, once (a
    /// rollback may follow a promotion, nothing follows a rollback): a
    /// rolled-back candidate takes no events here from the next batch on;
    /// either verdict is written into the scenario's document in the
    /// background, retried until it lands or the pipeline stops, from where
    /// every replica takes it.
    fn decide_canary(&mut self, route: &Arc<Route>, candidate: &Arc<Route>, verdict: Verdict) {
        let Some(canary) = &route.canary else { return };
        let decided = self
            .canary_decided
            .get(&route.id)
            .filter(|(label, _)| *label == candidate.plugin_label);
        match (decided.map(|(_, v)| v), &verdict) {
            (None, _) | (Some(Verdict::Promoted(_)), Verdict::RolledBack(_)) => {}
            _ => return,
        }
        let (promote, reason, name) = match &verdict {
            Verdict::RolledBack(reason) => (false, reason.clone(), "rolled_back"),
            Verdict::Promoted(reason) => (true, reason.clone(), "promoted"),
        };
        tracing::warn!(scenario = %route.id, candidate = %candidate.plugin_label, verdict = name, reason = %reason, "canary decided");
        self.metrics
            .telemetry
            .counter(
                "weir_canary_verdicts_total",
                &[("scenario", route.id.as_str()), ("verdict", name)],
            )
            .increment(1);
        {
            let mut canaries = self.metrics.canaries.lock().expect("metrics lock");
            let stats = canaries.entry(route.id.clone()).or_insert_with(|| {
                CanaryStats::new(
                    &route.plugin_label,
                    &candidate.plugin_label,
                    canary.rule.share_bp,
                    chrono::Utc::now().timestamp_millis(),
                )
            });
            stats.verdict = Some(verdict.clone());
        }
        self.canary_decided
            .insert(route.id.clone(), (candidate.plugin_label.clone(), verdict));
        let registry = self.registry.clone();
        let stop = self.stop.clone();
        let id = route.id.clone();
        let reference = canary.rule.plugin.clone();
        let current = route.plugin_label.clone();
        self.runtime.spawn(async move {
            let mut wait = Duration::from_secs(1);
            while !stop.is_cancelled() {
                let written = registry
                    .end_canary(&id, (&reference, &current), promote, &reason, "weir (canary rule)")
                    .await;
                match written {
                    Ok(_) => return,
                    Err(err) if err.is_user_error() => {
                        tracing::warn!(scenario = %id, error = %err, "the canary's verdict could not be written");
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(scenario = %id, error = %err, "writing the canary's verdict; retrying");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }

    pub(super) fn quarantined(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Quarantine>> {
        self.metrics
            .quarantined
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The event with the member's attributes merged in; `None` for a member
    /// the registry does not know (or an event that is not a JSON object). A
    /// registry that cannot answer fails the cycle: an event is never run
    /// unenriched because of an outage, which its retry would then run enriched.
    pub(super) fn enriched(
        &self,
        catalog: &Catalog,
        raw: &[u8],
        member: &str,
    ) -> Result<Option<Vec<u8>>, CycleError> {
        let attributes = self
            .runtime
            .block_on(catalog.member(&self.registry, member))?;
        Ok(attributes.and_then(|attributes| route::enrich(raw, &attributes).ok()))
    }

    pub(super) fn instance(
        &mut self,
        route: &Arc<Route>,
    ) -> Result<&mut Instance, crate::runtime::RuntimeError> {
        if !self.instances.contains_key(&route.id) {
            let instance = route.plugin.instantiate(&route.config)?;
            self.instances
                .insert(route.id.clone(), (route.clone(), instance));
        }
        Ok(&mut self.instances.get_mut(&route.id).expect("just inserted").1)
    }
}
