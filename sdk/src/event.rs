//! One event of a batch, with lazy, borrowed access to its JSON fields.

use std::borrow::Cow;
use std::cell::{Cell, OnceCell};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::Error;
use crate::FieldSet;
use crate::Picked;
use crate::batch::Header;
use crate::scan;

/// One input event: its value bytes, key, headers, position and timestamp, plus
/// typed access to the fields of a JSON-object value.
///
/// Field access is lazy and borrowed. The first field lookup splits the value
/// into its top-level `name → raw JSON text` pairs once (no allocation per
/// field, nested objects are not parsed); each getter then parses only the one
/// value it is asked for. This is several times cheaper than parsing the whole
/// event into a `serde_json::Value`.
///
/// ```
/// use weir_sdk::Event;
///
/// let event = Event::new(br#"{"age":31,"gender":"MALE","tags":["a","b"]}"#);
/// assert_eq!(event.i64("age")?, Some(31));
/// assert_eq!(event.str("gender")?.as_deref(), Some("MALE"));
/// assert_eq!(event.get::<Vec<String>>("tags")?, Some(vec!["a".into(), "b".into()]));
/// assert_eq!(event.i64("missing")?, None);
/// assert!(event.i64("gender").is_err()); // a string is not an integer
/// # Ok::<(), weir_sdk::Error>(())
/// ```
pub struct Event<'a> {
    value: &'a [u8],
    /// The value as text, when the batch carried it as checked UTF-8.
    text: Option<&'a str>,
    key: Option<&'a [u8]>,
    headers: &'a [Header],
    offset: i64,
    timestamp_ms: Option<i64>,
    scenario_id: &'a str,
    topic: &'a str,
    partition: i32,
    fields: OnceCell<Result<Fields<'a>, Error>>,
    /// A vector for the split, handed from event to event by the batch loop.
    spare: Cell<Vec<(&'a str, &'a str)>>,
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("value", &String::from_utf8_lossy(self.value))
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("scenario_id", &self.scenario_id)
            .finish_non_exhaustive()
    }
}

impl<'a> Event<'a> {
    /// An event with this value and nothing else (no key, no headers, offset 0,
    /// no timestamp, empty scenario id). Handy for unit tests of helper
    /// functions; to run a whole plugin use [`Harness`](crate::Harness).
    ///
    /// ```
    /// let event = weir_sdk::Event::new(b"{}");
    /// assert_eq!(event.value(), b"{}");
    /// assert_eq!(event.key(), None);
    /// ```
    pub fn new(value: &'a [u8]) -> Self {
        Self {
            value,
            text: None,
            key: None,
            headers: &[],
            offset: 0,
            timestamp_ms: None,
            scenario_id: "",
            topic: "",
            partition: 0,
            fields: OnceCell::new(),
            spare: Cell::new(Vec::new()),
        }
    }

    /// This event with a record timestamp (milliseconds since the Unix epoch).
    ///
    /// ```
    /// let event = weir_sdk::Event::new(b"{}").with_timestamp_ms(1_700_000_000_000);
    /// assert_eq!(event.timestamp_ms(), Some(1_700_000_000_000));
    /// ```
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// This event with a scenario id.
    ///
    /// ```
    /// let event = weir_sdk::Event::new(b"{}").with_scenario_id("5");
    /// assert_eq!(event.scenario_id(), "5");
    /// ```
    pub fn with_scenario_id(mut self, scenario_id: &'a str) -> Self {
        self.scenario_id = scenario_id;
        self
    }

    /// Gives this event a vector to split its fields into (see
    /// [`into_spare`](Self::into_spare)).
    pub(crate) fn with_spare(self, spare: Vec<(&'a str, &'a str)>) -> Self {
        self.spare.set(spare);
        self
    }

    /// The vector the fields were split into, emptied, for the next event of
    /// the batch: the batch loop then allocates once, not once per event.
    pub(crate) fn into_spare(self) -> Vec<(&'a str, &'a str)> {
        let mut spare = match self.fields.into_inner() {
            Some(Ok(fields)) => fields.plain,
            _ => self.spare.into_inner(),
        };
        spare.clear();
        spare
    }

