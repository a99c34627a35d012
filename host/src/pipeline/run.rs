//! Running a scenario's share through its plugin: instances, enrichment, and
//! quarantine (a scenario whose plugin's failures were costly is set aside).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::catalog::{Catalog, Route};
use super::route;
use super::{CycleError, Pipeline};
use crate::runtime::{Batch, BatchResult, EventError, FailureKind, Instance};

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
        let took = called.elapsed();
        self.stages.plugin += took;
        let labels = [("plugin", route.plugin_label.as_str())];
        let telemetry = &self.metrics.telemetry;
        telemetry
            .histogram("weir_plugin_call_seconds", &labels)
            .record(took.as_secs_f64());
        telemetry
            .histogram("weir_plugin_call_events", &labels)
            .record(batch.len() as f64);
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
