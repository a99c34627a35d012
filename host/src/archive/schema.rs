//! Output records → Arrow record batches, under the scenario's column types.
//!
//! Fixed columns come first, in this order: `scenario_id` (utf8), `success` (int8, 1 when
//! the event matched), `date` (utf8 `YYYY-MM-DD`: the record's own `date`, else the UTC
//! day of `event_time`), `event_time` (timestamp ms, UTC), `event_time_valid` (bool:
//! false when the record's timestamp was missing or outside 2000-01-01 .. a day ahead,
//! and `event_time` is the processing time instead), `topic` (utf8), `partition`
//! (int32), `offset` (int64). Then a column per field the scenario's column types
//! know ([`super::columns`]), in name order. Last, `extra` (utf8, JSON object or
//! null): what has no column or does not fit its column, exactly as the plugin wrote
//! it: fields without a column (nested values, names over 255 bytes, fields that
//! were only ever null), values of another type than their column's (a string in an
//! int64 column, an integer over 2^53 in a float64 column), fields whose names
//! clash with the fixed columns, and a record that is not a JSON object (under
//! `_record`). So every value the plugin wrote can be read back exactly, from its
//! column or from `extra`.
//!
//! A file has the columns its scenario knew when it opened; rows with a value for a
//! column learned since close it, and the next file has that column too.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int8Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::columns::{ColumnType, Columns};
use crate::pipeline::route::Name;
use crate::registry::MAX_COLUMN_NAME;

/// What the archive knows of an output record besides its fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// Source offset of the event the record came from.
    pub offset: i64,
    /// Event time, milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    /// Whether `event_time_ms` is the event's own time (else the processing
    /// time, see `EventMeta::time`).
    pub event_time_valid: bool,
    /// Whether the event matched the scenario.
    pub success: bool,
}

/// Names of the fixed columns, and of the fields the plugin writes that they replace.
pub(crate) const FIXED: [&str; 8] = [
    "scenario_id",
    "success",
    "date",
    "event_time",
    "event_time_valid",
    "topic",
    "partition",
    "offset",
];
const EXTRA: &str = "extra";

/// What the values of one field were, merged over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Int,
    Float,
    Bool,
    Text,
    Mixed,
    Nested,
}

/// One value of an output record as the archive reads it, borrowed from the
/// record's bytes where it can be. Numbers are told apart as `serde_json`
/// tells them apart (an integer an i64 holds, one only a u64 holds, any other
/// number, `-0` among them), so a field gets the type it always got.
#[derive(Debug, Clone)]
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(Cow<'a, str>),
    /// An array or an object, as written.
    Nested(&'a RawValue),
}

impl<'a> Cell<'a> {
    fn of(raw: &'a RawValue) -> Self {
        let text = raw.get().trim_start();
        match text.as_bytes().first() {
            Some(b'n') => Cell::Null,
            Some(b't') => Cell::Bool(true),
            Some(b'f') => Cell::Bool(false),
            Some(b'"') => Cell::Text(unquote(text)),
            Some(b'{' | b'[') => Cell::Nested(raw),
            _ => number(text.trim_end()),
        }
    }

    /// The value as JSON, as `serde_json` writes it (compact; an object's
    /// keys in order).
    fn write_json(&self, out: &mut String) {
        match self {
            Cell::Null => out.push_str("null"),
            Cell::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Cell::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Cell::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            Cell::Float(f) => out.push_str(&Value::from(*f).to_string()),
            Cell::Text(t) => out.push_str(&Value::from(t.as_ref()).to_string()),
            Cell::Nested(raw) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(value) => out.push_str(&value.to_string()),
                Err(_) => out.push_str(raw.get()),
            },
        }
    }
}

/// The text of a JSON string literal: borrowed when it has no escapes.
fn unquote(literal: &str) -> Cow<'_, str> {
    let inner = &literal[1..literal.len().saturating_sub(1).max(1)];
    if inner.contains('\\') {
        Cow::Owned(serde_json::from_str::<String>(literal).unwrap_or_else(|_| inner.to_owned()))
    } else {
        Cow::Borrowed(inner)
    }
}

