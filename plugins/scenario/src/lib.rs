//! The generic scenario plugin: one component, configured per scenario with
//! the scenario JSON users already write, that decides for every event whether
//! it matched and emits one formatted record for it, matched or not.
//!
//! ```
//! use weir_plugin_scenario::ScenarioPlugin;
//! use weir_sdk::Harness;
//!
//! let harness = Harness::scenario::<ScenarioPlugin>(r#"{
//!     "scenario_id": 5, "title": "adult male users who clicked buy after 9",
//!     "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1, "url": 0},
//!     "filters": [{"left": "age", "operator": ">", "right": 20},
//!                 {"left": "gender", "operator": "==", "right": "MALE"},
//!                 {"left": "h", "operator": ">=", "right": 9}],
//!     "logical_operator": "AND"}"#)?;
//! let result = harness.run_one(
//!     r#"{"memberId":7,"age":31,"gender":"MALE","h":10,"e_n":"구매","url":"/buy","timestamp":"2024-05-01T10:00:00Z"}"#);
//! assert!(result.matched);
//! assert_eq!(result.text(0),
//!     r#"{"memberId":7,"age":31,"gender":"MALE","h":10,"e_n":"구매","success":1,"scenario_id":5,"date":"2024-05-01"}"#);
//! # Ok::<(), weir_sdk::Error>(())
//! ```
//!
//! The configuration, the operators and the comparison rules are documented
//! in `plugins/scenario/README.md`; in short:
//!
//! - `log_format`: field → `1` keep / `0` drop. Kept fields are written in
//!   `log_format` order, a kept field missing from the event as `null`.
//!   Without `log_format` every field of the event is kept, in event order.
//! - `filters`: `{left, operator, right}` conditions; `logical_operator`
//!   `AND` (default) or `OR`, case-insensitive. No filters: every event matches.
//! - Operators: `==`, `!=`, `==i` (case-insensitive equality), `>`, `>=`,
//!   `<`, `<=`, `contains`, `in`, `not_in`, `exists`, `regex`.
//! - A missing field makes every condition false (`!=` and `not_in`
//!   included), except `exists` with `right: false`.
//! - A number and a numeric-looking string compare as numbers (`"20"` equals
//!   `20`); two strings compare as strings, case-sensitively.
//! - Output: kept fields, then `success` (1/0), `scenario_id` (as configured),
//!   `date` (`YYYY-MM-DD`, UTC) from the event's `timestamp` or `ts` field, else
//!   the record timestamp, else `null` (a plugin has no clock).
//! - A value that is not a JSON object fails with the parser's reason.
//!
//! The crate is also an `rlib`, so the same logic runs natively through
//! [`weir_sdk::Harness`] in tests and benchmarks.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use weir_sdk::{Error, Event, FieldSet, Picked, Plugin, RawJson, Record, Scenario, string_value};

/// The scenario JSON, as the control plane stores it. Keys other than these
/// (`title`, `manager`, `plugin`, `source`, `output_topic`, `enrich`,
/// `enabled`, …) are accepted and ignored.
///
/// ```
/// let config: weir_plugin_scenario::Config =
///     serde_json::from_str(r#"{"scenario_id": 5, "title": "t", "enabled": true}"#)?;
/// assert!(config.filters.is_empty());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// The scenario's id, a number or a string, echoed in every output record
    /// as written. Absent: the id the host routed the batch to, as a string.
    #[serde(default)]
    pub scenario_id: Option<Value>,
    /// Field name → `1` (keep) or `0` (drop). Absent: keep every field.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// The conditions.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// `AND` or `OR`, any case. Absent: `AND`.
    #[serde(default)]
    pub logical_operator: Option<String>,
}