    #[allow(clippy::too_many_arguments)] // one per event attribute of the batch.
    pub(crate) fn from_parts(
        value: &'a [u8],
        text: Option<&'a str>,
        key: Option<&'a [u8]>,
        headers: &'a [Header],
        offset: i64,
        timestamp_ms: Option<i64>,
        scenario_id: &'a str,
        topic: &'a str,
        partition: i32,
    ) -> Self {
        Self {
            value,
            text,
            key,
            headers,
            offset,
            timestamp_ms,
            scenario_id,
            topic,
            partition,
            fields: OnceCell::new(),
            spare: Cell::new(Vec::new()),
        }
    }

    /// The value bytes, exactly as consumed.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"raw line").value(), b"raw line");
    /// ```
    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    /// The key bytes, or `None` when the record had no key.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").key(), None);
    /// ```
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// The record headers, in order.
    ///
    /// ```
    /// assert!(weir_sdk::Event::new(b"{}").headers().is_empty());
    /// ```
    pub fn headers(&self) -> &'a [Header] {
        self.headers
    }

    /// The value of the first header named `key`, if any.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").header("trace-id"), None);
    /// ```
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_slice())
    }

    /// The source offset within [`topic`](Self::topic) / [`partition`](Self::partition).
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").offset(), 0);
    /// ```
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record timestamp in milliseconds since the Unix epoch, when the host
    /// knows it. Plugins have no clock: this is the only notion of time they get.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").timestamp_ms(), None);
    /// ```
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// The scenario the host routed this event's batch to.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").with_scenario_id("7").scenario_id(), "7");
    /// ```
    pub fn scenario_id(&self) -> &'a str {
        self.scenario_id
    }

    /// The source topic.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").topic(), "");
    /// ```
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// The source partition.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").partition(), 0);
    /// ```
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The value as UTF-8 text.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new("구매".as_bytes()).text()?, "구매");
    /// assert!(weir_sdk::Event::new(&[0xff]).text().is_err());
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn text(&self) -> Result<&'a str, Error> {
        if let Some(text) = self.text {
            return Ok(text);
        }
        std::str::from_utf8(self.value)
            .map_err(|e| Error::new(format!("value is not UTF-8 text: {e}")))
    }

    /// The top-level fields of the value, split once and cached. Fails when the
    /// value is not a JSON object; the message says where the JSON is broken.
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"a":1,"b":{"c":2}}"#);
    /// let names: Vec<&str> = event.fields()?.iter().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// assert!(weir_sdk::Event::new(b"{\"a\":").fields().is_err());
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    #[inline]
    pub fn fields(&self) -> Result<&Fields<'a>, Error> {
        self.fields
            .get_or_init(|| Fields::parse(self.value, self.text, self.spare.take()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The raw JSON text of field `name`, or `None` when the field is absent.
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"a":[1, 2]}"#);
    /// assert_eq!(event.raw("a")?.map(|raw| raw.get()), Some("[1, 2]"));
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    #[inline]
    pub fn raw(&self, name: &str) -> Result<Option<RawJson<'a>>, Error> {
        Ok(self.fields()?.get(name))
    }

    /// The values of all of `names`, found in one pass over the fields
    /// ([`Fields::pick`]). Fails when the value is not a JSON object.
    ///
    /// ```
    /// let mut names = weir_sdk::FieldSet::new();
    /// let (a, b) = (names.insert("a"), names.insert("b"));
    /// let picked = weir_sdk::Event::new(br#"{"b":[1],"a":2}"#).pick(&names)?;
    /// assert_eq!((picked.get(a).map(|r| r.get()), picked.get(b).map(|r| r.get())), (Some("2"), Some("[1]")));
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    #[inline]
    pub fn pick(&self, names: &FieldSet) -> Result<Picked<'a>, Error> {
        Ok(self.fields()?.pick(names))
    }

    /// Whether field `name` is present (even when it is `null`).
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"a":null}"#);
    /// assert!(event.has("a")?);
    /// assert!(!event.has("b")?);
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn has(&self, name: &str) -> Result<bool, Error> {
        Ok(self.fields()?.get(name).is_some())
    }

    /// Field `name` deserialized as `T`, or `None` when the field is absent. `T`
    /// may borrow from the event (`&str` without escapes, `&RawValue`). A JSON
    /// `null` is handed to `T`: ask for `Option<T>` to accept it.
    ///
    /// ```
    /// #[derive(serde::Deserialize, PartialEq, Debug)]
    /// struct Geo { lat: f64, lon: f64 }
    /// let event = weir_sdk::Event::new(br#"{"geo":{"lat":37.5,"lon":127.0},"n":null}"#);
    /// assert_eq!(event.get::<Geo>("geo")?, Some(Geo { lat: 37.5, lon: 127.0 }));
    /// assert_eq!(event.get::<Option<i64>>("n")?, Some(None));
    /// assert!(event.get::<i64>("n").is_err());
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get<T: Deserialize<'a>>(&self, name: &str) -> Result<Option<T>, Error> {
        match self.raw(name)? {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| field_error(name, raw, &without_position(&e))),
        }
    }

    /// Field `name` as a string, borrowed when it has no escapes. Fails when the
    /// field is present but not a string.
    ///
    /// ```
    /// let event = weir_sdk::Event::new(r#"{"e_n":"구매","q":"a\"b","n":1}"#.as_bytes());
    /// assert_eq!(event.str("e_n")?.as_deref(), Some("구매"));
    /// assert_eq!(event.str("q")?.as_deref(), Some("a\"b"));
    /// assert!(event.str("n").is_err());
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn str(&self, name: &str) -> Result<Option<Cow<'a, str>>, Error> {
        let Some(raw) = self.raw(name)? else {
            return Ok(None);
        };
        string_value(raw)
            .map(Some)
            .ok_or_else(|| field_error(name, raw, "expected a string"))
    }

    /// Field `name` as a 64-bit integer. Fails when the field is present but not
    /// an integer (a string of digits is not converted; see
    /// [`get`](Self::get) for custom rules).
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"age":31,"h":"9"}"#);
    /// assert_eq!(event.i64("age")?, Some(31));
    /// assert!(event.i64("h").is_err());
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn i64(&self, name: &str) -> Result<Option<i64>, Error> {
        self.get(name)
    }

    /// Field `name` as a 64-bit float (integers are converted).
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"price":9.5,"qty":2}"#);
    /// assert_eq!(event.f64("price")?, Some(9.5));
    /// assert_eq!(event.f64("qty")?, Some(2.0));
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn f64(&self, name: &str) -> Result<Option<f64>, Error> {
        self.get(name)
    }

    /// Field `name` as a boolean.
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"vip":true}"#);
    /// assert_eq!(event.bool("vip")?, Some(true));
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn bool(&self, name: &str) -> Result<Option<bool>, Error> {
        self.get(name)
    }
}