/// A JSON number literal, told apart as `serde_json` does.
fn number(literal: &str) -> Cell<'static> {
    match literal.parse::<i64>() {
        // `serde_json` reads `-0` as the float -0.0.
        Ok(0) if literal.starts_with('-') => Cell::Float(-0.0),
        Ok(i) => Cell::Int(i),
        Err(_) => match literal.parse::<u64>() {
            Ok(u) => Cell::UInt(u),
            Err(_) => Cell::Float(literal.parse().unwrap_or(f64::NAN)),
        },
    }
}

/// One output record's fields, by name (each name once: the last value
/// written wins, as in a JSON map).
pub(crate) type Record<'a> = Vec<(Cow<'a, str>, Cell<'a>)>;

/// A record's fields, read without building a map.
struct Fields<'a>(Record<'a>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Name(name)) = map.next_key()? {
                    let raw: &'de RawValue = map.next_value()?;
                    fields.push((name, Cell::of(raw)));
                }
                // In name order, each name once, the last value winning.
                fields.sort_by(|a: &(Cow<str>, Cell), b| a.0.cmp(&b.0));
                let mut unique: Record<'de> = Vec::with_capacity(fields.len());
                for field in fields {
                    match unique.last_mut() {
                        Some(last) if last.0 == field.0 => *last = field,
                        _ => unique.push(field),
                    }
                }
                Ok(Fields(unique))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

fn kind(cell: &Cell) -> Kind {
    match cell {
        Cell::Null => Kind::Null,
        Cell::Bool(_) => Kind::Bool,
        Cell::Int(_) => Kind::Int,
        Cell::UInt(_) | Cell::Float(_) => Kind::Float,
        Cell::Text(_) => Kind::Text,
        Cell::Nested(_) => Kind::Nested,
    }
}

fn merge(a: Kind, b: Kind) -> Kind {
    match (a, b) {
        (Kind::Nested, _) | (_, Kind::Nested) => Kind::Nested,
        (Kind::Null, k) | (k, Kind::Null) => k,
        (a, b) if a == b => a,
        (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
        _ => Kind::Mixed,
    }
}

fn utc_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// What each field of some records held: field name → kind.
pub(crate) type Kinds = BTreeMap<String, Kind>;

/// Rows from which [`parse`] splits its work over two threads.
const PARALLEL_ROWS: usize = 2_048;

/// The records of `rows` as their fields, borrowed from `rows` (a record
/// that is not a JSON object is one field, `_record`).
///
/// Parsing is most of what encoding rows costs: a large batch of rows is
/// parsed half here and half on a second thread.
pub(crate) fn parse<'r>(rows: impl IntoIterator<Item = &'r [u8]>) -> Vec<Record<'r>> {
    let rows: Vec<&'r [u8]> = rows.into_iter().collect();
    let one = |record: &&'r [u8]| -> Record<'r> {
        let record: &'r [u8] = record;
        if let Ok(Fields(fields)) = serde_json::from_slice::<Fields<'r>>(record) {
            return fields;
        }
        let cell = match serde_json::from_slice::<&'r RawValue>(record) {
            Ok(raw) => Cell::of(raw),
            Err(_) => Cell::Text(String::from_utf8_lossy(record)),
        };
        vec![(Cow::Borrowed("_record"), cell)]
    };
    if rows.len() < PARALLEL_ROWS {
        return rows.iter().map(one).collect();
    }
    let (first, second) = rows.split_at(rows.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| second.iter().map(one).collect::<Vec<_>>());
        let mut records: Vec<Record<'r>> = first.iter().map(one).collect();
        match other.join() {
            Ok(rest) => records.extend(rest),
            // Parsing does not panic; should it, the half is parsed here.
            Err(_) => records.extend(second.iter().map(one)),
        }
        records
    })
}