/// One condition as written: `{"left": field, "operator": op, "right": value}`.
///
/// ```
/// let spec: weir_plugin_scenario::FilterSpec =
///     serde_json::from_str(r#"{"left": "age", "operator": ">", "right": 20}"#)?;
/// assert_eq!(spec.operator, ">");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct FilterSpec {
    /// The event field the condition reads.
    pub left: String,
    /// One of the operators listed in the crate documentation.
    pub operator: String,
    /// The value to compare with; optional for `exists` only. `None` when
    /// absent, `Some(Value::Null)` for an explicit `null`.
    #[serde(default, deserialize_with = "present")]
    pub right: Option<Value>,
}

/// Keeps an explicit `null` apart from an absent key.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// `log_format`: the fields to keep, in order.
///
/// ```
/// let f: weir_plugin_scenario::LogFormat = serde_json::from_str(r#"{"a": 1, "b": 0, "c": true}"#)?;
/// assert_eq!(f.kept().collect::<Vec<_>>(), ["a", "c"]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct LogFormat {
    fields: Vec<(String, bool)>,
}

impl LogFormat {
    /// The names of the kept fields, in `log_format` order.
    ///
    /// See the type's example.
    pub fn kept(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|(_, keep)| *keep)
            .map(|(name, _)| name.as_str())
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LogFormat;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of field name → 1 (keep) or 0 (drop)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LogFormat, A::Error> {
                let mut fields = Vec::new();
                while let Some((name, flag)) = map.next_entry::<String, Value>()? {
                    let keep = match &flag {
                        Value::Number(n) if n.as_u64() == Some(1) => true,
                        Value::Number(n) if n.as_u64() == Some(0) => false,
                        Value::Bool(b) => *b,
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "log_format field {name:?}: expected 1 (keep) or 0 (drop), found {other}"
                            )));
                        }
                    };
                    fields.push((name, keep));
                }
                Ok(LogFormat { fields })
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// A number from either side of a comparison: exact as an integer when it is
/// one, else a float.
#[derive(Debug, Clone, Copy)]
struct Num {
    int: Option<i64>,
    float: f64,
}

impl Num {
    fn cmp(self, other: Num) -> Option<Ordering> {
        match (self.int, other.int) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => self.float.partial_cmp(&other.float),
        }
    }

    /// A JSON number literal, or a numeric-looking string: optional sign,
    /// digits, optional fraction and exponent; no spaces, no `inf`/`NaN`.
    fn parse(text: &str) -> Option<Num> {
        let bytes = text.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.iter().any(u8::is_ascii_digit)
            && bytes
                .iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
        if !valid {
            return None;
        }
        if let Ok(int) = text.parse::<i64>() {
            return Some(Num {
                int: Some(int),
                float: int as f64,
            });
        }
        let float = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
        Some(Num { int: None, float })
    }
}

/// The right-hand side of a condition, classified once at configure.
#[derive(Debug, Clone)]
enum Operand {
    Num(Num),
    Str {
        text: String,
        num: Option<Num>,
    },
    Bool(bool),
    Null,
    /// An array or object: compared as a whole JSON value.
    Json(Value),
}

impl Operand {
    fn new(value: &Value) -> Operand {
        match value {
            Value::Number(n) => {
                Num::parse(&n.to_string()).map_or(Operand::Json(value.clone()), Operand::Num)
            }
            Value::String(s) => Operand::Str {
                text: s.clone(),
                num: Num::parse(s),
            },
            Value::Bool(b) => Operand::Bool(*b),
            Value::Null => Operand::Null,
            _ => Operand::Json(value.clone()),
        }
    }

    fn num(&self) -> Option<Num> {
        match self {
            Operand::Num(n) => Some(*n),
            Operand::Str { num, .. } => *num,
            _ => None,
        }
    }
}

