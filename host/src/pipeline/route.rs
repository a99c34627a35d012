//! Routing: which scenarios take each event, and which events go to the
//! dead-letter topic and why ([`route`], a pure function of the events and
//! the scenarios); reading the few fields the host needs from an event (its
//! scenario id and its member id) without building the whole JSON tree; and
//! merging member attributes into it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// What routing needs to know of the scenarios (the pipeline's catalog).
pub trait Routes {
    /// The enabled scenario with this id, as (its id, the event field holding
    /// its member id); or why a scenario with this id cannot run; or neither.
    fn lookup(&self, id: &str) -> Lookup<'_>;

    /// The enabled scenarios bound to `topic`, as (id, member field).
    fn bound(&self, topic: &str) -> Vec<(&str, &str)>;

    /// Every event field routing and enrichment read.
    fn event_fields(&self) -> &[String];
}

/// What [`Routes::lookup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Enabled: (id, member field).
    Enabled(&'a str, &'a str),
    /// Known but not runnable, with the reason.
    Broken(&'a str),
    /// No such scenario.
    Unknown,
}

/// Where a batch of events goes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routing<'r> {
    /// Per scenario id: (index of the event, its member id), in event order.
    pub shares: BTreeMap<&'r str, Vec<(usize, Option<String>)>>,
    /// Events no scenario takes: (index, reason, message), in event order.
    pub dead: Vec<(usize, DeadLetterReason, String)>,
}

/// Routes the values of one partition batch of `topic`: an event naming a
/// scenario (the [`SCENARIO_FIELD`] field) goes to it alone; one without goes
/// to every scenario bound to the topic. An id no enabled scenario has is
/// `unknown_scenario` (or `scenario_unavailable` when its plugin cannot load);
/// an event nobody takes is `unrouted`, or `malformed_json` when it is not a
/// JSON object.
pub fn route<'r, 'v>(
    routes: &'r impl Routes,
    topic: &str,
    values: impl Iterator<Item = &'v [u8]>,
) -> Routing<'r> {
    let mut routing = Routing::default();
    let wanted: Vec<&str> = routes.event_fields().iter().map(String::as_str).collect();
    for (index, value) in values.enumerate() {
        let fields = Fields::read(value, &wanted);
        let named = fields.as_ref().ok().and_then(|f| f.text(SCENARIO_FIELD));
        let targets = match named.as_deref() {
            Some(id) => match routes.lookup(id) {
                Lookup::Enabled(id, member) => vec![(id, member)],
                Lookup::Broken(why) => {
                    routing.dead.push((
                        index,
                        DeadLetterReason::ScenarioUnavailable,
                        format!("scenario {id} cannot run: {why}"),
                    ));
                    continue;
                }
                Lookup::Unknown => {
                    routing.dead.push((
                        index,
                        DeadLetterReason::UnknownScenario,
                        format!("no enabled scenario has id {id:?}"),
                    ));
                    continue;
                }
            },
            None => routes.bound(topic),
        };
        if targets.is_empty() {
            routing.dead.push(match &fields {
                Err(why) => (index, DeadLetterReason::MalformedJson, why.clone()),
                Ok(_) => (
                    index,
                    DeadLetterReason::Unrouted,
                    format!("no `{SCENARIO_FIELD}` field and no scenario bound to topic {topic}"),
                ),
            });
            continue;
        }
        for (id, member_field) in targets {
            let member = fields
                .as_ref()
                .ok()
                .and_then(|f| f.text(member_field))
                .map(Cow::into_owned);
            routing.shares.entry(id).or_default().push((index, member));
        }
    }
    routing
}

/// Why an event went to the dead-letter topic: the `weir-reason` header and the
/// `reason` label of `weir_dead_letters_total` (docs/pipeline.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeadLetterReason {
    /// The event names a scenario no enabled scenario has.
    UnknownScenario,
    /// The scenario exists but its plugin cannot be loaded.
    ScenarioUnavailable,
    /// No scenario field and no scenario bound to the topic.
    Unrouted,
    /// Not a JSON object, and no scenario bound to the topic to take it as text.
    MalformedJson,
    /// The plugin refused the event, or could not be instantiated.
    PluginError,
    /// The plugin crashed on the event.
    PluginTrap,
    /// The plugin ran past its CPU budget.
    CpuLimit,
    /// The plugin passed its memory budget.
    MemoryLimit,
    /// The event's output passed a cap.
    OutputLimit,
    /// The plugin's answer broke the contract.
    InvalidOutput,
    /// The scenario is set aside for its plugin's costly failures.
    PluginQuarantined,
}

