//! Scenarios: the JSON documents users write, checked against their plugin
//! and stored as written.
//!
//! A scenario document is a JSON object. weir reads these fields itself:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `scenario_id` | string or non-negative integer | the id events carry (required) |
//! | `title`, `manager` | string | for people |
//! | `plugin` | `"name"` or `"name@version"` | the plugin that runs it; default [`DEFAULT_PLUGIN`], current version unless pinned |
//! | `source` | array of topic names | topics whose events all belong to this scenario |
//! | `output_topic` | topic name | default `weir.out.<scenario_id>` |
//! | `enrich` | `{"by": "<event field>"}` | merge the member with that id into each event |
//! | `enabled` | boolean | default `true` |
//! | `shadow` | `"name@version"` | a candidate run beside the plugin on the same events; its answers are compared, never produced (`docs/pipeline.md`) |
//! | `canary` | `{"plugin": "name@version", "share": 0.1, …}` | a candidate that handles a share of the events for real, rolled back when it fails more than the plugin ([`CanarySpec`], `docs/pipeline.md`) |
//!
//! Everything else (`log_format`, `filters`, `logical_operator`, …) belongs to
//! the plugin. The plugin's configuration is the document without weir's
//! routing fields ([`WEIR_SCENARIO_FIELDS`]): it is checked against the
//! plugin's JSON Schema and then given to a fresh instance's `configure`. A
//! scenario is stored only when all of that passes. Top-level keys the
//! schema's `properties` do not name (besides `scenario_id`, `title` and
//! `manager`) are refused too, so a misspelt key cannot be silently ignored by
//! a lenient plugin; a schema opts out with `additionalProperties: true`.

use serde::Serialize;
use serde_json::{Map, Value};

use super::plugins::PluginRef;
use super::{FieldError, Registry, RegistryError, db, get, now_ms, rfc3339};

/// The plugin a scenario runs when it names none: the shipped `scenario` plugin.
pub const DEFAULT_PLUGIN: &str = "scenario";

/// Fields of a scenario document that are weir's and not passed to the plugin.
pub const WEIR_SCENARIO_FIELDS: &[&str] = &[
    "plugin",
    "source",
    "output_topic",
    "enrich",
    "enabled",
    "archive_columns",
    "shadow",
    "canary",
];

/// Types an `archive_columns` declaration may give a field.
pub const ARCHIVE_COLUMN_TYPES: &[&str] = &["int64", "float64", "bool", "string"];

/// Whether `name` is one the archive keeps for itself (its fixed columns,
/// `extra`, `_record`), which no declared column may take.
fn archive_reserved(name: &str) -> bool {
    crate::archive::schema::FIXED.contains(&name) || matches!(name, "extra" | "_record")
}

/// Most field errors reported for one document or import; the rest are counted.
const MAX_ERRORS: usize = 50;

/// Member enrichment of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrich {
    /// The event field holding the member id, e.g. `memberId`.
    pub by: String,
}

/// weir's reading of a scenario document.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioSpec {
    /// The scenario id, as text (an integer id `5` becomes `"5"`).
    pub id: String,
    /// The plugin that runs it.
    pub plugin: PluginRef,
    /// Topics bound to this scenario.
    pub source: Vec<String>,
    /// Where outputs go, when not the default.
    pub output_topic: Option<String>,
    /// Member enrichment, when asked for.
    pub enrich: Option<Enrich>,
    /// Whether the pipeline runs it.
    pub enabled: bool,
    /// A candidate plugin run in the shadow of the scenario's own: on the
    /// same events, compared, never produced.
    pub shadow: Option<PluginRef>,
    /// A candidate plugin that handles a share of the events in the plugin's
    /// place.
    pub canary: Option<CanarySpec>,
    /// Types its plugin's output fields take in the archive, declared ahead of
    /// the first records (field → `int64`, `float64`, `bool` or `string`).
    pub archive_columns: std::collections::BTreeMap<String, String>,
    /// The document as written.
    pub document: Map<String, Value>,
}

