//! Output records → Arrow record batches, with a schema typed from what the records hold.
//!
//! Fixed columns come first, in this order: `scenario_id` (utf8), `success` (int8, 1 when
//! the event matched), `date` (utf8 `YYYY-MM-DD`: the record's own `date`, else the UTC
//! day of `event_time`), `event_time` (timestamp ms, UTC), `event_time_valid` (bool:
//! false when the record's timestamp was missing or outside 2000-01-01 .. a day ahead,
//! and `event_time` is the processing time instead), `topic` (utf8), `partition`
//! (int32), `offset` (int64). Then every other top-level field of the records, in name
//! order, typed by what the batch holds: all integers → int64, numbers → float64,
//! booleans → bool, strings → utf8, anything mixed → utf8 (strings as they are, other
//! values as JSON text); JSON `null` is a null. Last, `extra` (utf8, JSON object or null):
//! fields with nested values (objects, arrays), fields whose names clash with the fixed
//! columns, and a record that is not a JSON object (under `_record`).
//!
//! A file is written in several record batches (row groups) with the schema of its
//! first one; later rows `fit` it when each of their fields has a column that takes
//! its values (an int64 column takes integers, float64 numbers, a utf8 column anything
//! but nested values, and every column nulls) or no column and only null or nested
//! values (those go to `extra`). Rows that do not fit start a new file whose schema is
//! the old one `widen`ed by theirs, so a scenario's schema settles after a few files.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int8Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

/// One output record to archive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<'a> {
    /// Source offset of the event the record came from.
    pub offset: i64,
    /// Event time, milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    /// Whether `event_time_ms` is the event's own time (else the processing
    /// time, see `EventMeta::time`).
    pub event_time_valid: bool,
    /// Whether the event matched the scenario.
    pub success: bool,
    /// The record bytes as the plugin wrote them.
    pub record: &'a [u8],
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