/// A serde_json error message without its "at line 1 column 3" suffix, which
/// points into the field's own text and only confuses.
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

fn field_error(name: &str, raw: RawJson<'_>, problem: &str) -> Error {
    let text = raw.get();
    let shown: String = text.chars().take(40).collect();
    let ellipsis = if shown.len() < text.len() { "…" } else { "" };
    Error::new(format!(
        "field {name:?}: {problem}, found {shown}{ellipsis}"
    ))
}

/// The text of a JSON string value, borrowed when it contains no escape.
/// `None` when `raw` is not a string.
///
/// ```
/// let event = weir_sdk::Event::new(br#"{"g":"MALE","n":20}"#);
/// let raw = |name| event.raw(name).unwrap().unwrap();
/// assert_eq!(weir_sdk::string_value(raw("g")).as_deref(), Some("MALE"));
/// assert_eq!(weir_sdk::string_value(raw("n")), None);
/// ```
pub fn string_value(raw: RawJson<'_>) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// The raw text of one JSON value from an event, exactly as it appears there
/// (whitespace inside it included). Obtained from [`Event::raw`] and
/// [`Fields`]; the text is known to be valid JSON, so it can be copied into an
/// output record as it is ([`ObjectWriter::raw`](crate::ObjectWriter::raw)).
///
/// ```
/// let event = weir_sdk::Event::new(br#"{"a":[1, 2],"b":"x"}"#);
/// let a = event.raw("a")?.unwrap();
/// assert_eq!(a.get(), "[1, 2]");
/// assert_eq!(a.to_string(), "[1, 2]");
/// assert!(event.raw("b")?.unwrap().is_string());
/// assert!(weir_sdk::Event::new(br#"{"n":null}"#).raw("n")?.unwrap().is_null());
/// # Ok::<(), weir_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawJson<'a> {
    text: &'a str,
}