/// The kind of every field the records hold that could have a column.
pub(crate) fn observe(records: &[Record]) -> Kinds {
    let mut kinds = Kinds::new();
    for record in records {
        for (name, value) in record {
            let name: &str = name;
            // Names a column cannot carry in every registry database (a NUL byte,
            // control characters) stay in `extra`.
            if FIXED.contains(&name)
                || name == EXTRA
                || name == "_record"
                || name.is_empty()
                || name.len() > MAX_COLUMN_NAME
                || name.chars().any(char::is_control)
            {
                continue;
            }
            // Most records name the same fields: the key is copied only once.
            match kinds.get_mut(name) {
                Some(known) => *known = merge(*known, kind(value)),
                None => {
                    kinds.insert(name.to_owned(), merge(Kind::Null, kind(value)));
                }
            }
        }
    }
    kinds
}

/// Column types for the fields `observed` that `known` has none for: integers →
/// int64, numbers → float64, booleans → bool, strings or a mix → string. Fields that
/// were only null, or nested, get none (their values go to `extra`).
pub(crate) fn proposed(observed: &Kinds, known: &Columns) -> Columns {
    observed
        .iter()
        .filter(|(name, _)| !known.contains_key(name.as_str()))
        .filter_map(|(name, kind)| {
            let column = match kind {
                Kind::Int => ColumnType::Int64,
                Kind::Float => ColumnType::Float64,
                Kind::Bool => ColumnType::Bool,
                Kind::Text | Kind::Mixed => ColumnType::Utf8,
                Kind::Null | Kind::Nested => return None,
            };
            Some((name.clone(), column))
        })
        .collect()
}

/// Whether records with the `observed` kinds have values for a column `known` has
/// and a file's `columns` lack (the file must close first).
pub(crate) fn lacks(columns: &Columns, known: &Columns, observed: &Kinds) -> bool {
    observed.iter().any(|(name, kind)| {
        !matches!(kind, Kind::Null | Kind::Nested)
            && known.contains_key(name.as_str())
            && !columns.contains_key(name.as_str())
    })
}

/// The largest integer every float64 holds exactly, and all below it: 2^53.
const EXACT_IN_FLOAT: u64 = 1 << 53;

/// Whether `value` goes to a column of type `column` exactly (`null` does, as a null).
fn fits(column: ColumnType, value: &Cell) -> bool {
    match (column, value) {
        (_, Cell::Null)
        | (ColumnType::Int64, Cell::Int(_))
        | (ColumnType::Float64, Cell::Float(_))
        | (ColumnType::Bool, Cell::Bool(_))
        | (ColumnType::Utf8, Cell::Text(_)) => true,
        (ColumnType::Float64, Cell::Int(i)) => i.unsigned_abs() <= EXACT_IN_FLOAT,
        (ColumnType::Float64, Cell::UInt(u)) => *u <= EXACT_IN_FLOAT,
        _ => false,
    }
}

/// The rows of one scenario, topic and partition as a record batch with the columns
/// their records call for.
#[cfg(test)]
pub(crate) fn record_batch(
    scenario_id: &str,
    topic: &str,
    partition: i32,
    rows: &[(Row, &str)],
) -> Result<RecordBatch, ArrowError> {
    let records = parse(rows.iter().map(|(_, record)| record.as_bytes()));
    let columns = proposed(&observe(&records), &Columns::new());
    let rows: Vec<Row> = rows.iter().map(|(row, _)| *row).collect();
    build(scenario_id, topic, partition, &rows, &records, &columns)
}

/// The value of field `name` of `record`.
fn field<'c, 'a>(record: &'c Record<'a>, name: &str) -> Option<&'c Cell<'a>> {
    record
        .binary_search_by(|(n, _)| n.as_ref().cmp(name))
        .ok()
        .map(|at| &record[at].1)
}