fn kind(value: &Value) -> Kind {
    match value {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_i64() => Kind::Int,
        Value::Number(_) => Kind::Float,
        Value::String(_) => Kind::Text,
        Value::Array(_) | Value::Object(_) => Kind::Nested,
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

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn utc_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The typed columns of a file besides the fixed ones: field name → kind.
pub(crate) type Kinds = BTreeMap<String, Kind>;

/// The records of the rows as JSON objects (anything else under `_record`).
pub(crate) fn parse(rows: &[Row<'_>]) -> Vec<Map<String, Value>> {
    rows.iter()
        .map(|row| match serde_json::from_slice::<Value>(row.record) {
            Ok(Value::Object(map)) => map,
            Ok(other) => Map::from_iter([("_record".to_owned(), other)]),
            Err(_) => Map::from_iter([(
                "_record".to_owned(),
                Value::String(String::from_utf8_lossy(row.record).into_owned()),
            )]),
        })
        .collect()
}

/// The kind of every field the records hold, nested ones included.
pub(crate) fn observe(records: &[Map<String, Value>]) -> Kinds {
    let mut kinds = Kinds::new();
    for record in records {
        for (name, value) in record {
            if FIXED.contains(&name.as_str()) || name == EXTRA || name == "_record" {
                continue;
            }
            let merged = merge(
                *kinds.get(name.as_str()).unwrap_or(&Kind::Null),
                kind(value),
            );
            kinds.insert(name.clone(), merged);
        }
    }
    kinds
}

/// The columns for what was observed: nested fields go to `extra`.
pub(crate) fn columns(mut observed: Kinds) -> Kinds {
    observed.retain(|_, kind| *kind != Kind::Nested);
    observed
}

/// Whether records with the `observed` kinds can be written under a file's `columns`.
pub(crate) fn fit(columns: &Kinds, observed: &Kinds) -> bool {
    observed
        .iter()
        .all(|(name, &seen)| match columns.get(name) {
            None => matches!(seen, Kind::Null | Kind::Nested),
            Some(&column) => match (column, seen) {
                (_, Kind::Null) => true,
                (_, Kind::Nested) => false,
                (Kind::Int, seen) => seen == Kind::Int,
                (Kind::Float, seen) => matches!(seen, Kind::Int | Kind::Float),
                (Kind::Bool, seen) => seen == Kind::Bool,
                // A column of nulls so far: text joins it, a typed value gets a new file.
                (Kind::Null, seen) => seen == Kind::Text,
                (Kind::Text | Kind::Mixed | Kind::Nested, _) => true,
            },
        })
}

/// The columns of a new file for records that did not [`fit`] the old `columns`.
pub(crate) fn widen(columns: &Kinds, observed: &Kinds) -> Kinds {
    let mut widened = columns.clone();
    for (name, &seen) in observed {
        let before = widened.get(name).copied().unwrap_or(Kind::Null);
        widened.insert(name.clone(), merge(before, seen));
    }
    self::columns(widened)
}

/// The rows of one scenario, topic and partition as a record batch with the columns
/// their records call for.
#[cfg(test)]
pub(crate) fn record_batch(
    scenario_id: &str,
    topic: &str,
    partition: i32,
    rows: &[Row<'_>],
) -> Result<RecordBatch, ArrowError> {
    let records = parse(rows);
    let kinds = columns(observe(&records));
    build(scenario_id, topic, partition, rows, &records, &kinds)
}

/// The rows with their parsed `records` as a record batch with the given `kinds` of
/// columns (fields without a column go to `extra`).
pub(crate) fn build(
    scenario_id: &str,
    topic: &str,
    partition: i32,
    rows: &[Row<'_>],
    records: &[Map<String, Value>],
    kinds: &Kinds,
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
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![scenario_id; rows.len()])),
        Arc::new(Int8Array::from_iter_values(
            rows.iter().map(|r| i8::from(r.success)),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().zip(records).map(
            |(row, record)| match record.get("date") {
                Some(Value::String(date)) => date.clone(),
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

    for (name, &kind) in kinds {
        let values = records.iter().map(|r| r.get(name).unwrap_or(&Value::Null));
        let (data_type, column): (DataType, ArrayRef) = match kind {
            Kind::Int => (
                DataType::Int64,
                Arc::new(values.map(Value::as_i64).collect::<Int64Array>()),
            ),
            Kind::Float => (
                DataType::Float64,
                Arc::new(values.map(Value::as_f64).collect::<Float64Array>()),
            ),
            Kind::Bool => (
                DataType::Boolean,
                Arc::new(values.map(Value::as_bool).collect::<BooleanArray>()),
            ),
            // A field that was null in every record still gets a (null) column, so its
            // name is there for readers.
            Kind::Null | Kind::Text | Kind::Mixed | Kind::Nested => (
                DataType::Utf8,
                Arc::new(values.map(as_text).collect::<StringArray>()),
            ),
        };
        fields.push(Field::new(name, data_type, true));
        columns.push(column);
    }

    let extra: StringArray = records
        .iter()
        .map(|record| {
            let rest: Map<String, Value> = record
                .iter()
                .filter(|(name, _)| {
                    let name = name.as_str();
                    !kinds.contains_key(name) && !matches!(name, "success" | "scenario_id" | "date")
                })
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            (!rest.is_empty()).then(|| Value::Object(rest).to_string())
        })
        .collect();
    fields.push(Field::new(EXTRA, DataType::Utf8, true));
    columns.push(Arc::new(extra));

    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    fn row(offset: i64, record: &str) -> Row<'_> {
        Row {
            offset,
            event_time_ms: 1_764_151_200_000, // 2025-11-26T10:00:00Z
            event_time_valid: true,
            success: offset % 2 == 0,
            record: record.as_bytes(),
        }
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
                r#"{"age":null,"score":2.5,"ok":false,"name":"b","mixed":"x","tags":[1],"offset":9}"#,
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
        assert_eq!(mixed.as_string::<i32>().value(0), "1");
        assert_eq!(mixed.as_string::<i32>().value(1), "x");
        let date = column("date");
        assert_eq!(date.as_string::<i32>().value(0), "2024-05-01");
        assert_eq!(date.as_string::<i32>().value(1), "2025-11-26");
        let extra = column("extra");
        assert!(extra.is_null(0));
        assert_eq!(
            extra.as_string::<i32>().value(1),
            r#"{"offset":9,"tags":[1]}"#
        );
        let success = column("success");
        assert_eq!(
            success
                .as_primitive::<arrow::datatypes::Int8Type>()
                .values(),
            &[1, 0]
        );
    }

    fn kinds(pairs: &[(&str, Kind)]) -> Kinds {
        pairs.iter().map(|(n, k)| ((*n).to_owned(), *k)).collect()
    }

    #[test]
    fn later_rows_fit_a_file_when_its_columns_take_their_values() {
        let file = kinds(&[
            ("n", Kind::Int),
            ("x", Kind::Float),
            ("s", Kind::Text),
            ("m", Kind::Mixed),
            ("z", Kind::Null),
        ]);
        let fits = |pairs: &[(&str, Kind)]| fit(&file, &kinds(pairs));
        assert!(fits(&[
            ("n", Kind::Int),
            ("x", Kind::Int),
            ("s", Kind::Text)
        ]));
        assert!(fits(&[
            ("n", Kind::Null),
            ("m", Kind::Bool),
            ("z", Kind::Text)
        ]));
        assert!(
            fits(&[("new", Kind::Null), ("deep", Kind::Nested)]),
            "to extra"
        );
        assert!(!fits(&[("n", Kind::Float)]), "a float in an int64 column");
        assert!(!fits(&[("s", Kind::Nested)]), "nested values go to extra");
        assert!(
            !fits(&[("z", Kind::Int)]),
            "a typed value for a column of nulls"
        );
        assert!(!fits(&[("new", Kind::Int)]), "a new field");

        let widened = widen(&file, &kinds(&[("n", Kind::Float), ("new", Kind::Bool)]));
        assert_eq!(widened["n"], Kind::Float);
        assert_eq!(widened["new"], Kind::Bool);
        assert_eq!(widened["s"], Kind::Text);
        let widened = widen(&file, &kinds(&[("s", Kind::Nested)]));
        assert!(
            !widened.contains_key("s"),
            "a nested field leaves the columns"
        );
    }

    #[test]
    fn rows_built_under_a_files_columns_keep_its_types() {
        let rows = [row(1, r#"{"n":2,"extra_field":true}"#)];
        let records = parse(&rows);
        let columns = kinds(&[("n", Kind::Float), ("s", Kind::Text)]);
        let batch = build("5", "t", 0, &rows, &records, &columns).unwrap();
        let schema = batch.schema();
        assert_eq!(
            schema.field_with_name("n").unwrap().data_type(),
            &DataType::Float64
        );
        assert!(batch.column_by_name("s").unwrap().is_null(0));
        assert_eq!(
            batch
                .column_by_name("extra")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            r#"{"extra_field":true}"#
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