impl DeadLetterReason {
    /// The reason code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownScenario => "unknown_scenario",
            Self::ScenarioUnavailable => "scenario_unavailable",
            Self::Unrouted => "unrouted",
            Self::MalformedJson => "malformed_json",
            Self::PluginError => "plugin_error",
            Self::PluginTrap => "plugin_trap",
            Self::CpuLimit => "cpu_limit",
            Self::MemoryLimit => "memory_limit",
            Self::OutputLimit => "output_limit",
            Self::InvalidOutput => "invalid_output",
            Self::PluginQuarantined => "plugin_quarantined",
        }
    }

    /// The reason of an event a plugin failed with `kind`.
    pub fn of_failure(kind: crate::runtime::FailureKind) -> Self {
        use crate::runtime::FailureKind;
        match kind {
            FailureKind::Plugin => Self::PluginError,
            FailureKind::Trap => Self::PluginTrap,
            FailureKind::CpuLimit => Self::CpuLimit,
            FailureKind::MemoryLimit => Self::MemoryLimit,
            FailureKind::OutputLimit => Self::OutputLimit,
            FailureKind::InvalidOutput => Self::InvalidOutput,
        }
    }
}

/// The field that names an event's scenario.
pub const SCENARIO_FIELD: &str = "scenario_id";

/// The default field that holds an event's member id (used as the output key).
pub const MEMBER_FIELD: &str = "memberId";

/// The top-level fields of one JSON object event that the host asked for,
/// borrowed from its bytes. Other fields are skipped without being stored.
#[derive(Debug)]
pub struct Fields<'a> {
    found: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Fields<'a> {
    /// Reads the top level of `value`, keeping only the fields named in `wanted`;
    /// `Err` says why it is not a JSON object.
    pub fn read(value: &'a [u8], wanted: &[&str]) -> Result<Self, String> {
        let mut deserializer = serde_json::Deserializer::from_slice(value);
        let found = deserializer
            .deserialize_map(Picker { wanted })
            .and_then(|found| deserializer.end().map(|()| found))
            .map_err(|e| format!("not a JSON object: {e}"))?;
        Ok(Self { found })
    }

    /// A field as text: strings unquoted, numbers and booleans as written;
    /// `None` when absent or null, an object or an array (or not asked for).
    pub fn text(&self, name: &str) -> Option<Cow<'a, str>> {
        let raw = self.found.iter().find(|(key, _)| key == name)?.1.get();
        match raw.as_bytes().first()? {
            b'"' => serde_json::from_str::<Cow<'a, str>>(raw).ok(),
            b'{' | b'[' | b'n' => None,
            _ => Some(Cow::Borrowed(raw)),
        }
    }
}

/// A JSON object's key, borrowed from the input when it has no escapes
/// (serde's own `Cow<str>` always copies).
#[derive(Debug)]
pub struct Name<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Names)
    }
}

/// Walks a JSON object, keeping the raw values of the wanted keys only.
struct Picker<'w> {
    wanted: &'w [&'w str],
}

