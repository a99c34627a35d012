//! Conformance table for the scenario plugin: every operator, AND/OR, type
//! coercion, missing fields, Korean text, malformed JSON, and the canonical
//! scenario 5. Runs natively through `weir_sdk::Harness`.

use serde_json::json;
use weir_plugin_scenario::ScenarioPlugin;
use weir_sdk::{Harness, Status};

/// Builds a harness for a scenario with these filters and logical operator.
fn scenario(filters: serde_json::Value, logical: &str) -> Harness {
    let config = json!({
        "scenario_id": 5,
        "log_format": {"memberId": 1},
        "filters": filters,
        "logical_operator": logical,
    });
    Harness::scenario::<ScenarioPlugin>(&config.to_string())
        .unwrap_or_else(|e| panic!("config {config} refused: {e}"))
}

/// `(description, left, operator, right, event, expected matched)`.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    serde_json::Value,
    &'static str,
    bool,
);

fn table() -> Vec<Row> {
    vec![
        // ==
        ("== number", "age", "==", json!(20), r#"{"age":20}"#, true),
        (
            "== number, other",
            "age",
            "==",
            json!(20),
            r#"{"age":21}"#,
            false,
        ),
        (
            "== string",
            "gender",
            "==",
            json!("MALE"),
            r#"{"gender":"MALE"}"#,
            true,
        ),
        (
            "== is case-sensitive",
            "gender",
            "==",
            json!("MALE"),
            r#"{"gender":"male"}"#,
            false,
        ),
        (
            "== numeric string field vs number",
            "age",
            "==",
            json!(20),
            r#"{"age":"20"}"#,
            true,
        ),
        (
            "== number field vs numeric string",
            "age",
            "==",
            json!("20"),
            r#"{"age":20}"#,
            true,
        ),
        (
            "== int vs float",
            "age",
            "==",
            json!(20),
            r#"{"age":20.0}"#,
            true,
        ),
        (
            "== two strings compare as strings",
            "v",
            "==",
            json!("20"),
            r#"{"v":"20.0"}"#,
            false,
        ),
        (
            "== non-numeric string vs number",
            "age",
            "==",
            json!(20),
            r#"{"age":"twenty"}"#,
            false,
        ),
        ("== bool", "vip", "==", json!(true), r#"{"vip":true}"#, true),
        (
            "== bool is not the string",
            "vip",
            "==",
            json!(true),
            r#"{"vip":"true"}"#,
            false,
        ),
        ("== null", "x", "==", json!(null), r#"{"x":null}"#, true),
        (
            "== array",
            "tags",
            "==",
            json!(["a", "b"]),
            r#"{"tags":["a", "b"]}"#,
            true,
        ),
        (
            "== escaped string",
            "q",
            "==",
            json!("a\"b"),
            r#"{"q":"a\"b"}"#,
            true,
        ),
        ("== missing field", "age", "==", json!(20), r#"{}"#, false),
        // !=
        (
            "!= differs",
            "gender",
            "!=",
            json!("MALE"),
            r#"{"gender":"FEMALE"}"#,
            true,
        ),
        (
            "!= equal",
            "gender",
            "!=",
            json!("MALE"),
            r#"{"gender":"MALE"}"#,
            false,
        ),
        (
            "!= coerced equal",
            "age",
            "!=",
            json!(20),
            r#"{"age":"20"}"#,
            false,
        ),
        (
            "!= missing field is false",
            "gender",
            "!=",
            json!("MALE"),
            r#"{}"#,
            false,
        ),
        (
            "!= null field differs",
            "gender",
            "!=",
            json!("MALE"),
            r#"{"gender":null}"#,
            true,
        ),
        // ==i
        (
            "==i ascii",
            "gender",
            "==i",
            json!("male"),
            r#"{"gender":"MALE"}"#,
            true,
        ),
        (
            "==i unicode",
            "city",
            "==i",
            json!("straße"),
            r#"{"city":"STRAßE"}"#,
            true,
        ),
        (
            "==i differs",
            "gender",
            "==i",
            json!("male"),
            r#"{"gender":"FEMALE"}"#,
            false,
        ),
        (
            "==i number field",
            "gender",
            "==i",
            json!("1"),
            r#"{"gender":1}"#,
            false,
        ),
        // ordering
        (">", "age", ">", json!(20), r#"{"age":21}"#, true),
        ("> equal", "age", ">", json!(20), r#"{"age":20}"#, false),
        (">=", "h", ">=", json!(9), r#"{"h":9}"#, true),
        ("<", "h", "<", json!(9), r#"{"h":8.5}"#, true),
        ("<= ", "h", "<=", json!(9), r#"{"h":10}"#, false),
        (
            "> numeric strings compare as numbers",
            "age",
            ">",
            json!("9"),
            r#"{"age":"10"}"#,
            true,
        ),
        (
            "> string field vs number",
            "age",
            ">",
            json!(20),
            r#"{"age":"31"}"#,
            true,
        ),
        (
            "> strings lexicographic",
            "day",
            ">",
            json!("2024-01-31"),
            r#"{"day":"2024-02-01"}"#,
            true,
        ),
        (
            "> non-numeric string vs number",
            "age",
            ">",
            json!(20),
            r#"{"age":"old"}"#,
            false,
        ),
        (
            "> bool is not ordered",
            "vip",
            ">",
            json!(0),
            r#"{"vip":true}"#,
            false,
        ),
        ("> missing", "age", ">", json!(20), r#"{}"#, false),
        ("< negative", "t", "<", json!(0), r#"{"t":-1e3}"#, true),
        (
            "> large ints exact",
            "id",
            ">",
            json!(9007199254740992_i64),
            r#"{"id":9007199254740993}"#,
            true,
        ),
        // contains
        (
            "contains substring",
            "url",
            "contains",
            json!("/buy"),
            r#"{"url":"/shop/buy?id=1"}"#,
            true,
        ),
        (
            "contains no",
            "url",
            "contains",
            json!("/buy"),
            r#"{"url":"/shop"}"#,
            false,
        ),
        (
            "contains korean",
            "e_n",
            "contains",
            json!("구"),
            r#"{"e_n":"구매"}"#,
            true,
        ),
        (
            "contains array element",
            "tags",
            "contains",
            json!("b"),
            r#"{"tags":["a","b"]}"#,
            true,
        ),
        (
            "contains array number coerced",
            "ids",
            "contains",
            json!("2"),
            r#"{"ids":[1,2]}"#,
            true,
        ),
        (
            "contains missing",
            "url",
            "contains",
            json!("/"),
            r#"{}"#,
            false,
        ),
        // in / not_in
        (
            "in",
            "gender",
            "in",
            json!(["MALE", "OTHER"]),
            r#"{"gender":"MALE"}"#,
            true,
        ),
        (
            "in no",
            "gender",
            "in",
            json!(["MALE"]),
            r#"{"gender":"FEMALE"}"#,
            false,
        ),
        (
            "in coerced number",
            "h",
            "in",
            json!(["9", 10]),
            r#"{"h":9}"#,
            true,
        ),
        (
            "in missing",
            "gender",
            "in",
            json!(["MALE"]),
            r#"{}"#,
            false,
        ),
        (
            "not_in",
            "gender",
            "not_in",
            json!(["MALE"]),
            r#"{"gender":"FEMALE"}"#,
            true,
        ),
        (
            "not_in listed",
            "gender",
            "not_in",
            json!(["MALE"]),
            r#"{"gender":"MALE"}"#,
            false,
        ),
        (
            "not_in missing is false",
            "gender",
            "not_in",
            json!(["MALE"]),
            r#"{}"#,
            false,
        ),
        // exists
        (
            "exists",
            "memberId",
            "exists",
            json!(true),
            r#"{"memberId":1}"#,
            true,
        ),
        (
            "exists null counts",
            "memberId",
            "exists",
            json!(true),
            r#"{"memberId":null}"#,
            true,
        ),
        (
            "exists missing",
            "memberId",
            "exists",
            json!(true),
            r#"{}"#,
            false,
        ),
        (
            "exists false, missing",
            "memberId",
            "exists",
            json!(false),
            r#"{}"#,
            true,
        ),
        (
            "exists false, present",
            "memberId",
            "exists",
            json!(false),
            r#"{"memberId":1}"#,
            false,
        ),
        // regex
        (
            "regex",
            "url",
            "regex",
            json!("^/shop/[a-z]+$"),
            r#"{"url":"/shop/buy"}"#,
            true,
        ),
        (
            "regex no",
            "url",
            "regex",
            json!("^/shop/[a-z]+$"),
            r#"{"url":"/shop/42"}"#,
            false,
        ),
        (
            "regex unicode class",
            "e_n",
            "regex",
            json!(r"^\p{Hangul}+$"),
            r#"{"e_n":"구매"}"#,
            true,
        ),
        (
            "regex on number text",
            "age",
            "regex",
            json!("^3[0-9]$"),
            r#"{"age":31}"#,
            true,
        ),
        (
            "regex on bool",
            "vip",
            "regex",
            json!("true"),
            r#"{"vip":true}"#,
            false,
        ),
        ("regex missing", "url", "regex", json!("."), r#"{}"#, false),
        // Korean text
        (
            "== korean",
            "e_n",
            "==",
            json!("구매"),
            r#"{"e_n":"구매"}"#,
            true,
        ),
        (
            "== korean escaped",
            "e_n",
            "==",
            json!("구매"),
            r#"{"e_n":"\uad6c\ub9e4"}"#,
            true,
        ),
        (
            "== korean other",
            "e_n",
            "==",
            json!("구매"),
            r#"{"e_n":"조회"}"#,
            false,
        ),
    ]
}

#[test]
fn every_row_of_the_operator_table() {
    let mut failures = Vec::new();
    for (what, left, operator, right, event, expected) in table() {
        let harness = scenario(
            json!([{"left": left, "operator": operator, "right": right}]),
            "AND",
        );
        let result = harness.run_one(event);
        if result.status != Status::Emitted || result.matched != expected {
            failures.push(format!(
                "{what}: {left} {operator} {right} on {event}: {result:?}"
            ));
        }
        let output = result.json(0);
        assert_eq!(output["success"], json!(expected as i64), "{what}");
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn and_or() {
    let filters = json!([
        {"left": "a", "operator": "==", "right": 1},
        {"left": "b", "operator": "==", "right": 1},
    ]);
    let events = "{\"a\":1,\"b\":1}\n{\"a\":1,\"b\":0}\n{\"a\":0,\"b\":0}\n{}";
    let matched = |logical: &str| -> Vec<bool> {
        scenario(filters.clone(), logical)
            .run_lines(events)
            .iter()
            .map(|r| r.matched)
            .collect()
    };
    assert_eq!(matched("AND"), [true, false, false, false]);
    assert_eq!(matched("and"), [true, false, false, false]);
    assert_eq!(matched("OR"), [true, true, false, false]);
    assert_eq!(matched("Or"), [true, true, false, false]);
}

#[test]
fn no_filters_matches_everything_and_logical_operator_defaults_to_and() {
    let harness = Harness::scenario::<ScenarioPlugin>(r#"{"scenario_id":1}"#).unwrap();
    assert!(harness.run_one("{}").matched);
    let harness = Harness::scenario::<ScenarioPlugin>(
        r#"{"filters":[{"left":"a","operator":"==","right":1},{"left":"b","operator":"==","right":1}]}"#,
    )
    .unwrap();
    assert!(!harness.run_one(r#"{"a":1}"#).matched);
}

const SCENARIO_5: &str = r#"{"scenario_id":5,"title":"adult male users who clicked buy after 9","manager":"kim",
    "log_format":{"memberId":1,"age":1,"gender":1,"h":1,"e_n":1,"url":0},
    "filters":[{"left":"age","operator":">","right":20},{"left":"gender","operator":"==","right":"MALE"},
               {"left":"h","operator":">=","right":9}],
    "logical_operator":"AND",
    "plugin":"scenario","source":"clicks","output_topic":"scenario-5","enrich":["age","gender"],"enabled":true}"#;

#[test]
fn canonical_scenario_5() {
    let harness = Harness::scenario::<ScenarioPlugin>(SCENARIO_5).unwrap();
    let events = [
        (
            r#"{"memberId":1,"age":31,"gender":"MALE","h":10,"e_n":"구매","url":"/buy"}"#,
            true,
        ),
        (
            r#"{"memberId":2,"age":20,"gender":"MALE","h":10,"e_n":"구매","url":"/buy"}"#,
            false,
        ),
        (
            r#"{"memberId":3,"age":31,"gender":"FEMALE","h":10,"e_n":"구매","url":"/buy"}"#,
            false,
        ),
        (
            r#"{"memberId":4,"age":31,"gender":"MALE","h":8,"e_n":"구매","url":"/buy"}"#,
            false,
        ),
        (
            r#"{"memberId":5,"age":"45","gender":"MALE","h":"9","e_n":"구매"}"#,
            true,
        ),
        (r#"{"memberId":6,"gender":"MALE","h":23}"#, false),
    ];
    let lines: Vec<&str> = events.iter().map(|(e, _)| *e).collect();
    let results = harness.run_lines(&lines.join("\n"));
    for ((event, expected), result) in events.iter().zip(&results) {
        assert_eq!(result.status, Status::Emitted, "{event}");
        assert_eq!(result.matched, *expected, "{event}");
        assert_eq!(
            result.records.len(),
            1,
            "every event yields exactly one record"
        );
    }
    assert_eq!(
        results[0].text(0),
        r#"{"memberId":1,"age":31,"gender":"MALE","h":10,"e_n":"구매","success":1,"scenario_id":5,"date":null}"#
    );
    // A kept field missing from the event is written as null; url (0) never is.
    assert_eq!(
        results[5].text(0),
        r#"{"memberId":6,"age":null,"gender":"MALE","h":23,"e_n":null,"success":0,"scenario_id":5,"date":null}"#
    );
}

#[test]
fn korean_text_round_trips_byte_exact() {
    let harness = Harness::scenario::<ScenarioPlugin>(SCENARIO_5).unwrap();
    // Raw UTF-8 and \u escapes are both copied exactly as they came in.
    let event = r#"{"memberId":1,"age":31,"gender":"MALE","h":10,"e_n":"구매 \uad6c\ub9e4 🛒"}"#;
    let result = harness.run_one(event);
    let out = result.text(0);
    assert!(out.contains(r#""e_n":"구매 \uad6c\ub9e4 🛒""#), "{out}");
    assert_eq!(result.json(0)["e_n"], "구매 구매 🛒");
}

#[test]
fn malformed_json_fails_with_a_precise_reason() {
    let harness = Harness::scenario::<ScenarioPlugin>(SCENARIO_5).unwrap();
    let cases = [
        (
            r#"{"age":31,"#,
            "value is not valid JSON: EOF while parsing a value at line 1 column 10",
        ),
        (
            r#"{"age":31 "h":1}"#,
            "value is not valid JSON: expected `,` or `}` at line 1 column 11",
        ),
        (
            "[1,2]",
            "value is not a JSON object: invalid type: sequence, expected a JSON object at line 1 column 0",
        ),
        (
            "구매",
            "value is not valid JSON: expected value at line 1 column 1",
        ),
        (
            "",
            "value is not valid JSON: EOF while parsing a value at line 1 column 0",
        ),
    ];
    for (event, reason) in cases {
        let result = harness.run_one(event);
        assert_eq!(result.status, Status::Failed, "{event}");
        assert!(result.records.is_empty());
        assert_eq!(result.error.as_deref(), Some(reason), "{event}");
    }
}

#[test]
fn date_sources_in_order() {
    let harness =
        Harness::scenario::<ScenarioPlugin>(r#"{"scenario_id":"s","log_format":{}}"#).unwrap();
    let date = |event: &str, ts: Option<i64>| -> serde_json::Value {
        let mut batch = weir_sdk::Batch::new("s");
        let pushed = batch.push(event.as_bytes());
        if let Some(ts) = ts {
            pushed.timestamp_ms(ts);
        }
        harness.run(&batch)[0].json(0)["date"].clone()
    };
    assert_eq!(
        date(r#"{"timestamp":"2024-05-01T23:59:59+09:00"}"#, Some(0)),
        "2024-05-01"
    );
    assert_eq!(date(r#"{"timestamp":"2024-05-01"}"#, None), "2024-05-01");
    assert_eq!(date(r#"{"timestamp":1714557600000}"#, None), "2024-05-01");
    assert_eq!(date(r#"{"timestamp":1714557600}"#, None), "2024-05-01");
    assert_eq!(date(r#"{"timestamp":"1714557600"}"#, None), "2024-05-01");
    assert_eq!(date(r#"{"ts":1714557600}"#, None), "2024-05-01");
    assert_eq!(
        date(r#"{"timestamp":"yesterday","ts":0}"#, None),
        "1970-01-01"
    );
    assert_eq!(date(r#"{}"#, Some(1_714_557_600_000)), "2024-05-01");
    assert_eq!(date(r#"{}"#, None), serde_json::Value::Null);
}

#[test]
fn output_fields_and_scenario_id() {
    // Without log_format every field is kept, in event order; the plugin's own
    // fields win over same-named event fields.
    let harness = Harness::scenario::<ScenarioPlugin>(r#"{"scenario_id":"promo-7"}"#).unwrap();
    let result = harness.run_one(r#"{"b":[1,{"c":2}],"success":"x","a":"y"}"#);
    assert_eq!(
        result.text(0),
        r#"{"b":[1,{"c":2}],"a":"y","success":1,"scenario_id":"promo-7","date":null}"#
    );
    // Without scenario_id the batch's id is used, as a string.
    let harness = Harness::scenario::<ScenarioPlugin>("{}")
        .unwrap()
        .with_scenario_id("9");
    assert_eq!(
        harness.run_one("{}").text(0),
        r#"{"success":1,"scenario_id":"9","date":null}"#
    );
}

#[test]
fn bad_configs_name_the_field_and_what_is_accepted() {
    let refused = |config: &str| {
        Harness::scenario::<ScenarioPlugin>(config)
            .unwrap_err()
            .into_message()
    };
    assert_eq!(
        refused(
            r#"{"filters":[{"left":"a","operator":"==","right":1},{"left":"a","operator":"=~","right":1}]}"#
        ),
        "config field `filters[1].operator`: unknown operator \"=~\"; accepted: ==, !=, ==i, >, >=, <, <=, contains, in, not_in, exists, regex"
    );
    assert_eq!(
        refused(r#"{"filters":[{"left":"a","operator":"in","right":"x"}]}"#),
        "config field `filters[0].right`: operator `in` needs an array, e.g. [\"a\", \"b\"], found \"x\""
    );
    assert_eq!(
        refused(r#"{"filters":[{"left":"a","operator":">"}]}"#),
        "config field `filters[0].right`: missing; operator `>` needs a value"
    );
    assert!(
        refused(r#"{"filters":[{"left":"a","operator":"regex","right":"("}]}"#)
            .starts_with("config field `filters[0].right`: invalid regular expression: ")
    );
    assert_eq!(
        refused(r#"{"logical_operator":"XOR"}"#),
        "config field `logical_operator`: expected \"AND\" or \"OR\", found \"XOR\""
    );
    assert!(
        refused(r#"{"log_format":{"a":2}}"#)
            .contains("log_format field \"a\": expected 1 (keep) or 0 (drop), found 2")
    );
    assert!(
        refused(r#"{"filters":[{"operator":"=="}]}"#)
            .starts_with("config field `filters[0]`: missing field `left`")
    );
    assert_eq!(
        refused(r#"{"scenario_id":[5]}"#),
        "config field `scenario_id`: expected a number or a string, found [5]"
    );
}

#[test]
fn config_schema_is_valid_json() {
    use weir_sdk::Plugin;
    let schema: serde_json::Value = serde_json::from_str(ScenarioPlugin::CONFIG_SCHEMA).unwrap();
    assert_eq!(schema["type"], "object");
}
