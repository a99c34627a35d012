//! `weir plugin test` run as a process, the way people use it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn weir_plugin_test(plugin: &str, config: &str, stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "plugin",
            "test",
            plugin,
            "--config",
            config,
            "--batch-size",
            "4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("weir runs")
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

#[test]
fn prints_one_line_per_event_then_a_summary() {
    let input = "{\"a\":1}\n\n{\"trap\":true}\nnot json\r\n{\"b\":[2]}\n{\"c\":3}";
    let output = weir_plugin_test(weir_artifacts::FIXTURE_TRAP_AT, "{}", input);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = lines(&output);
    assert_eq!(lines.len(), 6, "{lines:?}");

    assert_eq!(lines[0]["offset"], 0);
    assert_eq!(lines[0]["status"], "emitted");
    assert_eq!(lines[0]["matched"], true);
    assert_eq!(
        lines[0]["records"][0]["a"], 1,
        "valid JSON records are printed as JSON"
    );
    assert_eq!(lines[1]["status"], "failed");
    assert!(
        lines[1]["error"].as_str().unwrap().starts_with("trap: "),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2]["records"][0], "not json",
        "other records as strings"
    );
    assert_eq!(lines[3]["records"][0]["b"][0], 2);
    assert_eq!(lines[4]["offset"], 4);

    let summary = &lines[5]["summary"];
    assert_eq!(summary["events"], 5);
    assert_eq!(summary["emitted"], 4);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["dropped"], 0);
    assert_eq!(summary["plugin"], "trap-at");
    assert!(summary["events_per_s"].is_number());
}