/// An event field's value, classified from its raw JSON text without
/// allocating (except for a string with escapes).
enum FieldValue<'a> {
    Num(Num),
    Str(Cow<'a, str>),
    Bool(bool),
    Null,
    Complex(RawJson<'a>),
}

impl<'a> FieldValue<'a> {
    fn new(raw: RawJson<'a>) -> FieldValue<'a> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => string_value(raw).map_or(FieldValue::Complex(raw), FieldValue::Str),
            Some(b't') => FieldValue::Bool(true),
            Some(b'f') => FieldValue::Bool(false),
            Some(b'n') => FieldValue::Null,
            Some(b'-' | b'0'..=b'9') => {
                Num::parse(text).map_or(FieldValue::Complex(raw), FieldValue::Num)
            }
            _ => FieldValue::Complex(raw),
        }
    }

    fn num(&self) -> Option<Num> {
        match self {
            FieldValue::Num(n) => Some(*n),
            FieldValue::Str(s) => Num::parse(s),
            _ => None,
        }
    }

    fn equals(&self, operand: &Operand) -> bool {
        match (self, operand) {
            (FieldValue::Str(a), Operand::Str { text, .. }) => a == text,
            (FieldValue::Num(_) | FieldValue::Str(_), Operand::Num(_) | Operand::Str { .. }) => {
                match (self.num(), operand.num()) {
                    (Some(a), Some(b)) => a.cmp(b) == Some(Ordering::Equal),
                    _ => false,
                }
            }
            (FieldValue::Bool(a), Operand::Bool(b)) => a == b,
            (FieldValue::Null, Operand::Null) => true,
            (FieldValue::Complex(raw), Operand::Json(value)) => {
                serde_json::from_str::<Value>(raw.get()).is_ok_and(|v| &v == value)
            }
            _ => false,
        }
    }

    fn compare(&self, operand: &Operand) -> Option<Ordering> {
        if let (Some(a), Some(b)) = (self.num(), operand.num()) {
            return a.cmp(b);
        }
        match (self, operand) {
            (FieldValue::Str(a), Operand::Str { text, .. }) => Some(a.as_ref().cmp(text.as_str())),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Op {
    Eq(Operand),
    Ne(Operand),
    EqIgnoreCase(String),
    Gt(Operand),
    Ge(Operand),
    Lt(Operand),
    Le(Operand),
    Contains(Operand),
    In(Vec<Operand>),
    NotIn(Vec<Operand>),
    Exists(bool),
    Regex(Regex),
}

const OPERATORS: &str = "==, !=, ==i, >, >=, <, <=, contains, in, not_in, exists, regex";

#[derive(Debug)]
struct Condition {
    /// Slot of the `left` field in the plugin's [`FieldSet`].
    left: usize,
    op: Op,
}

impl Condition {
    fn compile(index: usize, spec: &FilterSpec, names: &mut FieldSet) -> Result<Condition, Error> {
        let at = |part: &str| format!("config field `filters[{index}].{part}`");
        let right = || {
            spec.right.as_ref().ok_or_else(|| {
                Error::new(format!(
                    "{}: missing; operator `{}` needs a value",
                    at("right"),
                    spec.operator
                ))
            })
        };
        let scalar = || -> Result<Operand, Error> {
            let value = right()?;
            match value {
                Value::Number(_) | Value::String(_) | Value::Bool(_) => Ok(Operand::new(value)),
                other => Err(Error::new(format!(
                    "{}: operator `{}` needs a string, number or boolean, found {other}",
                    at("right"),
                    spec.operator
                ))),
            }
        };
        let list = || -> Result<Vec<Operand>, Error> {
            match right()? {
                Value::Array(items) => Ok(items.iter().map(Operand::new).collect()),
                other => Err(Error::new(format!(
                    "{}: operator `{}` needs an array, e.g. [\"a\", \"b\"], found {other}",
                    at("right"),
                    spec.operator
                ))),
            }
        };
        let op = match spec.operator.as_str() {
            "==" => Op::Eq(Operand::new(right()?)),
            "!=" => Op::Ne(Operand::new(right()?)),
            "==i" => match right()? {
                Value::String(s) => Op::EqIgnoreCase(s.to_lowercase()),
                other => {
                    return Err(Error::new(format!(
                        "{}: operator `==i` needs a string, found {other}",
                        at("right")
                    )));
                }
            },
            ">" => Op::Gt(scalar()?),
            ">=" => Op::Ge(scalar()?),
            "<" => Op::Lt(scalar()?),
            "<=" => Op::Le(scalar()?),
            "contains" => Op::Contains(scalar()?),
            "in" => Op::In(list()?),
            "not_in" => Op::NotIn(list()?),
            "exists" => match &spec.right {
                None | Some(Value::Bool(true)) => Op::Exists(true),
                Some(Value::Bool(false)) => Op::Exists(false),
                Some(other) => {
                    return Err(Error::new(format!(
                        "{}: operator `exists` takes true, false or nothing, found {other}",
                        at("right")
                    )));
                }
            },
            "regex" => match right()? {
                Value::String(pattern) => Op::Regex(Regex::new(pattern).map_err(|e| {
                    Error::new(format!("{}: invalid regular expression: {e}", at("right")))
                })?),
                other => {
                    return Err(Error::new(format!(
                        "{}: operator `regex` needs a pattern string, found {other}",
                        at("right")
                    )));
                }
            },
            other => {
                return Err(Error::new(format!(
                    "{}: unknown operator {other:?}; accepted: {OPERATORS}",
                    at("operator")
                )));
            }
        };
        Ok(Condition {
            left: names.insert(&spec.left),
            op,
        })
    }

    /// Whether the condition holds for an event with these picked fields. A
    /// `bool`, not a `Result`: the fields are split already, so nothing can
    /// fail, and in the guest a `bool` comes back in a register.
    fn holds(&self, picked: &Picked<'_>) -> bool {
        let Some(raw) = picked.get(self.left) else {
            return matches!(self.op, Op::Exists(false));
        };
        let value = FieldValue::new(raw);
        match &self.op {
            Op::Eq(operand) => value.equals(operand),
            Op::Ne(operand) => !value.equals(operand),
            Op::EqIgnoreCase(lower) => match &value {
                FieldValue::Str(s) if s.is_ascii() && lower.is_ascii() => {
                    s.eq_ignore_ascii_case(lower)
                }
                FieldValue::Str(s) => s.to_lowercase() == *lower,
                _ => false,
            },
            Op::Gt(operand) => value.compare(operand) == Some(Ordering::Greater),
            Op::Ge(operand) => matches!(
                value.compare(operand),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::Lt(operand) => value.compare(operand) == Some(Ordering::Less),
            Op::Le(operand) => matches!(
                value.compare(operand),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::Contains(operand) => match &value {
                FieldValue::Str(s) => match operand {
                    Operand::Str { text, .. } => s.contains(text.as_str()),
                    _ => false,
                },
                FieldValue::Complex(raw) if raw.get().starts_with('[') => {
                    serde_json::from_str::<Vec<&RawValue>>(raw.get()).is_ok_and(|items| {
                        items
                            .iter()
                            .any(|&item| FieldValue::new(item.into()).equals(operand))
                    })
                }
                _ => false,
            },
            Op::In(items) => items.iter().any(|item| value.equals(item)),
            Op::NotIn(items) => !items.iter().any(|item| value.equals(item)),
            Op::Exists(present) => *present,
            Op::Regex(regex) => match &value {
                FieldValue::Str(s) => regex.is_match(s),
                FieldValue::Num(_) => regex.is_match(raw.get()),
                _ => false,
            },
        }
    }
}

/// Fields the event's date is read from, in order of preference.
const DATE_FIELDS: [&str; 2] = ["timestamp", "ts"];

/// Names the plugin writes itself; a kept field of the same name is skipped.
const RESERVED: [&str; 3] = ["success", "scenario_id", "date"];

/// The configured scenario plugin. Build it through the host (`configure`) or
/// natively with [`weir_sdk::Harness::scenario`].
///
/// ```
/// use weir_plugin_scenario::ScenarioPlugin;
/// let harness = weir_sdk::Harness::scenario::<ScenarioPlugin>(
///     r#"{"scenario_id":"s1","filters":[{"left":"e_n","operator":"==","right":"구매"}]}"#)?;
/// let result = harness.run_one(r#"{"e_n":"구매"}"#);
/// assert_eq!(result.text(0), r#"{"e_n":"구매","success":1,"scenario_id":"s1","date":null}"#);
/// # Ok::<(), weir_sdk::Error>(())
/// ```
#[derive(Debug)]
pub struct ScenarioPlugin {
    /// Every field the plugin reads: kept fields, filter fields and the date
    /// fields, resolved in one pass per event.
    names: FieldSet,
    /// Slots of `timestamp` and `ts` in `names`.
    date_fields: [usize; 2],
    /// With `scenario_id` configured, the output's last fields up to the date,
    /// pre-rendered for an unmatched and a matched event:
    /// `"success":0,"scenario_id":"5","date":`. `None`: use the batch's id.
    tails: Option<[Vec<u8>; 2]>,
    /// Slots of the kept fields with their pre-rendered prefix, `{"name":`
    /// for the first and `,"name":` for the others; `None`: keep all.
    keep: Option<Vec<(usize, Vec<u8>)>>,
    conditions: Vec<Condition>,
    any: bool,
}

impl Plugin for ScenarioPlugin {
    const NAME: &'static str = "scenario";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Matches events against a scenario's filters and emits its log_format fields with success, scenario_id and date.";
    const CONFIG_SCHEMA: &'static str = include_str!("../config.schema.json");
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        let scenario_id_json = match &config.scenario_id {
            None => None,
            Some(v @ (Value::Number(_) | Value::String(_))) => Some(v.to_string()),
            Some(other) => {
                return Err(Error::new(format!(
                    "config field `scenario_id`: expected a number or a string, found {other}"
                )));
            }
        };
        let any = match config.logical_operator.as_deref() {
            None => false,
            Some(op) if op.eq_ignore_ascii_case("and") => false,
            Some(op) if op.eq_ignore_ascii_case("or") => true,
            Some(other) => {
                return Err(Error::new(format!(
                    "config field `logical_operator`: expected \"AND\" or \"OR\", found {other:?}"
                )));
            }
        };
        let mut names = FieldSet::new();
        let conditions = config
            .filters
            .iter()
            .enumerate()
            .map(|(i, spec)| Condition::compile(i, spec, &mut names))
            .collect::<Result<_, _>>()?;
        let keep = config.log_format.as_ref().map(|format| {
            format
                .kept()
                .filter(|name| !RESERVED.contains(name))
                .enumerate()
                .map(|(i, name)| {
                    let mut prefix = vec![if i == 0 { b'{' } else { b',' }];
                    serde_json::to_writer(&mut prefix, name).expect("a string serializes");
                    prefix.push(b':');
                    (names.insert(name), prefix)
                })
                .collect()
        });
        let tails = scenario_id_json.map(|id| {
            [0, 1].map(|success| {
                format!("\"success\":{success},\"scenario_id\":{id},\"date\":").into_bytes()
            })
        });
        let date_fields = DATE_FIELDS.map(|name| names.insert(name));
        Ok(ScenarioPlugin {
            names,
            date_fields,
            tails,
            keep,
            conditions,
            any,
        })
    }
}

impl ScenarioPlugin {
    /// The event's date as `YYYY-MM-DD`: from its `timestamp` field, else its `ts`
    /// field, else the record timestamp; `None` when none of them gives a date.
    ///
    /// A field holding an ISO-8601 string contributes its date as written (no time
    /// zone conversion); a number (or numeric string) is Unix time, in
    /// milliseconds when its magnitude is at least 10^11, else in seconds, and is
    /// converted in UTC. A field that is neither is skipped.
    fn event_date(&self, event: &Event<'_>, picked: &Picked<'_>) -> Option<[u8; 10]> {
        for slot in self.date_fields {
            let Some(raw) = picked.get(slot) else {
                continue;
            };
            match FieldValue::new(raw) {
                FieldValue::Str(s) if is_iso_date(&s) => {
                    let mut date = [0u8; 10];
                    date.copy_from_slice(&s.as_bytes()[..10]);
                    return Some(date);
                }
                value => {
                    if let Some(num) = value.num() {
                        let millis = if num.float.abs() >= 1e11 {
                            num.float
                        } else {
                            num.float * 1000.0
                        };
                        if let Some(date) = date_from_millis(millis as i64) {
                            return Some(date);
                        }
                    }
                }
            }
        }
        event.timestamp_ms().and_then(date_from_millis)
    }

    fn matches(&self, picked: &Picked<'_>) -> bool {
        if self.any {
            self.conditions.is_empty() || self.conditions.iter().any(|c| c.holds(picked))
        } else {
            self.conditions.iter().all(|c| c.holds(picked))
        }
    }
}

impl Scenario for ScenarioPlugin {
    fn evaluate(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<bool, Error> {
        let fields = event.fields()?;
        let picked = fields.pick(&self.names);
        let matched = self.matches(&picked);

        let mut empty = true;
        match &self.keep {
            Some(keep) => {
                for (slot, prefix) in keep {
                    out.push(prefix);
                    match picked.get(*slot) {
                        Some(raw) => out.push(raw.get().as_bytes()),
                        None => out.push(b"null"),
                    }
                }
                empty = keep.is_empty();
            }
            None => {
                for (name, raw) in fields.iter() {
                    if RESERVED.contains(&name) {
                        continue;
                    }
                    out.push(if std::mem::take(&mut empty) {
                        b"{"
                    } else {
                        b","
                    });
                    out.json(name)?;
                    out.push(b":");
                    out.push(raw.get().as_bytes());
                }
            }
        }
        out.push(if empty { b"{" } else { b"," });
        match &self.tails {
            Some(tails) => out.push(&tails[usize::from(matched)]),
            None => {
                out.push(if matched {
                    b"\"success\":1,\"scenario_id\":"
                } else {
                    b"\"success\":0,\"scenario_id\":"
                });
                out.json(event.scenario_id())?;
                out.push(b",\"date\":");
            }
        }
        match self.event_date(event, &picked) {
            Some(date) => {
                let mut end = *b"\"YYYY-MM-DD\"}";
                end[1..11].copy_from_slice(&date);
                out.push(&end);
            }
            None => out.push(b"null}"),
        }
        Ok(matched)
    }
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b.len() == 10 || matches!(b[10], b'T' | b't' | b' '))
}

/// UTC civil date of a Unix time in milliseconds (Howard Hinnant's
/// `civil_from_days`); `None` outside years 0..=9999.
fn date_from_millis(millis: i64) -> Option<[u8; 10]> {
    let days = millis.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00";
    let put = |out: &mut [u8; 10], at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut out, 0, 4, year);
    put(&mut out, 5, 2, month);
    put(&mut out, 8, 2, day);
    Some(out)
}

weir_sdk::export!(ScenarioPlugin as scenario);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(&date_from_millis(0).unwrap(), b"1970-01-01");
        assert_eq!(&date_from_millis(1_714_557_600_000).unwrap(), b"2024-05-01");
        assert_eq!(&date_from_millis(951_782_400_000).unwrap(), b"2000-02-29");
        assert_eq!(&date_from_millis(-86_400_000).unwrap(), b"1969-12-31");
        assert_eq!(date_from_millis(i64::MAX), None);
    }

    #[test]
    fn numeric_looking_strings() {
        assert_eq!(Num::parse("20").unwrap().int, Some(20));
        assert_eq!(Num::parse("-2.5e1").unwrap().float, -25.0);
        for not_numeric in ["", "abc", "20 ", " 20", "inf", "NaN", "-", "1-2x"] {
            assert!(Num::parse(not_numeric).is_none(), "{not_numeric:?}");
        }
    }
}