impl ScenarioSpec {
    /// Reads weir's fields of a document, reporting every problem at once.
    pub fn parse(document: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = document.as_object() else {
            return Err(vec![FieldError::new(
                "(document)",
                format!(
                    "expected a JSON object with at least `scenario_id`, got {}",
                    json_type(document)
                ),
            )]);
        };
        let mut errors = Vec::new();

        let id = match object.get("scenario_id") {
            None => {
                errors.push(FieldError::new(
                    "scenario_id",
                    "missing; every scenario needs an id (a string or a non-negative integer)",
                ));
                None
            }
            Some(Value::String(s)) if valid_id(s) => Some(s.clone()),
            Some(Value::Number(n)) if n.as_u64().is_some() => Some(n.to_string()),
            Some(other) => {
                errors.push(FieldError::new(
                    "scenario_id",
                    format!(
                        "got {}; expected a non-negative integer or a string of 1 to 128 letters, \
                         digits, `.`, `_` or `-`",
                        short(other)
                    ),
                ));
                None
            }
        };
        for field in ["title", "manager"] {
            if let Some(value) = object.get(field).filter(|v| !v.is_string()) {
                errors.push(FieldError::new(
                    field,
                    format!("got {}; expected a string", json_type(value)),
                ));
            }
        }
        let plugin = match object.get("plugin") {
            None => Some(PluginRef {
                name: DEFAULT_PLUGIN.to_owned(),
                version: None,
            }),
            Some(Value::String(text)) => match PluginRef::parse(text) {
                Ok(reference) => Some(reference),
                Err(reason) => {
                    errors.push(FieldError::new("plugin", reason));
                    None
                }
            },
            Some(other) => {
                errors.push(FieldError::new(
                    "plugin",
                    format!(
                        "got {}; expected a string `name` or `name@version`",
                        json_type(other)
                    ),
                ));
                None
            }
        };
        let mut source = Vec::new();
        match object.get("source") {
            None => {}
            Some(Value::Array(topics)) => {
                for (i, topic) in topics.iter().enumerate() {
                    match topic.as_str() {
                        Some(t) if valid_topic(t) => source.push(t.to_owned()),
                        _ => errors.push(FieldError::new(
                            format!("source[{i}]"),
                            format!("got {}; expected a Kafka topic name (1 to 249 letters, digits, `.`, `_` or `-`)", short(topic)),
                        )),
                    }
                }
            }
            Some(other) => errors.push(FieldError::new(
                "source",
                format!(
                    "got {}; expected an array of Kafka topic names, e.g. [\"events\"]",
                    json_type(other)
                ),
            )),
        }
        let output_topic = match object.get("output_topic") {
            None => None,
            Some(Value::String(t)) if valid_topic(t) => Some(t.clone()),
            Some(other) => {
                errors.push(FieldError::new(
                    "output_topic",
                    format!(
                        "got {}; expected a Kafka topic name (1 to 249 letters, digits, `.`, `_` or `-`)",
                        short(other)
                    ),
                ));
                None
            }
        };
        let enrich = match object.get("enrich") {
            None | Some(Value::Null) => None,
            Some(Value::Object(fields)) => {
                for key in fields.keys().filter(|k| *k != "by") {
                    errors.push(FieldError::new(
                        format!("enrich.{key}"),
                        "unknown field; `enrich` accepts only `by`",
                    ));
                }
                match fields.get("by") {
                    Some(Value::String(by)) if !by.is_empty() => Some(Enrich { by: by.clone() }),
                    other => {
                        errors.push(FieldError::new(
                            "enrich.by",
                            format!(
                                "got {}; expected the name of the event field holding the member id, e.g. \"memberId\"",
                                other.map_or("nothing".to_owned(), short)
                            ),
                        ));
                        None
                    }
                }
            }
            Some(other) => {
                errors.push(FieldError::new(
                    "enrich",
                    format!(
                        "got {}; expected an object such as {{\"by\": \"memberId\"}}",
                        json_type(other)
                    ),
                ));
                None
            }
        };
        let enabled = match object.get("enabled") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                errors.push(FieldError::new(
                    "enabled",
                    format!("got {}; expected true or false", json_type(other)),
                ));
                true
            }
        };

        let mut archive_columns = std::collections::BTreeMap::new();
        match object.get("archive_columns") {
            None | Some(Value::Null) => {}
            Some(Value::Object(fields)) => {
                for (name, kind) in fields {
                    let at = format!("archive_columns.{name}");
                    if name.is_empty()
                        || name.len() > crate::registry::MAX_COLUMN_NAME
                        || archive_reserved(name)
                    {
                        errors.push(FieldError::new(
                            at,
                            format!(
                                "not a column name: 1 to {} bytes, none of {}, extra, _record",
                                crate::registry::MAX_COLUMN_NAME,
                                crate::archive::schema::FIXED.join(", ")
                            ),
                        ));
                        continue;
                    }
                    match kind.as_str() {
                        Some(k) if ARCHIVE_COLUMN_TYPES.contains(&k) => {
                            archive_columns.insert(name.clone(), k.to_owned());
                        }
                        _ => errors.push(FieldError::new(
                            at,
                            format!(
                                "got {}; expected one of {}",
                                short(kind),
                                ARCHIVE_COLUMN_TYPES.join(", ")
                            ),
                        )),
                    }
                }
            }
            Some(other) => errors.push(FieldError::new(
                "archive_columns",
                format!(
                    "got {}; expected an object of field names and types, e.g. \
                     {{\"price\": \"float64\"}}",
                    json_type(other)
                ),
            )),
        }

        let shadow = match object.get("shadow") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => match PluginRef::parse(text) {
                Ok(reference) if reference.version.is_some() => Some(reference),
                Ok(_) => {
                    errors.push(FieldError::new(
                        "shadow",
                        format!(
                            "{text:?} names no version; a shadow is a version of a plugin, \
                             `name@N`"
                        ),
                    ));
                    None
                }
                Err(reason) => {
                    errors.push(FieldError::new("shadow", reason));
                    None
                }
            },
            Some(other) => {
                errors.push(FieldError::new(
                    "shadow",
                    format!("got {}; expected `name@N`", json_type(other)),
                ));
                None
            }
        };

        let canary = match object.get("canary") {
            None | Some(Value::Null) => None,
            Some(value) => CanarySpec::parse(value, &mut errors),
        };
        if shadow.is_some() && canary.is_some() {
            errors.push(FieldError::new(
                "canary",
                "the scenario has a `shadow` too; a scenario tries one candidate at a time",
            ));
        }

        match (id, plugin) {
            (Some(id), Some(plugin)) if errors.is_empty() => Ok(Self {
                id,
                plugin,
                source,
                output_topic,
                enrich,
                enabled,
                shadow,
                canary,
                archive_columns,
                document: object.clone(),
            }),
            _ => Err(errors),
        }
    }

    /// The plugin's configuration: the document without weir's fields.
    pub fn plugin_config(&self) -> Value {
        let mut config = self.document.clone();
        for field in WEIR_SCENARIO_FIELDS {
            config.remove(*field);
        }
        Value::Object(config)
    }

    /// The output topic, defaulted to `weir.out.<scenario_id>`.
    pub fn output_topic(&self) -> String {
        self.output_topic
            .clone()
            .unwrap_or_else(|| format!("weir.out.{}", self.id))
    }
}

