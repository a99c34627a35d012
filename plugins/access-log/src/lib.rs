//! The `access-log` plugin: parses web-server access-log lines (nginx/Apache
//! *combined* and *common* formats) and JSON application-log lines into one
//! normalized JSON record each. A line it cannot parse becomes a `failed`
//! outcome whose reason says what was expected where, so the host
//! dead-letters it. Kind: `map`; takes no configuration.
//!
//! ```
//! use weir_plugin_access_log::AccessLog;
//! use weir_sdk::Harness;
//!
//! let harness = Harness::map::<AccessLog>("{}")?;
//! let line = r#"203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://x/" "curl/8.0""#;
//! assert_eq!(harness.run_one(line).text(0),
//!     r#"{"log_type":"access","timestamp":"2000-10-10T13:55:36-07:00","ip_address":"203.0.113.9","method":"GET","path":"/a.gif","protocol":"HTTP/1.0","status_code":200,"response_size":2326,"referer":"http://x/","user_agent":"curl/8.0"}"#);
//! # Ok::<(), weir_sdk::Error>(())
//! ```
//!
//! # Access logs (`log_type: "access"`)
//!
//! `host ident user [time] "request" status size ["referer" "user-agent" …]`.
//! Fields: `timestamp` (ISO-8601 with the line's own offset, e.g.
//! `2000-10-10T13:55:36-07:00`), `ip_address` (the first token as written:
//! IPv4, IPv6 or a host name), `method`, `path`, `protocol`, `status_code`,
//! `response_size`, `referer`, `user_agent`.
//!
//! - `response_size` `-` (no body sent) is `0`.
//! - `referer` / `user_agent` `-`, or absent (common log format), are `null`.
//! - Quoted fields may contain `\"` (Apache) or `\x22` (nginx) escapes; both
//!   are decoded.
//! - A request that is not `METHOD PATH [PROTOCOL]` (e.g. `"-"`, or the binary
//!   bytes of a TLS handshake sent to a plain-HTTP port) still makes a valid
//!   line: `method`, `path` and `protocol` are `null`. `protocol` is `null` for
//!   an HTTP/0.9 request (`GET /`).
//! - Anything after the user agent (custom nginx formats) is ignored.
//!
//! # Application logs (`log_type: "application"`)
//!
//! A line starting with `{` is a JSON object. Fields: `timestamp` (from
//! `timestamp`, `@timestamp`, `time` or `ts`: a string is kept as written, a
//! number is Unix time in milliseconds when at least 10^11, else seconds, and
//! becomes UTC ISO-8601), `level` (`level`, `severity`, `lvl`), `logger`
//! (`logger`, `logger_name`), `message` (`message`, `msg`), `user_id`
//! (`user_id`, `userId`), `request_id` (`request_id`, `requestId`). A missing
//! field is `null`, except `message`: a JSON object without `message` or `msg`
//! is not an application log and fails.

use weir_sdk::{Error, Event, Map, NoConfig, ObjectWriter, Plugin, RawJson, Record};

/// The plugin. Build it through the host or with [`weir_sdk::Harness::map`].
///
/// See the crate documentation for an example.
#[derive(Debug)]
pub struct AccessLog;

impl Plugin for AccessLog {
    const NAME: &'static str = "access-log";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "Parses nginx/Apache access-log lines and JSON application logs into normalized fields.";
    const CONFIG_SCHEMA: &'static str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"scenario_id":{"type":["string","integer"]},"title":{"type":"string"},"manager":{"type":"string"}},"additionalProperties":false}"#;
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, Error> {
        Ok(AccessLog)
    }
}

impl Map for AccessLog {
    fn map(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<(), Error> {
        let line = event.text()?.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Err(Error::new(
                "empty line: expected an access-log line or a JSON object",
            ));
        }
        if line.trim_start().starts_with('{') {
            application(event, out)
        } else {
            let access = parse_access(line)?;
            access.write(&mut out.object());
            Ok(())
        }
    }
}

/// One parsed access-log line; text borrows from the line unless unescaped.
#[derive(Debug, PartialEq)]
pub struct AccessLine<'a> {
    /// ISO-8601 timestamp with the line's own UTC offset.
    pub timestamp: String,
    /// First token of the line.
    pub ip_address: &'a str,
    /// Request method, when the request line has one.
    pub method: Option<String>,
    /// Request path, when the request line has one.
    pub path: Option<String>,
    /// Request protocol, when the request line has one.
    pub protocol: Option<String>,
    /// Response status.
    pub status_code: u16,
    /// Response body size (`-` is 0).
    pub response_size: u64,
    /// Referer, unless `-` or absent.
    pub referer: Option<String>,
    /// User agent, unless `-` or absent.
    pub user_agent: Option<String>,
}

