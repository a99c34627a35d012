//! The access-log plugin against common formats and hard lines.

use serde_json::{Value, json};
use weir_plugin_access_log::AccessLog;
use weir_sdk::{Harness, Status};

fn parse(line: &str) -> Value {
    let result = Harness::map::<AccessLog>("{}").unwrap().run_one(line);
    assert_eq!(result.status, Status::Emitted, "{line}: {result:?}");
    assert!(result.matched);
    result.json(0)
}

fn refuse(line: &str) -> String {
    let result = Harness::map::<AccessLog>("{}").unwrap().run_one(line);
    assert_eq!(result.status, Status::Failed, "{line}: {result:?}");
    assert!(result.records.is_empty());
    result.error.unwrap()
}

#[test]
fn combined_log_format() {
    let v = parse(
        r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#,
    );
    assert_eq!(
        v,
        json!({"log_type": "access", "timestamp": "2000-10-10T13:55:36-07:00", "ip_address": "127.0.0.1",
               "method": "GET", "path": "/apache_pb.gif", "protocol": "HTTP/1.0", "status_code": 200,
               "response_size": 2326, "referer": "http://www.example.com/start.html",
               "user_agent": "Mozilla/4.08 [en] (Win98; I ;Nav)"})
    );
}

#[test]
fn common_log_format_without_referer_and_agent() {
    let v =
        parse(r#"192.168.0.7 - - [01/Feb/2024:09:00:01 +0900] "POST /api/buy HTTP/2.0" 201 17"#);
    assert_eq!(v["timestamp"], "2024-02-01T09:00:01+09:00");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["referer"], Value::Null);
    assert_eq!(v["user_agent"], Value::Null);
}

#[test]
fn escaped_quotes_in_user_agent_apache_and_nginx_styles() {
    let v = parse(
        r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 5 "-" "Mozilla/5.0 \"quoted\" and \\ backslash""#,
    );
    assert_eq!(v["user_agent"], r#"Mozilla/5.0 "quoted" and \ backslash"#);
    assert_eq!(v["referer"], Value::Null);
    let v = parse(
        r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 5 "-" "bot \x22x\x22""#,
    );
    assert_eq!(v["user_agent"], r#"bot "x""#);
}

#[test]
fn ipv6_addresses() {
    let v = parse(
        r#"2001:db8::ff00:42:8329 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 5 "-" "-""#,
    );
    assert_eq!(v["ip_address"], "2001:db8::ff00:42:8329");
    let v = parse(r#"::1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 5"#);
    assert_eq!(v["ip_address"], "::1");
}

#[test]
fn dash_size_is_zero() {
    let v =
        parse(r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "HEAD / HTTP/1.1" 304 - "-" "curl/8""#);
    assert_eq!(v["response_size"], 0);
    assert_eq!(v["status_code"], 304);
}

#[test]
fn odd_request_lines_are_still_access_lines() {
    let v = parse(
        r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "\x16\x03\x01\x00\xCA\x01" 400 157 "-" "-""#,
    );
    assert_eq!(
        (v["method"].clone(), v["path"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(v["status_code"], 400);
    let v = parse(r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "-" 408 0"#);
    assert_eq!(v["method"], Value::Null);
    let v = parse(r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /old" 200 1"#);
    assert_eq!(
        (v["path"].as_str(), v["protocol"].clone()),
        (Some("/old"), Value::Null)
    );
}

#[test]
fn trailing_custom_fields_and_crlf_are_ignored() {
    let v = parse(
        "10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"ua\" 0.004 \"-\"\r\n",
    );
    assert_eq!(v["user_agent"], "ua");
}

#[test]
fn korean_path_and_agent_round_trip() {
    let v = parse(
        r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /검색?q=구매 HTTP/1.1" 200 5 "-" "앱/1.0""#,
    );
    assert_eq!(v["path"], "/검색?q=구매");
    assert_eq!(v["user_agent"], "앱/1.0");
}

#[test]
fn garbage_and_broken_lines_fail_with_what_was_expected_where() {
    assert_eq!(
        refuse("hello world"),
        "not an access-log line: expected the user field (usually -) at column 12, found end of line"
    );
    assert_eq!(
        refuse(""),
        "empty line: expected an access-log line or a JSON object"
    );
    assert_eq!(
        refuse("   \r\n"),
        "empty line: expected an access-log line or a JSON object"
    );
    assert_eq!(
        refuse(r#"10.0.0.1 - - [10/Oct/2000 13:55:36] "GET / HTTP/1.1" 200 5"#),
        "not an access-log line: expected a [dd/Mon/yyyy:hh:mm:ss +zzzz] timestamp at column 14, found \"[10/Oct/2000 13:55:36] \\\"\""
    );
    assert_eq!(
        refuse(r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" OK 5"#),
        "not an access-log line: expected a three-digit status code at column 60, found \"OK 5\""
    );
    assert_eq!(
        refuse(r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 lots"#),
        "not an access-log line: expected a response size (digits or -) at column 64, found \"lots\""
    );
    assert!(
        refuse(r#"10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1 200 5"#)
            .contains("expected a quoted request line with a closing quote")
    );
    assert!(
        refuse(r#"10.0.0.1 - - [10/Foo/2000:13:55:36 +0000] "GET /" 200 5"#).contains("timestamp")
    );
    let result = Harness::map::<AccessLog>("{}").unwrap().run(&{
        let mut batch = weir_sdk::Batch::new("t");
        batch.push(&[0xff, 0xfe]);
        batch
    });
    assert!(
        result[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("value is not UTF-8 text")
    );
}

#[test]
fn application_logs() {
    let v = parse(
        r#"{"timestamp":"2024-05-01T10:00:00.123Z","level":"INFO","logger":"shop.cart","message":"구매 완료","user_id":42,"request_id":"r-1","extra":1}"#,
    );
    assert_eq!(
        v,
        json!({"log_type": "application", "timestamp": "2024-05-01T10:00:00.123Z", "level": "INFO",
               "logger": "shop.cart", "message": "구매 완료", "user_id": 42, "request_id": "r-1"})
    );
    // Aliases and epoch timestamps.
    let v = parse(r#"{"ts":1714557600,"severity":"WARN","msg":"slow","userId":"u7"}"#);
    assert_eq!(v["timestamp"], "2024-05-01T10:00:00.000Z");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["user_id"], "u7");
    let v = parse(r#"{"@timestamp":1714557600123,"msg":"x"}"#);
    assert_eq!(v["timestamp"], "2024-05-01T10:00:00.123Z");
}

#[test]
fn application_logs_with_missing_fields() {
    let v = parse(r#"{"message":"only a message"}"#);
    assert_eq!(
        v,
        json!({"log_type": "application", "timestamp": null, "level": null, "logger": null,
               "message": "only a message", "user_id": null, "request_id": null})
    );
    assert_eq!(
        refuse(r#"{"level":"INFO"}"#),
        "application log has no `message` (or `msg`) field; expected a JSON object with at least a message"
    );
    assert_eq!(
        refuse(r#"{"message":"x""#),
        "value is not valid JSON: EOF while parsing an object at line 1 column 14"
    );
}

#[test]
fn a_batch_of_mixed_lines_fails_only_the_bad_ones() {
    let harness = Harness::map::<AccessLog>("{}").unwrap();
    let results = harness.run(&weir_sdk::Batch::from_lines(
        "t",
        "10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200 5\n\
         garbage\n\
         {\"message\":\"ok\"}\n",
    ));
    let statuses: Vec<Status> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Status::Emitted, Status::Failed, Status::Emitted]);
}