#[test]
fn reads_the_config_from_a_file() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("weir-cli-huge-output.json");
    std::fs::write(&path, r#"{"bytes": 3}"#).unwrap();
    let config = format!("@{}", path.display());
    let output = weir_plugin_test(weir_artifacts::FIXTURE_HUGE_OUTPUT, &config, "{}\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(lines(&output)[0]["records"][0], "xxx");
}

#[test]
fn fails_when_the_plugin_cannot_load() {
    let output = weir_plugin_test(weir_artifacts::FIXTURE_CORE_MODULE, "{}", "{}\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a component"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn fails_when_the_config_is_refused() {
    let output = weir_plugin_test(weir_artifacts::FIXTURE_TRAP_AT, "[1,2]", "{}\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("trap-at@0.1.0: configuration does not match the plugin's schema"),
        "{stderr}"
    );

    let bad_regex = r#"{"filters":[{"left":"e_n","operator":"regex","right":"("}]}"#;
    let output = weir_plugin_test(weir_artifacts::PLUGIN_SCENARIO, bad_regex, "{}\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("configuration refused"), "{stderr}");

    let output = weir_plugin_test(weir_artifacts::FIXTURE_TRAP_AT, "{oops", "{}\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("configuration is not valid JSON"),
        "{stderr}"
    );
}

/// `--expect`: the saved output of a run is the golden file; the same run
/// matches it, a changed answer is shown as `-`/`+` and exits with 1.
#[test]
fn expect_compares_answers_with_a_golden_file() {
    let input = "{\"a\":1}\n{\"trap\":true}\n{\"c\":3}\n";
    let first = weir_plugin_test(weir_artifacts::FIXTURE_TRAP_AT, "{}", input);
    assert!(first.status.success());
    let dir = std::env::temp_dir().join(format!("weir-expect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let golden = dir.join("golden.jsonl");
    std::fs::write(&golden, &first.stdout).unwrap();
    let run = |golden: &std::path::Path| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "plugin",
                "test",
                weir_artifacts::FIXTURE_TRAP_AT,
                "--config",
                "{}",
            ])
            .arg("--expect")
            .arg(golden)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let same = run(&golden);
    let text = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success(), "{text}");
    assert!(text.contains("all 3 answers match"), "{text}");

    // The golden file says the third event was dropped.
    let changed: String = String::from_utf8_lossy(&first.stdout)
        .lines()
        .map(|l| {
            if l.starts_with("{") && l.contains("\"offset\":2") {
                l.replace("\"status\":\"emitted\"", "\"status\":\"dropped\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&golden, changed).unwrap();
    let differs = run(&golden);
    let text = String::from_utf8_lossy(&differs.stdout);
    assert_eq!(differs.status.code(), Some(1), "{text}");
    assert!(text.contains("@@ event 2 @@"), "{text}");
    assert!(
        text.contains("- {") && text.contains("\"status\":\"dropped\""),
        "{text}"
    );
    assert!(
        text.contains("+ {") && text.contains("\"status\":\"emitted\""),
        "{text}"
    );
    assert!(text.contains("1 of 3 answers differ"), "{text}");
}

/// `weir plugin diff`: the shipped scenario plugin under scenario 5 as it is
/// and with its hour filter moved from 9 to 12 reports exactly the events
/// whose match changed, and exits with 1; the same configuration twice
/// reports none and exits with 0.
#[test]
fn diff_reports_exactly_the_events_a_changed_scenario_decides_otherwise() {
    let scenario = |hour: u32| {
        serde_json::json!({
            "scenario_id": 5,
            "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1},
            "filters": [
                {"left": "age", "operator": ">", "right": 20},
                {"left": "gender", "operator": "==", "right": "MALE"},
                {"left": "h", "operator": ">=", "right": hour}
            ],
            "logical_operator": "AND"
        })
        .to_string()
    };
    let matches = |age: u32, male: bool, h: u32, hour: u32| age > 20 && male && h >= hour;
    let mut input = String::new();
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..300u32 {
        let (age, male, h) = (14 + (i * 7) % 50, i % 3 != 0, (i * 5) % 24);
        input.push_str(&format!(
            "{{\"memberId\":\"m{i}\",\"age\":{age},\"gender\":\"{}\",\"h\":{h}}}\n",
            if male { "MALE" } else { "FEMALE" }
        ));
        if matches(age, male, h, 9) != matches(age, male, h, 12) {
            expected.insert(u64::from(i));
        }
    }
    assert!(
        !expected.is_empty(),
        "the input has events the change decides otherwise"
    );
    let dir = std::env::temp_dir().join(format!("weir-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events.jsonl");
    std::fs::write(&events, &input).unwrap();
    let run = |new_config: &str| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "plugin",
                "diff",
                weir_artifacts::PLUGIN_SCENARIO,
                weir_artifacts::PLUGIN_SCENARIO,
            ])
            .args([
                "--config",
                &scenario(9),
                "--new-config",
                new_config,
                "--batch-size",
                "64",
            ])
            .arg("--input")
            .arg(&events)
            .output()
            .expect("weir runs")
    };

    let changed = run(&scenario(12));
    let text = String::from_utf8_lossy(&changed.stdout);
    assert_eq!(
        changed.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let reported: std::collections::BTreeSet<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("@@ input partition 0 offset "))
        .map(|rest| rest.trim_end_matches(" @@").parse().unwrap())
        .collect();
    assert_eq!(reported, expected, "{text}");
    let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(summary["diff"]["events"], 300, "{summary}");
    assert_eq!(summary["diff"]["changed"], expected.len(), "{summary}");
    assert_eq!(
        summary["diff"]["outcomes_changed"],
        expected.len(),
        "{summary}"
    );
    for side in ["old", "new"] {
        assert_eq!(summary["diff"][side]["plugin"], "scenario", "{summary}");
        assert!(
            summary["diff"][side]["ns_per_event"].as_f64().unwrap() > 0.0,
            "{summary}"
        );
    }
    let (old, new) = (
        &summary["diff"]["old"]["matched"],
        &summary["diff"]["new"]["matched"],
    );
    assert_eq!(
        old.as_u64().unwrap() - new.as_u64().unwrap(),
        expected.len() as u64,
        "a later hour only takes matches away: {summary}"
    );
    // Each changed event shows both answers.
    let first = expected.first().unwrap();
    let at = text
        .lines()
        .position(|l| l == format!("@@ input partition 0 offset {first} @@"))
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[at + 1].starts_with("- {") && lines[at + 1].contains("\"matched\":true"),
        "{text}"
    );
    assert!(
        lines[at + 2].starts_with("+ {") && lines[at + 2].contains("\"matched\":false"),
        "{text}"
    );

    let same = run(&scenario(9));
    let text = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success(), "{text}");
    assert!(!text.contains("@@"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `weir capture`'s envelopes as `plugin test` input: each event keeps its
/// topic, partition and offset, and batches do not mix partitions.
#[test]
fn captured_envelopes_keep_where_each_event_was() {
    let input = concat!(
        "{\"capture\":{\"topic\":\"t\",\"partition\":1,\"offset\":40},\"value\":{\"a\":1}}\n",
        "{\"capture\":{\"topic\":\"t\",\"partition\":1,\"offset\":41},\"text\":\"a log line\"}\n",
        "{\"capture\":{\"topic\":\"t\",\"partition\":0,\"offset\":7,\"headers\":{\"weir.reason\":\"x\"}},\"value\":{\"b\":2}}\n",
        "{\"plain\":true}\n",
    );
    let output = weir_plugin_test(weir_artifacts::FIXTURE_TRAP_AT, "{}", input);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = lines(&output);
    let offsets: Vec<i64> = lines[..4]
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [40, 41, 7, 0], "{lines:?}");
    assert_eq!(lines[0]["records"][0]["a"], 1, "{lines:?}");
    assert_eq!(
        lines[1]["records"][0], "a log line",
        "text values reach the plugin as they were"
    );
    assert_eq!(lines[4]["summary"]["events"], 4);

    let broken = weir_plugin_test(
        weir_artifacts::FIXTURE_TRAP_AT,
        "{}",
        "{\"capture\":{\"topic\":\"t\"},\"value\":1}\n",
    );
    assert!(!broken.status.success());
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("input line 1"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
}