/// How a canary's share of the events is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CanaryBy {
    /// By a hash of the record key (records without a key: of their topic,
    /// partition and offset): one key always meets the same version.
    Key,
    /// By a hash of the topic and partition: whole partitions meet the candidate.
    Partition,
}

/// A canary rollout: `candidate` takes `share` of the scenario's events for
/// real (its outputs are produced, its failures dead-lettered), chosen by a
/// rule that gives an event the same version on every replica and replay.
///
/// ```json
/// "canary": {"plugin": "clicks@4", "share": 0.1, "by": "key",
///            "rollback_margin": 0.02, "min_events": 500, "promote_after": 100000}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanarySpec {
    /// The candidate version, `name@N`.
    #[serde(serialize_with = "as_text")]
    pub plugin: PluginRef,
    /// Its share of the events, in basis points (1 to 10,000); written as a
    /// fraction, `0.1` for 10 %.
    pub share_bp: u32,
    /// How an event's version is chosen.
    pub by: CanaryBy,
    /// How far the candidate's failure rate may pass the plugin's (as a
    /// fraction of events, default 0.01) before it is rolled back.
    pub rollback_margin: f64,
    /// Events the candidate handles before its failure rate is judged
    /// (default 100).
    pub min_events: u64,
    /// Promote it by rule once it has handled this many events within the
    /// margin; without it, promotion is by command.
    pub promote_after: Option<u64>,
    /// Set by weir when it rolled the candidate back (or by a person, to stop
    /// it): why. A canary with it takes no events.
    pub rolled_back: Option<String>,
}

fn as_text<S: serde::Serializer>(plugin: &PluginRef, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(plugin)
}

/// Fields of a `canary` object.
const CANARY_FIELDS: &[&str] = &[
    "plugin",
    "share",
    "by",
    "rollback_margin",
    "min_events",
    "promote_after",
    "rolled_back",
];

impl CanarySpec {
    /// Default `rollback_margin`.
    pub const DEFAULT_MARGIN: f64 = 0.01;
    /// Default `min_events`.
    pub const DEFAULT_MIN_EVENTS: u64 = 100;

