//! The pipeline's view of the registry: enabled scenarios with their compiled
//! plugins, and a member cache, rebuilt whenever the registry's generation changes.
//!
//! A background task polls the generation (every `poll` interval) and publishes a new
//! [`Catalog`] on a watch channel; the pipeline picks it up between batches, so a new
//! plugin version or a scenario edit never lands half-way through a batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::route;
use crate::registry::{Registry, RegistryError};
use crate::runtime::Plugin;

/// One enabled scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Route {
    /// Scenario id as text.
    pub id: String,
    /// The compiled plugin.
    pub plugin: Plugin,
    /// `name@registry-version` of the plugin, as stamped on outputs and counters.
    pub plugin_label: String,
    /// The plugin's own version string (from `describe`).
    pub plugin_version: String,
    /// The configuration handed to `configure`.
    pub config: String,
    /// Topics bound to the scenario.
    pub sources: Vec<String>,
    /// Where the scenario's outputs go.
    pub output_topic: String,
    /// The event field holding the member id, when the scenario is enriched.
    pub enrich_by: Option<String>,
    /// The candidate run in the scenario's shadow, or why it could not load.
    pub shadow: Option<Result<Shadow, String>>,
    /// The candidate taking a share of the scenario's events, unless it was
    /// rolled back.
    pub canary: Option<Canary>,
}

/// A candidate plugin that handles a share of a scenario's events in place of
/// its own (`canary.rs`).
#[derive(Debug, Clone)]
pub struct Canary {
    /// The scenario as the candidate runs it (its plugin, label and version),
    /// or why the candidate could not load.
    pub route: Result<Arc<Route>, String>,
    /// Its share, and when it is rolled back or promoted.
    pub rule: crate::registry::CanarySpec,
}

/// A candidate plugin run beside a scenario's own on the same events: its
/// answers are compared, never produced.
#[derive(Debug, Clone)]
pub struct Shadow {
    /// The compiled candidate.
    pub plugin: Plugin,
    /// Its `name@registry-version`.
    pub label: String,
}

/// Every enabled scenario at one registry generation.
#[derive(Debug, Default)]
pub struct Catalog {
    /// The registry generation this catalog reflects.
    pub generation: i64,
    /// Enabled scenarios by id.
    pub routes: BTreeMap<String, Arc<Route>>,
    /// Scenario ids bound to each topic.
    pub by_topic: HashMap<String, Vec<String>>,
    /// Scenarios that could not be loaded, with the reason; their events go to the DLQ.
    pub broken: BTreeMap<String, String>,
    /// The event fields the host reads: `scenario_id`, `memberId` and every
    /// scenario's enrichment field. Nothing else of an event is kept by the host.
    pub event_fields: Vec<String>,
    members: Mutex<HashMap<String, Option<Attributes>>>,
}

/// A member's attributes, shared between the cache and the events they enrich.
pub type Attributes = Arc<Map<String, Value>>;

/// The plugin `reference` names, compiled (once per catalog), with its
/// `name@registry-version`; or why it cannot run.
async fn load(
    registry: &Registry,
    reference: &crate::registry::PluginRef,
    compiled: &mut HashMap<String, (Plugin, String)>,
) -> Result<(Plugin, String), String> {
    let key = reference.to_string();
    if let Some(found) = compiled.get(&key) {
        return Ok(found.clone());
    }
    let (version, bytes) = registry
        .plugin_component(reference)
        .await
        .map_err(|e| e.to_string())?;
    // Compiling takes up to seconds of CPU: not on an async worker.
    let runtime = registry.runtime().clone();
    let label = format!("{}@{}", reference.name, version.version);
    let plugin = tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    compiled.insert(key, (plugin.clone(), label.clone()));
    Ok((plugin, label))
}