/// The rows with their parsed `records` as a record batch with the given `columns`
/// (what has no column, or does not fit its column, goes to `extra`).
pub(crate) fn build(
    scenario_id: &str,
    topic: &str,
    partition: i32,
    rows: &[Row],
    records: &[Record],
    columns: &Columns,
) -> Result<RecordBatch, ArrowError> {
    let mut fields = vec![
        Field::new("scenario_id", DataType::Utf8, false),
        Field::new("success", DataType::Int8, false),
        Field::new("date", DataType::Utf8, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("event_time_valid", DataType::Boolean, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
    ];
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![scenario_id; rows.len()])),
        Arc::new(Int8Array::from_iter_values(
            rows.iter().map(|r| i8::from(r.success)),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().zip(records).map(
            |(row, record)| match field(record, "date") {
                Some(Cell::Text(date)) => date.clone().into_owned(),
                _ => utc_date(row.event_time_ms),
            },
        ))),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.event_time_ms))
                .with_timezone("UTC"),
        ),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.event_time_valid)),
        )),
        Arc::new(StringArray::from(vec![topic; rows.len()])),
        Arc::new(Int32Array::from(vec![partition; rows.len()])),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
    ];

    // One pass over each record's fields: each goes to its column when it has
    // one and fits it, else to `extra` (a string `date` is the `date` column).
    // A lookup per field, not one per column and record.
    let index: HashMap<&str, usize> = columns
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let types: Vec<ColumnType> = columns.values().copied().collect();
    let mut cells: Vec<Vec<Option<&Cell>>> = vec![vec![None; records.len()]; columns.len()];
    let mut extra: Vec<Option<String>> = Vec::with_capacity(records.len());
    for (r, record) in records.iter().enumerate() {
        // Fields are in name order, so `extra` lists them as a JSON map would.
        let mut rest: Option<String> = None;
        for (name, value) in record {
            if name == "date" && matches!(value, Cell::Text(_)) {
                continue;
            }
            match index.get(name.as_ref()) {
                Some(&c) if fits(types[c], value) => cells[c][r] = Some(value),
                _ => {
                    let out = rest.get_or_insert_with(|| String::from("{"));
                    if out.len() > 1 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(name.as_ref()).to_string());
                    out.push(':');
                    value.write_json(out);
                }
            }
        }
        extra.push(rest.map(|mut out| {
            out.push('}');
            out
        }));
    }
    for ((name, &column), values) in columns.iter().zip(&cells) {
        // A value that does not fit is null here and kept in `extra`.
        let values = values.iter().copied();
        let (data_type, array): (DataType, ArrayRef) = match column {
            ColumnType::Int64 => (
                DataType::Int64,
                Arc::new(
                    values
                        .map(|v| match v {
                            Some(Cell::Int(i)) => Some(*i),
                            _ => None,
                        })
                        .collect::<Int64Array>(),
                ),
            ),
            ColumnType::Float64 => (
                DataType::Float64,
                Arc::new(
                    values
                        .map(|v| match v {
                            Some(Cell::Int(i)) => Some(*i as f64),
                            Some(Cell::UInt(u)) => Some(*u as f64),
                            Some(Cell::Float(f)) => Some(*f),
                            _ => None,
                        })
                        .collect::<Float64Array>(),
                ),
            ),
            ColumnType::Bool => (
                DataType::Boolean,
                Arc::new(
                    values
                        .map(|v| match v {
                            Some(Cell::Bool(b)) => Some(*b),
                            _ => None,
                        })
                        .collect::<BooleanArray>(),
                ),
            ),
            ColumnType::Utf8 => (
                DataType::Utf8,
                Arc::new(
                    values
                        .map(|v| match v {
                            Some(Cell::Text(t)) => Some(t.as_ref()),
                            _ => None,
                        })
                        .collect::<StringArray>(),
                ),
            ),
        };
        fields.push(Field::new(name, data_type, true));
        arrays.push(array);
    }
    let extra = StringArray::from(extra);
    fields.push(Field::new(EXTRA, DataType::Utf8, true));
    arrays.push(Arc::new(extra));

    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};

    fn row(offset: i64, record: &str) -> (Row, &str) {
        (
            Row {
                offset,
                event_time_ms: 1_764_151_200_000, // 2025-11-26T10:00:00Z
                event_time_valid: true,
                success: offset % 2 == 0,
            },
            record,
        )
    }

    #[test]
    fn fields_are_typed_from_what_the_records_hold() {
        let rows = [
            row(
                10,
                r#"{"age":31,"score":1,"ok":true,"name":"a","mixed":1,"success":1,"scenario_id":5,"date":"2024-05-01"}"#,
            ),
            row(
                11,
                r#"{"age":null,"score":2.5,"ok":false,"name":"b","mixed":"x","tags":[1],"offset":9,"never":null}"#,
            ),
        ];
        let batch = record_batch("5", "t", 3, &rows).unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "scenario_id",
                "success",
                "date",
                "event_time",
                "event_time_valid",
                "topic",
                "partition",
                "offset",
                "age",
                "mixed",
                "name",
                "ok",
                "score",
                "extra"
            ]
        );
        let type_of = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
        assert_eq!(type_of("age"), DataType::Int64);
        assert_eq!(type_of("score"), DataType::Float64);
        assert_eq!(type_of("ok"), DataType::Boolean);
        assert_eq!(type_of("mixed"), DataType::Utf8);
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let age = column("age");
        assert_eq!(age.as_primitive::<Int64Type>().value(0), 31);
        assert!(age.is_null(1));
        let mixed = column("mixed");
        assert!(
            mixed.is_null(0),
            "an integer does not go to a string column"
        );
        assert_eq!(mixed.as_string::<i32>().value(1), "x");
        let date = column("date");
        assert_eq!(date.as_string::<i32>().value(0), "2024-05-01");
        assert_eq!(date.as_string::<i32>().value(1), "2025-11-26");
        let extra = column("extra");
        assert_eq!(
            extra.as_string::<i32>().value(0),
            r#"{"mixed":1,"scenario_id":5,"success":1}"#,
            "fields named like fixed columns are kept"
        );
        assert_eq!(
            extra.as_string::<i32>().value(1),
            r#"{"never":null,"offset":9,"tags":[1]}"#
        );
        let success = column("success");
        assert_eq!(
            success
                .as_primitive::<arrow::datatypes::Int8Type>()
                .values(),
            &[1, 0]
        );
    }

    fn columns(pairs: &[(&str, ColumnType)]) -> Columns {
        pairs.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
    }

    #[test]
    fn only_new_fields_get_a_type_proposed() {
        let records = parse([
            br#"{"n":1,"x":1,"s":"a","deep":{"a":1},"nothing":null}"#.as_slice(),
            br#"{"n":2,"x":2.5,"s":3,"b":true}"#.as_slice(),
        ]);
        let observed = observe(&records);
        let known = columns(&[("n", ColumnType::Utf8)]);
        assert_eq!(
            proposed(&observed, &known),
            columns(&[
                ("b", ColumnType::Bool),
                ("s", ColumnType::Utf8),
                ("x", ColumnType::Float64),
            ]),
            "known columns keep their type; nested and null-only fields get none"
        );
        let file = columns(&[("n", ColumnType::Utf8)]);
        let all = columns(&[("n", ColumnType::Utf8), ("x", ColumnType::Float64)]);
        assert!(
            lacks(&file, &all, &observed),
            "x has values and no column in the file"
        );
        assert!(!lacks(&all, &all, &observed));
    }

    #[test]
    fn a_value_goes_to_its_column_only_when_the_type_holds_it_exactly() {
        let rows = [
            row(1, r#"{"x":1.5,"n":7,"s":"a"}"#),
            row(2, r#"{"x":9007199254740993,"n":2.5,"s":4}"#),
            row(3, r#"{"x":9007199254740992,"n":"7","s":null}"#),
            row(4, r#"{"x":-3,"n":18446744073709551615,"s":"b"}"#),
        ];
        let records = parse(rows.iter().map(|(_, r)| r.as_bytes()));
        let known = columns(&[
            ("x", ColumnType::Float64),
            ("n", ColumnType::Int64),
            ("s", ColumnType::Utf8),
        ]);
        let plain: Vec<Row> = rows.iter().map(|(r, _)| *r).collect();
        let batch = build("5", "t", 0, &plain, &records, &known).unwrap();
        let x = batch
            .column_by_name("x")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(x.value(0), 1.5);
        assert!(x.is_null(1), "2^53 + 1 is not exact in a float64");
        assert_eq!(x.value(2), 9_007_199_254_740_992.0);
        assert_eq!(x.value(3), -3.0);
        let n = batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(n.value(0), 7);
        assert!(n.is_null(1) && n.is_null(2) && n.is_null(3));
        let extra = batch.column_by_name("extra").unwrap().as_string::<i32>();
        assert!(extra.is_null(0));
        assert_eq!(extra.value(1), r#"{"n":2.5,"s":4,"x":9007199254740993}"#);
        assert_eq!(extra.value(2), r#"{"n":"7"}"#);
        assert_eq!(extra.value(3), r#"{"n":18446744073709551615}"#);
    }

    #[test]
    fn fields_read_without_a_map_are_those_a_json_map_reads() {
        // What the archive did before: each record a serde_json map.
        fn kind_of(value: &Value) -> Kind {
            match value {
                Value::Null => Kind::Null,
                Value::Bool(_) => Kind::Bool,
                Value::Number(n) if n.is_i64() => Kind::Int,
                Value::Number(_) => Kind::Float,
                Value::String(_) => Kind::Text,
                Value::Array(_) | Value::Object(_) => Kind::Nested,
            }
        }
        let records: [&[u8]; 9] = [
            br#"{"b":1,"a":"x","b":"last wins","\u0063":"escaped name"}"#,
            r#"{"s":"tab\there \"quoted\" \u00e9\ud83d\ude00","plain":"café"}"#.as_bytes(),
            br#"{"i":-9223372036854775808,"u":18446744073709551615,"big":18446744073709551616,"z":-0,"f":1e2,"g":-1.5e-7,"h":0.1}"#,
            br#"{ "deep" : { "z" : [1, {"y": null}], "a" : true } , "arr" : [ ] , "n" : null }"#,
            br#"{}"#,
            br#"[1, 2]"#,
            br#""just a string""#,
            br#"17"#,
            b"{not json",
        ];
        for (record, read) in records.iter().zip(parse(records.iter().copied())) {
            let map = match serde_json::from_slice::<Value>(record) {
                Ok(Value::Object(map)) => map,
                Ok(other) => serde_json::Map::from_iter([("_record".to_owned(), other)]),
                Err(_) => serde_json::Map::from_iter([(
                    "_record".to_owned(),
                    Value::String(String::from_utf8_lossy(record).into_owned()),
                )]),
            };
            let names: Vec<&str> = read.iter().map(|(n, _)| n.as_ref()).collect();
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            assert_eq!(names, keys, "{}", String::from_utf8_lossy(record));
            for ((name, cell), value) in read.iter().zip(map.values()) {
                assert_eq!(kind(cell), kind_of(value), "{name}");
                let mut json = String::new();
                cell.write_json(&mut json);
                assert_eq!(json, value.to_string(), "{name}");
            }
        }
        let negative_zero = parse([br#"{"z":-0}"#.as_slice()]);
        assert!(
            matches!(negative_zero[0][0].1, Cell::Float(f) if f == 0.0 && f.is_sign_negative())
        );
    }

    #[test]
    fn a_record_that_is_not_an_object_lands_in_extra() {
        let rows = [row(1, "not json"), row(2, "[1,2]")];
        let batch = record_batch("s", "t", 0, &rows).unwrap();
        assert_eq!(batch.num_columns(), FIXED.len() + 1);
        let extra = batch.column_by_name("extra").unwrap();
        assert_eq!(
            extra.as_string::<i32>().value(0),
            r#"{"_record":"not json"}"#
        );
        assert_eq!(extra.as_string::<i32>().value(1), r#"{"_record":[1,2]}"#);
    }
}
