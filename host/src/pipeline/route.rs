//! Reading the few fields the host needs from an event (its scenario id and its member
//! id) without building the whole JSON tree, and merging member attributes into it.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The field that names an event's scenario.
pub const SCENARIO_FIELD: &str = "scenario_id";

/// The default field that holds an event's member id (used as the output key).
pub const MEMBER_FIELD: &str = "memberId";

/// The top-level fields of one JSON object event, borrowed from its bytes.
#[derive(Debug)]
pub struct Fields<'a> {
    fields: HashMap<Cow<'a, str>, &'a RawValue>,
}

impl<'a> Fields<'a> {
    /// Reads the top level of `value`; `Err` says why it is not a JSON object.
    pub fn read(value: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice::<HashMap<Cow<'a, str>, &'a RawValue>>(value)
            .map(|fields| Self { fields })
            .map_err(|e| format!("not a JSON object: {e}"))
    }

    /// A field as text: strings unquoted, numbers and booleans as written;
    /// `None` when absent or null, an object or an array.
    pub fn text(&self, name: &str) -> Option<Cow<'a, str>> {
        let raw = self.fields.get(name)?.get();
        match raw.as_bytes().first()? {
            b'"' => serde_json::from_str::<Cow<'a, str>>(raw).ok(),
            b'{' | b'[' | b'n' => None,
            _ => Some(Cow::Borrowed(raw)),
        }
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

    #[test]
    fn scenario_and_member_ids_read_as_text() {
        let fields =
            Fields::read(br#"{"scenario_id":5,"memberId":"m-\u00e9","x":{"a":1},"n":null}"#)
                .unwrap();
        assert_eq!(fields.text("scenario_id").as_deref(), Some("5"));
        assert_eq!(fields.text("memberId").as_deref(), Some("m-é"));
        assert_eq!(fields.text("x"), None);
        assert_eq!(fields.text("n"), None);
        assert_eq!(fields.text("missing"), None);
        let quoted = Fields::read(br#"{"scenario_id":"5"}"#).unwrap();
        assert_eq!(quoted.text("scenario_id").as_deref(), Some("5"));
    }

    #[test]
    fn non_objects_are_refused_with_a_reason() {
        for bad in [&b"[1,2]"[..], b"\"text\"", b"{\"a\":", b"\xff"] {
            let err = Fields::read(bad).unwrap_err();
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