impl Catalog {
    /// Every topic some scenario is bound to.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.by_topic.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Reads the registry as it is now.
    pub async fn load(registry: &Registry) -> Result<Self, RegistryError> {
        let generation = registry.generation().await?;
        let mut catalog = Catalog {
            generation,
            event_fields: vec![
                route::SCENARIO_FIELD.to_owned(),
                route::MEMBER_FIELD.to_owned(),
            ],
            ..Catalog::default()
        };
        let mut compiled: HashMap<String, (Plugin, String)> = HashMap::new();
        for scenario in registry.list_scenarios().await? {
            if !scenario.enabled {
                continue;
            }
            let spec = match scenario.spec() {
                Ok(spec) => spec,
                Err(err) => {
                    catalog
                        .broken
                        .insert(scenario.scenario_id.clone(), err.to_string());
                    continue;
                }
            };
            let loaded = load(registry, &spec.plugin, &mut compiled).await;
            let shadow = match &spec.shadow {
                Some(candidate) => Some(
                    load(registry, candidate, &mut compiled)
                        .await
                        .map(|(plugin, label)| Shadow { plugin, label }),
                ),
                None => None,
            };
            match loaded {
                Ok((plugin, label)) => {
                    for topic in &spec.source {
                        catalog
                            .by_topic
                            .entry(topic.clone())
                            .or_default()
                            .push(spec.id.clone());
                    }
                    let mut route = Route {
                        id: spec.id.clone(),
                        plugin_version: plugin.info().version.clone(),
                        plugin,
                        plugin_label: label,
                        config: spec.plugin_config().to_string(),
                        sources: spec.source.clone(),
                        output_topic: spec.output_topic(),
                        enrich_by: spec.enrich.as_ref().map(|e| e.by.clone()),
                        shadow,
                        canary: None,
                    };
                    if let Some(rule) = spec.canary.filter(|c| c.rolled_back.is_none()) {
                        let candidate = load(registry, &rule.plugin, &mut compiled).await.map(
                            |(plugin, label)| {
                                Arc::new(Route {
                                    plugin_version: plugin.info().version.clone(),
                                    plugin,
                                    plugin_label: label,
                                    shadow: None,
                                    canary: None,
                                    ..route.clone()
                                })
                            },
                        );
                        route.canary = Some(Canary {
                            route: candidate,
                            rule,
                        });
                    }
                    if let Some(by) = &route.enrich_by
                        && !catalog.event_fields.contains(by)
                    {
                        catalog.event_fields.push(by.clone());
                    }
                    catalog.routes.insert(spec.id.clone(), Arc::new(route));
                }
                Err(reason) => {
                    catalog.broken.insert(spec.id.clone(), reason);
                }
            }
        }
        Ok(catalog)
    }

    /// A member's attributes, from the cache or the registry. The cache lives as
    /// long as this catalog: an import bumps the generation, which makes a new one.
    pub async fn member(
        &self,
        registry: &Registry,
        id: &str,
    ) -> Result<Option<Attributes>, RegistryError> {
        if let Some(hit) = self.members.lock().expect("member cache lock").get(id) {
            return Ok(hit.clone());
        }
        let found = match registry.member(id).await {
            Ok(member) => Some(Arc::new(member.attributes)),
            Err(err) if err.is_user_error() => None,
            Err(err) => return Err(err),
        };
        self.members
            .lock()
            .expect("member cache lock")
            .insert(id.to_owned(), found.clone());
        Ok(found)
    }
}

impl route::Routes for Catalog {
    fn lookup(&self, id: &str) -> route::Lookup<'_> {
        match (self.routes.get(id), self.broken.get(id)) {
            (Some(r), _) => route::Lookup::Enabled(&r.id, r.member_field()),
            (None, Some(why)) => route::Lookup::Broken(why),
            (None, None) => route::Lookup::Unknown,
        }
    }

    fn bound(&self, topic: &str) -> Vec<(&str, &str)> {
        self.by_topic
            .get(topic)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| self.routes.get(id))
                    .map(|r| (r.id.as_str(), r.member_field()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn event_fields(&self) -> &[String] {
        &self.event_fields
    }
}

impl Route {
    /// The event field holding the member id: the enrichment field, else `memberId`.
    pub fn member_field(&self) -> &str {
        self.enrich_by.as_deref().unwrap_or(route::MEMBER_FIELD)
    }
}

/// Keeps `sender` up to date with the registry until `stop` is cancelled.
pub async fn follow(
    registry: Registry,
    sender: watch::Sender<Arc<Catalog>>,
    poll: Duration,
    stop: CancellationToken,
) {
    let mut seen = sender.borrow().generation;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
        match registry.generation().await {
            Ok(generation) if generation == seen => continue,
            Ok(_) => {}
            Err(err) => {
                // Said once per outage by the service's health watch
                // (`weir::health`), not every poll.
                tracing::debug!(error = %err, "reading the registry generation failed; retrying");
                continue;
            }
        }
        match Catalog::load(&registry).await {
            Ok(catalog) => {
                seen = catalog.generation;
                tracing::info!(
                    generation = catalog.generation,
                    scenarios = catalog.routes.len(),
                    broken = catalog.broken.len(),
                    "registry changed; the pipeline switches at its next batch"
                );
                sender.send_replace(Arc::new(catalog));
            }
            Err(err) => tracing::warn!(error = %err, "reloading the registry failed; retrying"),
        }
    }
}