impl<'de> Visitor<'de> for Picker<'_> {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::with_capacity(self.wanted.len());
        while let Some(Name(key)) = map.next_key::<Name<'de>>()? {
            if self.wanted.contains(&key.as_ref()) {
                found.push((key, map.next_value::<&'de RawValue>()?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// `value` with `attributes` added; the event's own fields win over the member's.
pub fn enrich(value: &[u8], attributes: &Map<String, Value>) -> Result<Vec<u8>, String> {
    let mut event: Map<String, Value> =
        serde_json::from_slice(value).map_err(|e| format!("not a JSON object: {e}"))?;
    for (key, attribute) in attributes {
        if !event.contains_key(key) {
            event.insert(key.clone(), attribute.clone());
        }
    }
    serde_json::to_vec(&event).map_err(|e| format!("re-encoding the enriched event: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scenario `a` (member field `memberId`) and `b` (enriched by `uid`) are
    /// bound to topic `t`; `c` is enabled but bound to none; `x` is broken.
    struct Table {
        fields: Vec<String>,
    }

    impl Routes for Table {
        fn lookup(&self, id: &str) -> Lookup<'_> {
            match id {
                "a" => Lookup::Enabled("a", MEMBER_FIELD),
                "b" => Lookup::Enabled("b", "uid"),
                "c" => Lookup::Enabled("c", MEMBER_FIELD),
                "x" => Lookup::Broken("its plugin does not load"),
                _ => Lookup::Unknown,
            }
        }

        fn bound(&self, topic: &str) -> Vec<(&str, &str)> {
            match topic {
                "t" => vec![("a", MEMBER_FIELD), ("b", "uid")],
                _ => Vec::new(),
            }
        }

        fn event_fields(&self) -> &[String] {
            &self.fields
        }
    }

    fn table() -> Table {
        Table {
            fields: [SCENARIO_FIELD, MEMBER_FIELD, "uid"]
                .map(str::to_owned)
                .to_vec(),
        }
    }

    #[test]
    fn events_go_to_the_scenario_they_name_or_to_those_of_their_topic() {
        let values: [&[u8]; 6] = [
            br#"{"scenario_id":"c","memberId":"m1"}"#,
            br#"{"memberId":"m2","uid":"u2"}"#,
            br#"{"scenario_id":"b","uid":"u3"}"#,
            b"GET /index.html 200",
            br#"{"scenario_id":5}"#,
            br#"{"scenario_id":"a"}"#,
        ];
        let table = table();
        let routing = route(&table, "t", values.into_iter());
        let expected: BTreeMap<&str, Vec<(usize, Option<String>)>> = BTreeMap::from([
            ("a", vec![(1, Some("m2".into())), (3, None), (5, None)]),
            (
                "b",
                vec![(1, Some("u2".into())), (2, Some("u3".into())), (3, None)],
            ),
            ("c", vec![(0, Some("m1".into()))]),
        ]);
        assert_eq!(routing.shares, expected);
        // A numeric id is read as text: `5` names scenario "5", which is unknown.
        assert_eq!(routing.dead.len(), 1);
        assert_eq!(routing.dead[0].0, 4);
        assert_eq!(routing.dead[0].1, DeadLetterReason::UnknownScenario);
    }

    #[test]
    fn every_event_nobody_takes_is_dead_lettered_with_its_reason() {
        let values: [&[u8]; 4] = [
            br#"{"scenario_id":"zz"}"#,
            br#"{"scenario_id":"x"}"#,
            br#"{"n":1}"#,
            b"not json",
        ];
        let table = table();
        let routing = route(&table, "unbound", values.into_iter());
        assert!(routing.shares.is_empty());
        let reasons: Vec<(usize, DeadLetterReason)> =
            routing.dead.iter().map(|(i, r, _)| (*i, *r)).collect();
        assert_eq!(
            reasons,
            vec![
                (0, DeadLetterReason::UnknownScenario),
                (1, DeadLetterReason::ScenarioUnavailable),
                (2, DeadLetterReason::Unrouted),
                (3, DeadLetterReason::MalformedJson),
            ]
        );
        assert!(routing.dead[1].2.contains("its plugin does not load"));
        assert!(routing.dead[2].2.contains("topic unbound"));
    }

    #[test]
    fn every_dead_letter_reason_has_its_own_code() {
        use crate::runtime::FailureKind;
        let all = [
            DeadLetterReason::UnknownScenario,
            DeadLetterReason::ScenarioUnavailable,
            DeadLetterReason::Unrouted,
            DeadLetterReason::MalformedJson,
            DeadLetterReason::PluginError,
            DeadLetterReason::PluginTrap,
            DeadLetterReason::CpuLimit,
            DeadLetterReason::MemoryLimit,
            DeadLetterReason::OutputLimit,
            DeadLetterReason::InvalidOutput,
            DeadLetterReason::PluginQuarantined,
        ];
        let codes: std::collections::BTreeSet<&str> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        assert_eq!(
            DeadLetterReason::of_failure(FailureKind::Trap).as_str(),
            "plugin_trap"
        );
        assert_eq!(
            DeadLetterReason::of_failure(FailureKind::OutputLimit),
            DeadLetterReason::OutputLimit
        );
    }

    #[test]
    fn scenario_and_member_ids_read_as_text() {
        let wanted = ["scenario_id", "memberId", "x", "n", "missing"];
        let fields = Fields::read(
            br#"{"scenario_id":5,"memberId":"m-\u00e9","x":{"a":1},"n":null,"other":[1]}"#,
            &wanted,
        )
        .unwrap();
        assert_eq!(fields.text("scenario_id").as_deref(), Some("5"));
        assert_eq!(fields.text("memberId").as_deref(), Some("m-é"));
        assert_eq!(fields.text("x"), None);
        assert_eq!(fields.text("n"), None);
        assert_eq!(fields.text("missing"), None);
        assert_eq!(fields.text("other"), None, "not asked for");
        let quoted = Fields::read(br#"{"scenario_id":"5"}"#, &wanted).unwrap();
        assert_eq!(quoted.text("scenario_id").as_deref(), Some("5"));
    }

    #[test]
    fn non_objects_are_refused_with_a_reason() {
        for bad in [
            &b"[1,2]"[..],
            b"\"text\"",
            b"{\"a\":",
            b"\xff",
            b"{} trailing",
        ] {
            let err = Fields::read(bad, &["a"]).unwrap_err();
            assert!(err.starts_with("not a JSON object"), "{err}");
        }
    }

    #[test]
    fn enrichment_adds_member_attributes_without_overwriting() {
        let member: Map<String, Value> =
            serde_json::from_str(r#"{"age":31,"gender":"MALE","h":1}"#).unwrap();
        let out = enrich(
            r#"{"memberId":"7","h":10,"e_n":"구매"}"#.as_bytes(),
            &member,
        )
        .unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["age"], 31);
        assert_eq!(value["gender"], "MALE");
        assert_eq!(value["h"], 10, "the event's own field wins");
        assert_eq!(value["e_n"], "구매");
    }
}