impl AccessLine<'_> {
    fn write(&self, obj: &mut ObjectWriter<'_>) {
        obj.str("log_type", "access")
            .str("timestamp", &self.timestamp)
            .str("ip_address", self.ip_address);
        str_or_null(obj, "method", self.method.as_deref());
        str_or_null(obj, "path", self.path.as_deref());
        str_or_null(obj, "protocol", self.protocol.as_deref());
        obj.i64("status_code", i64::from(self.status_code))
            .i64("response_size", self.response_size as i64);
        str_or_null(obj, "referer", self.referer.as_deref());
        str_or_null(obj, "user_agent", self.user_agent.as_deref());
    }
}

fn str_or_null(obj: &mut ObjectWriter<'_>, name: &str, value: Option<&str>) {
    match value {
        Some(v) => obj.str(name, v),
        None => obj.null(name),
    };
}

/// A cursor over an access-log line that reports what it expected where.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn fail(&self, expected: &str) -> Error {
        let rest = &self.line[self.pos..];
        let shown: String = rest.chars().take(24).collect();
        let found = if rest.is_empty() {
            "end of line".to_owned()
        } else {
            format!("{shown:?}")
        };
        Error::new(format!(
            "not an access-log line: expected {expected} at column {}, found {found}",
            self.pos + 1
        ))
    }

    fn spaces(&mut self) {
        while self.line[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }

    fn at_end(&self) -> bool {
        self.line[self.pos..].trim().is_empty()
    }

    /// A non-empty run of non-space characters.
    fn token(&mut self, what: &str) -> Result<&'a str, Error> {
        self.spaces();
        let rest = &self.line[self.pos..];
        let len = rest.find(' ').unwrap_or(rest.len());
        if len == 0 {
            return Err(self.fail(what));
        }
        self.pos += len;
        Ok(&rest[..len])
    }

    /// `[...]`.
    fn bracketed(&mut self, what: &str) -> Result<&'a str, Error> {
        self.spaces();
        let rest = &self.line[self.pos..];
        let inner = rest.strip_prefix('[').ok_or_else(|| self.fail(what))?;
        let end = inner.find(']').ok_or_else(|| self.fail(what))?;
        self.pos += end + 2;
        Ok(&inner[..end])
    }

    /// `"..."` with `\"`, `\\` and `\xHH` escapes, decoded.
    fn quoted(&mut self, what: &str) -> Result<String, Error> {
        self.spaces();
        let rest = &self.line[self.pos..];
        if !rest.starts_with('"') {
            return Err(self.fail(what));
        }
        let bytes = rest.as_bytes();
        let mut out = Vec::with_capacity(64);
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    self.pos += i + 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' if i + 1 < bytes.len() => match bytes[i + 1] {
                    b'x' if i + 3 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).ok();
                        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                            Some(byte) => {
                                out.push(byte);
                                i += 4;
                            }
                            None => {
                                out.push(b'\\');
                                i += 1;
                            }
                        }
                    }
                    escaped @ (b'"' | b'\\') => {
                        out.push(escaped);
                        i += 2;
                    }
                    _ => {
                        out.push(b'\\');
                        i += 1;
                    }
                },
                byte => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        Err(self.fail(&format!("{what} with a closing quote")))
    }
}