    fn parse(value: &Value, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Some(fields) = value.as_object() else {
            errors.push(FieldError::new(
                "canary",
                format!(
                    "got {}; expected an object such as {{\"plugin\": \"name@2\", \"share\": 0.1}}",
                    json_type(value)
                ),
            ));
            return None;
        };
        let before = errors.len();
        for key in fields
            .keys()
            .filter(|k| !CANARY_FIELDS.contains(&k.as_str()))
        {
            errors.push(FieldError::new(
                format!("canary.{key}"),
                format!(
                    "unknown field; `canary` accepts {}",
                    CANARY_FIELDS.join(", ")
                ),
            ));
        }
        let plugin = match fields.get("plugin") {
            Some(Value::String(text)) => {
                match PluginRef::parse(text) {
                    Ok(reference) if reference.version.is_some() => Some(reference),
                    Ok(_) => {
                        errors.push(FieldError::new(
                        "canary.plugin",
                        format!("{text:?} names no version; a canary is a version of a plugin, `name@N`"),
                    ));
                        None
                    }
                    Err(reason) => {
                        errors.push(FieldError::new("canary.plugin", reason));
                        None
                    }
                }
            }
            other => {
                errors.push(FieldError::new(
                    "canary.plugin",
                    format!(
                        "got {}; expected the candidate version, `name@N`",
                        other.map_or("nothing".to_owned(), short)
                    ),
                ));
                None
            }
        };
        let share_bp = match fields.get("share").and_then(Value::as_f64) {
            Some(share) if (0.0001..=1.0).contains(&share) => (share * 10_000.0).round() as u32,
            _ => {
                errors.push(FieldError::new(
                    "canary.share",
                    format!(
                        "got {}; expected the candidate's share of the events, a number from \
                         0.0001 to 1 (0.1 for 10 %)",
                        fields.get("share").map_or("nothing".to_owned(), short)
                    ),
                ));
                0
            }
        };
        let by = match fields.get("by") {
            None => CanaryBy::Key,
            Some(Value::String(by)) if by == "key" => CanaryBy::Key,
            Some(Value::String(by)) if by == "partition" => CanaryBy::Partition,
            Some(other) => {
                errors.push(FieldError::new(
                    "canary.by",
                    format!("got {}; expected \"key\" or \"partition\"", short(other)),
                ));
                CanaryBy::Key
            }
        };
        let rollback_margin = match fields.get("rollback_margin") {
            None => Self::DEFAULT_MARGIN,
            Some(value) => match value.as_f64() {
                Some(margin) if (0.0..=1.0).contains(&margin) => margin,
                _ => {
                    errors.push(FieldError::new(
                        "canary.rollback_margin",
                        format!(
                            "got {}; expected how far the candidate's failure rate may pass the \
                             plugin's, a fraction from 0 to 1 (0.01 for one point)",
                            short(value)
                        ),
                    ));
                    Self::DEFAULT_MARGIN
                }
            },
        };
        let mut count = |field: &str, default: Option<u64>| match fields.get(field) {
            None | Some(Value::Null) => default,
            Some(value) => match value.as_u64().filter(|n| *n >= 1) {
                Some(n) => Some(n),
                None => {
                    errors.push(FieldError::new(
                        format!("canary.{field}"),
                        format!(
                            "got {}; expected a whole number of events, at least 1",
                            short(value)
                        ),
                    ));
                    default
                }
            },
        };
        let min_events =
            count("min_events", Some(Self::DEFAULT_MIN_EVENTS)).unwrap_or(Self::DEFAULT_MIN_EVENTS);
        let promote_after = count("promote_after", None);
        if let Some(after) = promote_after.filter(|after| *after < min_events) {
            errors.push(FieldError::new(
                "canary.promote_after",
                format!(
                    "{after} is below min_events ({min_events}); the candidate is judged only \
                     after min_events events"
                ),
            ));
        }
        let rolled_back = match fields.get("rolled_back") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::String(why)) if why.is_empty() => None,
            Some(Value::String(why)) => Some(why.clone()),
            Some(other) => {
                errors.push(FieldError::new(
                    "canary.rolled_back",
                    format!(
                        "got {}; expected why the candidate was stopped (text), or null or \
                         false to let it take its share again",
                        short(other)
                    ),
                ));
                None
            }
        };
        if errors.len() > before {
            return None;
        }
        Some(Self {
            plugin: plugin?,
            share_bp,
            by,
            rollback_margin,
            min_events,
            promote_after,
            rolled_back,
        })
    }
}

/// A stored scenario.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The scenario id.
    pub scenario_id: String,
    /// The plugin reference, `name` or `name@version`.
    pub plugin: String,
    /// Whether the pipeline runs it.
    pub enabled: bool,
    /// The document as written (with `enabled` set to false if a forced
    /// plugin deletion disabled it).
    #[schema(value_type = crate::api::ScenarioDocument)]
    pub document: Value,
    /// Creation time, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Last change, RFC 3339.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Who changed it last.
    pub updated_by: String,
}

impl Scenario {
    /// weir's reading of the stored document.
    pub fn spec(&self) -> Result<ScenarioSpec, RegistryError> {
        ScenarioSpec::parse(&self.document).map_err(|errors| RegistryError::InvalidScenario {
            scenario: Some(self.scenario_id.clone()),
            errors,
        })
    }
}

/// How [`Registry::put_scenario`] treats an existing scenario with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Refuse with [`RegistryError::ScenarioExists`].
    Create,
    /// Replace it (or create it).
    Upsert,
}

pub(crate) fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub(crate) fn valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for a message: short ones verbatim, long ones by type.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 40 {
        text
    } else {
        json_type(value).to_owned()
    }
}

/// `/filters/0/operator` → `filters[0].operator`.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    if path.is_empty() {
        "(document)".to_owned()
    } else {
        path
    }
}

/// Keys every scenario document may carry whatever its plugin.
const SCENARIO_KEYS: [&str; 3] = ["scenario_id", "title", "manager"];