impl<'a> RawJson<'a> {
    /// The JSON text.
    #[inline]
    pub fn get(self) -> &'a str {
        self.text
    }

    /// Whether the value is a JSON string.
    pub fn is_string(self) -> bool {
        self.text.starts_with('"')
    }

    /// Whether the value is JSON `null`.
    pub fn is_null(self) -> bool {
        self.text == "null"
    }
}

impl fmt::Display for RawJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

impl<'a> From<&'a RawValue> for RawJson<'a> {
    /// serde_json's raw value, which it has checked to be valid JSON.
    fn from(raw: &'a RawValue) -> Self {
        RawJson { text: raw.get() }
    }
}

/// The top-level fields of a JSON object, as `name → raw JSON text`, in the
/// order they appear. Obtained from [`Event::fields`].
///
/// A name that appears twice resolves to its last occurrence, as in
/// `serde_json::Value`.
///
/// ```
/// let event = weir_sdk::Event::new(br#"{"a":1,"a":2}"#);
/// assert_eq!(event.fields()?.get("a").map(|r| r.get()), Some("2"));
/// assert_eq!(event.fields()?.len(), 2);
/// # Ok::<(), weir_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    /// Every field, when no name has escapes (the usual case): a lookup
    /// compares the names as they are in the text.
    plain: Vec<(&'a str, &'a str)>,
    /// Every field with its decoded name, when some name has escapes (then
    /// `plain` is empty).
    decoded: Vec<(Cow<'a, str>, RawJson<'a>)>,
}

impl<'a> Fields<'a> {
    fn parse(
        value: &'a [u8],
        text: Option<&'a str>,
        mut spare: Vec<(&'a str, &'a str)>,
    ) -> Result<Self, Error> {
        // Text the host already checked is used as it is. Otherwise,
        // validating UTF-8 once up front and parsing from `&str` is cheaper
        // than `from_slice`, which checks every string as it goes and then
        // every raw value again.
        let text = match text {
            Some(text) => text,
            None => std::str::from_utf8(value)
                .map_err(|e| Error::new(format!("value is not valid JSON: not UTF-8 text: {e}")))?,
        };
        if scan::split_object(text, &mut spare) {
            return Ok(Fields {
                plain: spare,
                decoded: Vec::new(),
            });
        }
        let fields = serde_fields(text).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                Error::new(format!("value is not a JSON object: {e}"))
            } else {
                Error::new(format!("value is not valid JSON: {e}"))
            }
        })?;
        Ok(Fields {
            plain: Vec::new(),
            decoded: fields
                .into_iter()
                .map(|(name, text)| (name, RawJson { text }))
                .collect(),
        })
    }

    /// The raw JSON text of field `name`, if present.
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"a":"x"}"#);
    /// assert_eq!(event.fields()?.get("a").map(|r| r.get()), Some("\"x\""));
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get(&self, name: &str) -> Option<RawJson<'a>> {
        let name = name.as_bytes();
        if self.decoded.is_empty() {
            for &(key, text) in self.plain.iter().rev() {
                if same_name(key.as_bytes(), name) {
                    return Some(RawJson { text });
                }
            }
            return None;
        }
        self.decoded
            .iter()
            .rev()
            .find(|(key, _)| same_name(key.as_bytes(), name))
            .map(|(_, raw)| *raw)
    }

    /// The values of all of `names` in one pass over the fields: the way to
    /// read several fields of every event (see [`FieldSet`]).
    ///
    /// ```
    /// let mut names = weir_sdk::FieldSet::new();
    /// let h = names.insert("h");
    /// let event = weir_sdk::Event::new(br#"{"h":9}"#);
    /// assert_eq!(event.fields()?.pick(&names).get(h).map(|r| r.get()), Some("9"));
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn pick(&self, names: &FieldSet) -> Picked<'a> {
        if self.decoded.is_empty() {
            Picked::new(
                names,
                self.plain
                    .iter()
                    .map(|&(name, text)| (name.as_bytes(), RawJson { text })),
            )
        } else {
            Picked::new(
                names,
                self.decoded.iter().map(|(n, raw)| (n.as_bytes(), *raw)),
            )
        }
    }

    /// Every field as `(name, raw JSON text)`, in document order.
    ///
    /// ```
    /// let event = weir_sdk::Event::new(br#"{"a":1}"#);
    /// assert_eq!(event.fields()?.iter().next().map(|(n, r)| (n, r.get())), Some(("a", "1")));
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, RawJson<'a>)> + '_ {
        let plain = self
            .plain
            .iter()
            .map(|&(key, text)| (key, RawJson { text }));
        let decoded = self.decoded.iter().map(|(key, raw)| (key.as_ref(), *raw));
        plain.chain(decoded)
    }

    /// How many fields the object has (duplicates counted).
    ///
    /// ```
    /// assert_eq!(weir_sdk::Event::new(b"{}").fields()?.len(), 0);
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.plain.len() + self.decoded.len()
    }

    /// Whether the object has no fields.
    ///
    /// ```
    /// assert!(weir_sdk::Event::new(b"{}").fields()?.is_empty());
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.decoded.is_empty()
    }
}