/// Parses one access-log line (combined or common format).
///
/// ```
/// let line = weir_plugin_access_log::parse_access(
///     r#"::1 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 304 -"#)?;
/// assert_eq!(line.ip_address, "::1");
/// assert_eq!(line.response_size, 0);
/// assert_eq!(line.user_agent, None);
/// # Ok::<(), weir_sdk::Error>(())
/// ```
pub fn parse_access(line: &str) -> Result<AccessLine<'_>, Error> {
    let mut c = Cursor { line, pos: 0 };
    let ip_address = c.token("a client address")?;
    c.token("the identity field (usually -)")?;
    c.token("the user field (usually -)")?;
    let time_pos = c.pos;
    let time = c.bracketed("a [dd/Mon/yyyy:hh:mm:ss +zzzz] timestamp")?;
    let timestamp = iso_timestamp(time).ok_or_else(|| {
        c.pos = time_pos;
        c.spaces();
        c.fail("a [dd/Mon/yyyy:hh:mm:ss +zzzz] timestamp")
    })?;
    let request = c.quoted("a quoted request line")?;
    let status_text = c.token("a status code")?;
    let status_code = status_text
        .parse::<u16>()
        .ok()
        .filter(|s| (100..=999).contains(s) && status_text.len() == 3)
        .ok_or_else(|| {
            c.pos -= status_text.len();
            c.fail("a three-digit status code")
        })?;
    let size_text = c.token("a response size (digits or -)")?;
    let response_size = match size_text {
        "-" => 0,
        digits => digits.parse::<u64>().map_err(|_| {
            c.pos -= size_text.len();
            c.fail("a response size (digits or -)")
        })?,
    };
    let (referer, user_agent) = if c.at_end() {
        (None, None)
    } else {
        let referer = c.quoted("a quoted referer")?;
        let user_agent = if c.at_end() {
            None
        } else {
            Some(c.quoted("a quoted user agent")?)
        };
        (Some(referer), user_agent)
    };
    let dash_is_none = |v: Option<String>| v.filter(|s| s != "-" && !s.is_empty());

    let mut parts = request.split(' ').filter(|p| !p.is_empty());
    let (method, path, protocol) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), proto, None) if is_method(m) => (
            Some(m.to_owned()),
            Some(p.to_owned()),
            proto.map(str::to_owned),
        ),
        _ => (None, None, None),
    };
    Ok(AccessLine {
        timestamp,
        ip_address,
        method,
        path,
        protocol,
        status_code,
        response_size,
        referer: dash_is_none(referer),
        user_agent: dash_is_none(user_agent),
    })
}

/// An HTTP method token: upper-case letters (`GET`, `PROPFIND`, …).
fn is_method(token: &str) -> bool {
    !token.is_empty() && token.len() <= 16 && token.bytes().all(|b| b.is_ascii_uppercase())
}

/// `10/Oct/2000:13:55:36 -0700` → `2000-10-10T13:55:36-07:00`.
fn iso_timestamp(text: &str) -> Option<String> {
    let b = text.as_bytes();
    if b.len() != 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[20] != b' ' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == &text[3..6])? + 1;
    let ok = digits(0..2)
        && digits(7..11)
        && digits(12..14)
        && b[14] == b':'
        && digits(15..17)
        && b[17] == b':'
        && digits(18..20)
        && matches!(b[21], b'+' | b'-')
        && digits(22..26);
    if !ok {
        return None;
    }
    Some(format!(
        "{}-{month:02}-{}T{}{}:{}",
        &text[7..11],
        &text[0..2],
        &text[12..20],
        &text[21..24],
        &text[24..26]
    ))
}

/// Normalizes a JSON application-log line.
fn application(event: &Event<'_>, out: &mut Record<'_>) -> Result<(), Error> {
    let first = |names: &[&str]| -> Result<Option<RawJson<'_>>, Error> {
        for name in names {
            if let Some(raw) = event.raw(name)?
                && !raw.is_null()
            {
                return Ok(Some(raw));
            }
        }
        Ok(None)
    };
    let message = first(&["message", "msg"])?.ok_or_else(|| {
        Error::new("application log has no `message` (or `msg`) field; expected a JSON object with at least a message")
    })?;
    let mut obj = out.object();
    obj.str("log_type", "application");
    match first(&["timestamp", "@timestamp", "time", "ts"])? {
        Some(raw) if raw.get().starts_with('"') => obj.raw("timestamp", raw),
        Some(raw) => match raw.get().parse::<f64>().ok().and_then(iso_from_epoch) {
            Some(iso) => obj.str("timestamp", &iso),
            None => obj.null("timestamp"),
        },
        None => obj.null("timestamp"),
    };
    for (name, aliases) in [
        ("level", &["level", "severity", "lvl"][..]),
        ("logger", &["logger", "logger_name"][..]),
    ] {
        match first(aliases)? {
            Some(raw) => obj.raw(name, raw),
            None => obj.null(name),
        };
    }
    obj.raw("message", message);
    for (name, aliases) in [
        ("user_id", &["user_id", "userId"][..]),
        ("request_id", &["request_id", "requestId"][..]),
    ] {
        match first(aliases)? {
            Some(raw) => obj.raw(name, raw),
            None => obj.null(name),
        };
    }
    Ok(())
}

/// Unix time (ms when |t| ≥ 10^11, else s) → `YYYY-MM-DDThh:mm:ss.mmmZ`.
fn iso_from_epoch(t: f64) -> Option<String> {
    let millis = if t.abs() >= 1e11 { t } else { t * 1000.0 } as i64;
    let days = millis.div_euclid(86_400_000);
    let ms_of_day = millis.rem_euclid(86_400_000);
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
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"
    ))
}

weir_sdk::export!(AccessLog as map);