/// Top-level keys of a plugin configuration that the plugin's schema does not
/// name in `properties`. A misspelt key (`filter` for `filters`) would
/// otherwise be ignored by a lenient plugin and change what the scenario
/// matches without a word. Schemas without `properties`, or that allow other
/// keys explicitly (`additionalProperties: true`, `patternProperties`), are
/// not checked.
fn unknown_keys(plugin: &str, schema: &Value, config: &Value) -> Vec<FieldError> {
    let (Some(properties), Some(config)) = (
        schema.get("properties").and_then(Value::as_object),
        config.as_object(),
    ) else {
        return Vec::new();
    };
    if schema.get("additionalProperties") == Some(&Value::Bool(true))
        || schema.get("patternProperties").is_some()
    {
        return Vec::new();
    }
    let mut accepted: Vec<&str> = WEIR_SCENARIO_FIELDS
        .iter()
        .copied()
        .chain(SCENARIO_KEYS)
        .chain(properties.keys().map(String::as_str))
        .collect();
    accepted.sort_unstable();
    accepted.dedup();
    config
        .keys()
        .filter(|key| !accepted.contains(&key.as_str()))
        .map(|key| {
            FieldError::new(
                key.as_str(),
                format!(
                    "unknown field for plugin `{plugin}`; the fields it accepts are {}",
                    accepted.join(", ")
                ),
            )
        })
        .collect()
}

/// The schema validator's message, except that an enum lists every accepted value.
fn schema_reason(error: &jsonschema::ValidationError<'_>) -> String {
    match &error.kind {
        jsonschema::error::ValidationErrorKind::Enum { options } => {
            let accepted = options
                .as_array()
                .map(|values| {
                    values
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| options.to_string());
            format!("got {}; expected one of {accepted}", short(&error.instance))
        }
        _ => error.to_string(),
    }
}

/// Splits a plugin's `configure` message into a field and a reason when it
/// starts with a field path (`filters[0].operator: ...`).
fn configure_error(reason: &str) -> FieldError {
    if let Some((head, rest)) = reason.split_once(": ") {
        let looks_like_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
        if looks_like_path {
            return FieldError::new(head, rest);
        }
    }
    FieldError::new("(configuration)", reason)
}

fn cap(mut errors: Vec<FieldError>) -> Vec<FieldError> {
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        errors.push(FieldError::new(
            "…",
            format!("{more} more problems not shown"),
        ));
    }
    errors
}

fn scenario_from_row(row: &sqlx::any::AnyRow) -> Result<Scenario, RegistryError> {
    let what = "scenarios";
    let id: String = get(row, "scenario_id", what)?;
    let name: String = get(row, "plugin_name", what)?;
    let version: Option<i64> = get(row, "plugin_version", what)?;
    let document: String = get(row, "document", what)?;
    Ok(Scenario {
        plugin: PluginRef { name, version }.to_string(),
        enabled: get::<i64>(row, "enabled", what)? != 0,
        document: serde_json::from_str(&document).map_err(|e| RegistryError::Corrupt {
            what: format!("scenarios.document of `{id}`"),
            reason: e.to_string(),
        })?,
        created_at: rfc3339(get(row, "created_at", what)?),
        updated_at: rfc3339(get(row, "updated_at", what)?),
        updated_by: get(row, "updated_by", what)?,
        scenario_id: id,
    })
}

const SCENARIO_COLUMNS: &str = "scenario_id, plugin_name, plugin_version, enabled, document, created_at, updated_at, updated_by";