/// The top-level fields of `text` as serde_json reads them: the slow path for
/// what [`scan::split_object`] leaves alone, and the source of error messages.
pub(crate) fn serde_fields(text: &str) -> Result<Vec<(Cow<'_, str>, &str)>, serde_json::Error> {
    serde_json::from_str::<SerdeFields<'_>>(text).map(|fields| fields.0)
}

struct SerdeFields<'a>(Vec<(Cow<'a, str>, &'a str)>);

/// `a == b` for field names without a byte loop: a `memcmp` call per
/// candidate is most of a lookup's cost, and in a WebAssembly guest `memcmp`
/// and any per-byte loop pay a CPU-deadline check per byte. Names of up to 16
/// bytes are compared as two overlapping words (or three bytes when shorter
/// than 4); longer ones eight bytes at a time, the tail as an overlapping word.
#[inline]
pub(crate) fn same_name(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let u32_at = |s: &[u8], at: usize| s[at..at + 4].try_into().map_or(0, u32::from_ne_bytes);
    let u64_at = |s: &[u8], at: usize| s[at..at + 8].try_into().map_or(0, u64::from_ne_bytes);
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, n - 4) == u32_at(b, n - 4),
        8..=16 => u64_at(a, 0) == u64_at(b, 0) && u64_at(a, n - 8) == u64_at(b, n - 8),
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if u64_at(a, at) != u64_at(b, at) {
                    return false;
                }
                at += 8;
            }
            u64_at(a, n - 8) == u64_at(b, n - 8)
        }
    }
}

impl<'de> Deserialize<'de> for SerdeFields<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = SerdeFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Key(key), raw)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push((key, raw.get()));
                }
                Ok(SerdeFields(entries))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// An object key, borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `same_name` agrees with `==` for every length up to 40 and a single
    /// differing byte at every position, and for different lengths.
    #[test]
    fn same_name_is_equality() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_name(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same_name(&a, &b), "{n} differing at {at}");
            }
            let mut longer = a.clone();
            longer.push(b'a');
            assert!(!same_name(&a, &longer), "{n} vs {}", n + 1);
        }
    }

    #[test]
    fn malformed_json_says_where() {
        let err = Event::new(br#"{"age": 31,"#).fields().unwrap_err();
        assert!(
            err.message().starts_with("value is not valid JSON: "),
            "{err}"
        );
        assert!(err.message().contains("column"), "{err}");
        let err = Event::new(b"[1,2]").fields().unwrap_err();
        assert!(
            err.message().starts_with("value is not a JSON object: "),
            "{err}"
        );
        let err = Event::new(b"").fields().unwrap_err();
        assert!(
            err.message().starts_with("value is not valid JSON: "),
            "{err}"
        );
    }

    #[test]
    fn escaped_keys_are_found() {
        let event = Event::new(br#"{"a\u0062":1}"#);
        assert_eq!(event.i64("ab").unwrap(), Some(1));
    }

    #[test]
    fn field_errors_name_the_field_and_value() {
        let event = Event::new(br#"{"age":"thirty"}"#);
        let err = event.i64("age").unwrap_err();
        assert!(err.message().starts_with("field \"age\": "), "{err}");
        assert!(err.message().ends_with("found \"thirty\""), "{err}");
    }

    #[test]
    fn korean_text_is_borrowed_byte_exact() {
        let value = r#"{"e_n":"구매"}"#.as_bytes();
        let event = Event::new(value);
        let s = event.str("e_n").unwrap().unwrap();
        assert!(matches!(s, Cow::Borrowed(_)));
        assert_eq!(s.as_bytes(), "구매".as_bytes());
    }
}