impl Registry {
    /// Checks a scenario document completely — weir's fields, the plugin it
    /// names, the plugin's JSON Schema, the plugin's `configure` — and returns
    /// weir's reading of it, or every problem found.
    pub async fn check_scenario(&self, document: &Value) -> Result<ScenarioSpec, RegistryError> {
        let invalid =
            |scenario: Option<String>, errors: Vec<FieldError>| RegistryError::InvalidScenario {
                scenario,
                errors: cap(errors),
            };
        let spec = ScenarioSpec::parse(document).map_err(|errors| {
            let id = document
                .get("scenario_id")
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            invalid(id, errors)
        })?;
        let id = Some(spec.id.clone());
        let candidates = [
            ("shadow", spec.shadow.as_ref()),
            ("canary.plugin", spec.canary.as_ref().map(|c| &c.plugin)),
        ];
        for (field, candidate) in candidates {
            let Some(candidate) = candidate else { continue };
            match self.resolve_plugin(candidate).await {
                Ok(_) => {}
                Err(
                    error @ (RegistryError::PluginNotFound { .. }
                    | RegistryError::VersionNotFound { .. }),
                ) => {
                    return Err(invalid(id, vec![FieldError::new(field, error.to_string())]));
                }
                Err(other) => return Err(other),
            }
        }

        let (version, bytes) = match self.plugin_component(&spec.plugin).await {
            Ok(found) => found,
            Err(RegistryError::PluginNotFound { name }) => {
                let known: Vec<String> = self
                    .list_plugins()
                    .await?
                    .into_iter()
                    .map(|p| p.name)
                    .collect();
                let reason = if known.is_empty() {
                    format!(
                        "no plugin named `{name}`; no plugins are uploaded yet (upload one with \
                         `weir plugin push`)"
                    )
                } else {
                    format!(
                        "no plugin named `{name}`; uploaded plugins: {}",
                        known.join(", ")
                    )
                };
                return Err(invalid(id, vec![FieldError::new("plugin", reason)]));
            }
            Err(RegistryError::VersionNotFound {
                name,
                version,
                available,
            }) => {
                return Err(invalid(
                    id,
                    vec![FieldError::new(
                        "plugin",
                        format!(
                            "plugin `{name}` has no version {version}; it has versions {available:?}"
                        ),
                    )],
                ));
            }
            Err(other) => return Err(other),
        };

        if let Some(canary) = spec
            .canary
            .as_ref()
            .filter(|c| c.plugin.name == version.name && c.plugin.version == Some(version.version))
        {
            return Err(invalid(
                id,
                vec![FieldError::new(
                    "canary.plugin",
                    format!(
                        "{} is the scenario's own plugin version; a canary is another version",
                        canary.plugin
                    ),
                )],
            ));
        }
        let config = spec.plugin_config();
        let validator = jsonschema::validator_for(&version.config_schema).map_err(|e| {
            RegistryError::InvalidPluginSchema {
                name: version.name.clone(),
                reason: e.to_string(),
            }
        })?;
        let mut schema_errors = unknown_keys(&version.name, &version.config_schema, &config);
        schema_errors.extend(validator.iter_errors(&config).map(|e| {
            FieldError::new(pointer_to_path(e.instance_path.as_str()), schema_reason(&e))
        }));
        if !schema_errors.is_empty() {
            return Err(invalid(id, schema_errors));
        }

        let runtime = self.runtime.clone();
        let config_text = config.to_string();
        let configured = tokio::task::spawn_blocking(move || {
            let plugin = runtime.load(&bytes)?;
            plugin.instantiate(&config_text).map(drop)
        })
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))?;
        match configured {
            Ok(()) => Ok(spec),
            Err(crate::runtime::RuntimeError::Configure { reason, .. }) => {
                Err(invalid(id, vec![configure_error(&reason)]))
            }
            Err(crate::runtime::RuntimeError::ConfigJson { reason, .. }) => Err(invalid(
                id,
                vec![FieldError::new("(configuration)", reason)],
            )),
            Err(other) => Err(RegistryError::InvalidPlugin(other)),
        }
    }

    /// Checks and stores a scenario. `path_id`, when given, must equal the
    /// document's `scenario_id`. Returns the stored scenario and whether it
    /// was created.
    pub async fn put_scenario(
        &self,
        document: Value,
        path_id: Option<&str>,
        mode: PutMode,
        updated_by: &str,
    ) -> Result<(Scenario, bool), RegistryError> {
        let stored = self
            .store_scenario(document, path_id, mode, updated_by, None)
            .await?;
        Ok(stored.expect("an unguarded write stores"))
    }

    /// [`Registry::put_scenario`], and when `unchanged_since` is given, only
    /// over a stored scenario last changed at that time (Unix ms): `None` when
    /// it changed since.
    async fn store_scenario(
        &self,
        document: Value,
        path_id: Option<&str>,
        mode: PutMode,
        updated_by: &str,
        unchanged_since: Option<i64>,
    ) -> Result<Option<(Scenario, bool)>, RegistryError> {
        let spec = self.check_scenario(&document).await?;
        if let Some(path_id) = path_id.filter(|p| *p != spec.id) {
            return Err(RegistryError::InvalidScenario {
                scenario: Some(spec.id.clone()),
                errors: vec![FieldError::new(
                    "scenario_id",
                    format!(
                        "`{}` differs from `{path_id}` in the URL; they must be the same",
                        spec.id
                    ),
                )],
            });
        }

        let mut tx = self.begin_write().await?;
        // The plugin might have been deleted since the check.
        let versions = self.versions_in(&mut tx, &spec.plugin.name).await?;
        if let Some(v) = spec.plugin.version.filter(|v| !versions.contains(v)) {
            return Err(RegistryError::VersionNotFound {
                name: spec.plugin.name.clone(),
                version: v,
                available: versions,
            });
        }
        let existing =
            sqlx::query(self.sql("SELECT 1 AS present FROM scenarios WHERE scenario_id = ?"))
                .bind(&spec.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading a scenario"))?;
        let now = now_ms();
        let text = document.to_string();
        let enabled = i64::from(spec.enabled);
        if existing.is_some() {
            if mode == PutMode::Create {
                return Err(RegistryError::ScenarioExists { id: spec.id });
            }
            const UPDATE: &str = "UPDATE scenarios SET plugin_name = ?, plugin_version = ?, \
                 enabled = ?, document = ?, updated_at = ?, updated_by = ? WHERE scenario_id = ?";
            let guarded;
            let sql = match unchanged_since {
                Some(_) => {
                    guarded = format!("{UPDATE} AND updated_at = ?");
                    guarded.as_str()
                }
                None => UPDATE,
            };
            let mut update = sqlx::query(self.sql(sql))
                .bind(&spec.plugin.name)
                .bind(spec.plugin.version)
                .bind(enabled)
                .bind(&text)
                // A guarded write moves the time on, so a second one made from
                // the same reading cannot land too.
                .bind(now.max(unchanged_since.map_or(0, |t| t + 1)))
                .bind(updated_by)
                .bind(&spec.id);
            if let Some(since) = unchanged_since {
                update = update.bind(since);
            }
            let updated = update
                .execute(&mut *tx)
                .await
                .map_err(db("updating a scenario"))?;
            if updated.rows_affected() == 0 {
                return Ok(None);
            }
        } else {
            sqlx::query(self.sql(
                "INSERT INTO scenarios (scenario_id, plugin_name, plugin_version, enabled, \
                 document, created_at, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&spec.id)
            .bind(&spec.plugin.name)
            .bind(spec.plugin.version)
            .bind(enabled)
            .bind(&text)
            .bind(now)
            .bind(now)
            .bind(updated_by)
            .execute(&mut *tx)
            .await
            .map_err(db("inserting a scenario"))?;
        }
        if existing.is_none() && unchanged_since.is_some() {
            return Ok(None);
        }
        tx.commit().await.map_err(db("committing a scenario"))?;
        tracing::info!(scenario = %spec.id, plugin = %spec.plugin, "scenario stored");
        Ok(Some((self.scenario(&spec.id).await?, existing.is_none())))
    }

    /// Every scenario, by id.
    pub async fn list_scenarios(&self) -> Result<Vec<Scenario>, RegistryError> {
        let rows = sqlx::query(self.sql(&format!(
            "SELECT {SCENARIO_COLUMNS} FROM scenarios ORDER BY scenario_id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing scenarios"))?;
        rows.iter().map(scenario_from_row).collect()
    }

    /// One scenario.
    pub async fn scenario(&self, id: &str) -> Result<Scenario, RegistryError> {
        self.scenario_as_of(id).await.map(|(scenario, _)| scenario)
    }

    /// One scenario, and when it last changed (Unix ms), for a write guarded
    /// on it.
    async fn scenario_as_of(&self, id: &str) -> Result<(Scenario, i64), RegistryError> {
        let row = sqlx::query(self.sql(&format!(
            "SELECT {SCENARIO_COLUMNS} FROM scenarios WHERE scenario_id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a scenario"))?
        .ok_or_else(|| RegistryError::ScenarioNotFound { id: id.to_owned() })?;
        let updated_at: i64 = get(&row, "updated_at", "scenarios")?;
        Ok((scenario_from_row(&row)?, updated_at))
    }

    /// Ends scenario `id`'s canary `candidate`, judged beside the plugin
    /// version `current` (`name@N`): promoted, the candidate becomes the
    /// document's `plugin` and `canary` goes; otherwise `canary` keeps
    /// `rolled_back` with `reason`, and takes no more events. Nothing changes
    /// (`Ok(false)`) when the document's canary is another candidate or already
    /// ended, or its plugin is no longer `current`: another replica or a person
    /// was first. The write only lands over the document it was made from
    /// (re-read and tried again otherwise), so no edit made meanwhile is lost.
    pub async fn end_canary(
        &self,
        id: &str,
        (candidate, current): (&PluginRef, &str),
        promote: bool,
        reason: &str,
        by: &str,
    ) -> Result<bool, RegistryError> {
        loop {
            let (scenario, since) = self.scenario_as_of(id).await?;
            let Ok(spec) = scenario.spec() else {
                return Ok(false);
            };
            let ours = spec
                .canary
                .as_ref()
                .is_some_and(|c| c.rolled_back.is_none() && c.plugin == *candidate);
            let plugin = self.resolve_plugin(&spec.plugin).await?;
            if !ours || format!("{}@{}", plugin.name, plugin.version) != current {
                return Ok(false);
            }
            let mut document = scenario.document;
            let Some(object) = document.as_object_mut() else {
                return Ok(false);
            };
            if promote {
                object.remove("canary");
                object.insert("plugin".into(), Value::String(candidate.to_string()));
            } else if let Some(Value::Object(canary)) = object.get_mut("canary") {
                canary.insert("rolled_back".into(), Value::String(reason.to_owned()));
            }
            let stored = self
                .store_scenario(document, Some(id), PutMode::Upsert, by, Some(since))
                .await?;
            if stored.is_some() {
                return Ok(true);
            }
        }
    }

    /// Deletes a scenario.
    pub async fn delete_scenario(&self, id: &str) -> Result<(), RegistryError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(self.sql("DELETE FROM scenarios WHERE scenario_id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting a scenario"))?;
        if deleted.rows_affected() == 0 {
            return Err(RegistryError::ScenarioNotFound { id: id.to_owned() });
        }
        tx.commit().await.map_err(db("committing a deletion"))?;
        tracing::info!(scenario = %id, "scenario deleted");
        Ok(())
    }

    /// Sets `enabled: false` on the given scenarios (column and document).
    pub(super) async fn disable_scenarios_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        ids: &[String],
    ) -> Result<(), RegistryError> {
        for id in ids {
            let row = sqlx::query(self.sql(&format!(
                "SELECT {SCENARIO_COLUMNS} FROM scenarios WHERE scenario_id = ?"
            )))
            .bind(id)
            .fetch_one(&mut **tx)
            .await
            .map_err(db("reading a scenario"))?;
            let mut scenario = scenario_from_row(&row)?;
            if let Some(object) = scenario.document.as_object_mut() {
                object.insert("enabled".to_owned(), Value::Bool(false));
            }
            sqlx::query(self.sql(
                "UPDATE scenarios SET enabled = 0, document = ?, updated_at = ? WHERE scenario_id = ?",
            ))
            .bind(scenario.document.to_string())
            .bind(now_ms())
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db("disabling a scenario"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scenario5() -> Value {
        json!({
            "scenario_id": 5,
            "title": "adult male users who clicked buy after 9 o'clock",
            "manager": "kim",
            "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1},
            "filters": [
                {"left": "age", "operator": ">", "right": 20},
                {"left": "gender", "operator": "==", "right": "MALE"},
                {"left": "h", "operator": ">=", "right": 9}
            ],
            "logical_operator": "AND",
            "source": ["tracking"],
            "enrich": {"by": "memberId"}
        })
    }

    #[test]
    fn the_canonical_scenario_reads_with_defaults() {
        let spec = ScenarioSpec::parse(&scenario5()).unwrap();
        assert_eq!(spec.id, "5");
        assert_eq!(spec.plugin.name, DEFAULT_PLUGIN);
        assert_eq!(spec.plugin.version, None);
        assert_eq!(spec.source, vec!["tracking"]);
        assert_eq!(spec.output_topic(), "weir.out.5");
        assert_eq!(
            spec.enrich,
            Some(Enrich {
                by: "memberId".into()
            })
        );
        assert!(spec.enabled);
        let config = spec.plugin_config();
        assert!(config.get("source").is_none() && config.get("enrich").is_none());
        assert_eq!(config["filters"][0]["operator"], ">");
        assert_eq!(config["scenario_id"], 5);
    }

    #[test]
    fn archive_column_declarations_are_checked_and_kept_from_the_plugin() {
        let mut doc = scenario5();
        doc["archive_columns"] = json!({"h": "float64", "name": "string"});
        let spec = ScenarioSpec::parse(&doc).unwrap();
        assert_eq!(spec.archive_columns["h"], "float64");
        assert!(spec.plugin_config().get("archive_columns").is_none());
        doc["archive_columns"] = json!({"h": "double", "offset": "int64", "": "bool"});
        let errors = ScenarioSpec::parse(&doc).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "archive_columns.",
                "archive_columns.h",
                "archive_columns.offset"
            ]
        );
        doc["archive_columns"] = json!(["h"]);
        assert!(ScenarioSpec::parse(&doc).is_err());
    }

    #[test]
    fn every_problem_of_weirs_fields_is_listed() {
        let errors = ScenarioSpec::parse(&json!({
            "scenario_id": "no spaces allowed",
            "title": 3,
            "plugin": "Scenario@x",
            "source": ["ok", ""],
            "output_topic": 7,
            "enrich": {"by": "", "cache": true},
            "enabled": "yes"
        }))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "scenario_id",
                "title",
                "plugin",
                "source[1]",
                "output_topic",
                "enrich.cache",
                "enrich.by",
                "enabled"
            ]
        );
        assert!(
            errors[0].reason.contains("non-negative integer"),
            "{errors:?}"
        );
        assert!(errors[5].reason.contains("accepts only `by`"), "{errors:?}");
    }

    #[test]
    fn not_an_object_and_missing_id_are_refused() {
        let errors = ScenarioSpec::parse(&json!([1])).unwrap_err();
        assert_eq!(errors[0].field, "(document)");
        assert!(errors[0].reason.contains("an array"));
        let errors = ScenarioSpec::parse(&json!({"title": "x"})).unwrap_err();
        assert_eq!(errors[0].field, "scenario_id");
        assert!(errors[0].reason.starts_with("missing"));
    }

    #[test]
    fn keys_the_schema_does_not_name_are_unknown() {
        let schema = json!({"type": "object", "properties": {"filters": {}, "log_format": {}}});
        let config = json!({"scenario_id": 5, "title": "t", "filter": [], "filters": []});
        let errors = unknown_keys("scenario", &schema, &config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "filter");
        assert!(errors[0].reason.contains("filters"), "{errors:?}");
        let open = json!({"properties": {"a": {}}, "additionalProperties": true});
        assert!(unknown_keys("p", &open, &config).is_empty());
        assert!(unknown_keys("p", &json!({"type": "object"}), &config).is_empty());
    }

    #[test]
    fn schema_pointers_become_field_paths() {
        assert_eq!(
            pointer_to_path("/filters/0/operator"),
            "filters[0].operator"
        );
        assert_eq!(pointer_to_path("/a~1b/c~0d"), "a/b.c~d");
        assert_eq!(pointer_to_path(""), "(document)");
    }

    #[test]
    fn configure_messages_that_start_with_a_path_name_the_field() {
        let e = configure_error("filters[1].operator: unknown operator `=~`; use ==, !=");
        assert_eq!(e.field, "filters[1].operator");
        assert!(e.reason.starts_with("unknown operator"));
        let e = configure_error("the configuration is empty: expected filters");
        assert_eq!(e.field, "(configuration)");
    }
}
