//! A fast splitter of a JSON object into its top-level fields.
//!
//! [`split_object`] checks the whole text against the JSON grammar and returns
//! each top-level field as `(name, value text)` without building any value. It
//! is deliberately conservative: whatever it is not sure to read exactly as
//! serde_json does (escapes in names, `\u` escapes, control characters, deep
//! nesting, any error) makes it answer `None`, and the caller parses the text
//! with serde_json instead, which then also words the error. So it may refuse
//! valid JSON, but never accepts what serde_json refuses, and never splits
//! differently (the differential tests below hold it to that).
//!
//! Why not serde_json alone: in a WebAssembly guest its per-byte loops run on
//! 32-bit words, and the runtime's CPU deadline adds a check to every loop
//! iteration and function entry. Strings here are scanned 8 bytes at a time.

/// How deep arrays and objects may nest inside a field before the splitter
/// hands the text to serde_json (whose own limit is 128).
const MAX_DEPTH: usize = 100;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Fills `fields` with the top-level fields of `text` in document order and
/// answers `true`, or answers `false` when the text must be read by
/// serde_json (see the module documentation); `fields` is then to be
/// discarded. The caller's vector is reused, so splitting needs no allocation
/// once it has grown to the size of an event.
///
/// The scanning functions take the text and a position and return the
/// position after what they read: the position stays in a register, where a
/// scanner struct shared with the (recursive, not inlined) value reader would
/// live in the guest's linear memory and be stored at every step.
pub(crate) fn split_object<'a>(text: &'a str, fields: &mut Vec<(&'a str, &'a str)>) -> bool {
    fields.clear();
    split_into(text, fields).is_some()
}

fn split_into<'a>(text: &'a str, fields: &mut Vec<(&'a str, &'a str)>) -> Option<()> {
    let b = text.as_bytes();
    let mut at = expect(b, whitespace(b, 0), b'{')?;
    at = whitespace(b, at);
    if b.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            at = expect(b, at, b'"')?;
            let (end, after, escaped) = string(b, at)?;
            if escaped {
                return None;
            }
            // Names and values start and end at ASCII bytes (quotes,
            // brackets, digits, letters), so these are char boundaries.
            let name = text.get(at..end)?;
            at = expect(b, whitespace(b, after), b':')?;
            at = whitespace(b, at);
            // Strings and numbers inline: in the guest a call per field
            // costs more than reading a short value.
            let value_end = match b.get(at) {
                Some(b'"') => string(b, at + 1)?.1,
                Some(b'0'..=b'9') => number(b, at)?,
                _ => found(value(b, at, 0))?,
            };
            fields.push((name, text.get(at..value_end)?));
            at = whitespace(b, value_end);
            match *b.get(at)? {
                b',' => at = whitespace(b, at + 1),
                b'}' => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (whitespace(b, at) == b.len()).then_some(())
}

/// The position after `byte`, which must be at `at`.
#[inline(always)]
fn expect(b: &[u8], at: usize, byte: u8) -> Option<usize> {
    (b.get(at) == Some(&byte)).then_some(at + 1)
}

/// The first position at or after `at` that is not JSON whitespace.
#[inline(always)]
fn whitespace(b: &[u8], mut at: usize) -> usize {
    // Compact JSON has none: test once before looping.
    if let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(at) {
        at += 1;
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(at) {
            at += 1;
        }
    }
    at
}

/// What [`value`], [`object`] and [`array`] return when the text is not
/// theirs to read. They are the functions that stay calls (they recurse), and
/// a plain integer comes back in a register where an `Option<usize>` would be
/// returned through the guest's stack in linear memory.
const REFUSED: usize = usize::MAX;

fn found(end: usize) -> Option<usize> {
    (end != REFUSED).then_some(end)
}

/// The end of the value starting at `at`, which `depth` arrays or objects
/// enclose below the top-level field, or [`REFUSED`].
fn value(b: &[u8], at: usize, depth: usize) -> usize {
    let end = match b.get(at) {
        Some(b'"') => string(b, at + 1).map(|(_, after, _)| after),
        Some(b'{') => return object(b, at + 1, depth + 1),
        Some(b'[') => return array(b, at + 1, depth + 1),
        Some(b't') => literal(b, at, b"true"),
        Some(b'f') => literal(b, at, b"false"),
        Some(b'n') => literal(b, at, b"null"),
        Some(b'-') => number(b, at + 1),
        Some(b'0'..=b'9') => number(b, at),
        _ => None,
    };
    end.unwrap_or(REFUSED)
}

/// The end of an object whose `{` ends at `at`, or [`REFUSED`].
fn object(b: &[u8], at: usize, depth: usize) -> usize {
    object_end(b, at, depth).unwrap_or(REFUSED)
}

fn object_end(b: &[u8], at: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut at = whitespace(b, at);
    if b.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        at = expect(b, at, b'"')?;
        let (_, after, _) = string(b, at)?;
        at = expect(b, whitespace(b, after), b':')?;
        at = whitespace(b, found(value(b, whitespace(b, at), depth))?);
        match *b.get(at)? {
            b',' => at = whitespace(b, at + 1),
            b'}' => return Some(at + 1),
            _ => return None,
        }
    }
}

/// The end of an array whose `[` ends at `at`, or [`REFUSED`].
fn array(b: &[u8], at: usize, depth: usize) -> usize {
    array_end(b, at, depth).unwrap_or(REFUSED)
}

fn array_end(b: &[u8], at: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut at = whitespace(b, at);
    if b.get(at) == Some(&b']') {
        return Some(at + 1);
    }
    loop {
        at = whitespace(b, found(value(b, at, depth))?);
        match *b.get(at)? {
            b',' => at = whitespace(b, at + 1),
            b']' => return Some(at + 1),
            _ => return None,
        }
    }
}

/// The end of `word` (`true`, `false` or `null`), which must start at `at`.
#[inline(always)]
fn literal<const N: usize>(b: &[u8], at: usize, word: &[u8; N]) -> Option<usize> {
    let found: &[u8; N] = b.get(at..at + N)?.try_into().ok()?;
    (found == word).then_some(at + N)
}

/// The end of a number whose first digit is at `at` (after any `-`). What
/// follows it (a digit after a leading zero, as in "01", included) is checked
/// by the caller, which accepts only `,`, `}` or `]` there.
#[inline(always)]
fn number(b: &[u8], at: usize) -> Option<usize> {
    let mut at = match *b.get(at)? {
        // A leading zero stands alone.
        b'0' => at + 1,
        b'1'..=b'9' => digits(b, at + 1),
        _ => return None,
    };
    if b.get(at) == Some(&b'.') {
        at = some_digits(b, at + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = b.get(at) {
            at += 1;
        }
        at = some_digits(b, at)?;
    }
    Some(at)
}

#[inline(always)]
fn digits(b: &[u8], mut at: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(at) {
        at += 1;
    }
    at
}

#[inline(always)]
fn some_digits(b: &[u8], at: usize) -> Option<usize> {
    let end = digits(b, at);
    (end > at).then_some(end)
}

/// A string whose opening quote ends at `at`: where its contents end, the
/// position after its closing quote, and whether it holds escapes. Only the
/// escapes `\" \\ \/ \b \f \n \r \t` are accepted here; `\u` and control
/// characters give `None`.
#[inline(always)]
fn string(b: &[u8], mut at: usize) -> Option<(usize, usize, bool)> {
    let mut escaped = false;
    loop {
        at = special(b, at)?;
        match *b.get(at)? {
            b'"' => return Some((at, at + 1, escaped)),
            b'\\' => match *b.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    escaped = true;
                    at += 2;
                }
                _ => return None,
            },
            _ => return None,
        }
    }
}

/// Index of the first byte at or after `from` that is a quote, a backslash or
/// a control character (below 0x20), or `None` when there is none. Eight bytes
/// per step; the lowest flagged byte of a word is exact (the borrows of the
/// zero-byte trick only ever flag bytes above a true hit).
#[inline(always)]
fn special(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = zero_bytes(word ^ (ONES * u64::from(b'"')));
        let backslash = zero_bytes(word ^ (ONES * u64::from(b'\\')));
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let hits = quote | backslash | control;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// High bit set in each byte of the result where `word` has a zero byte (and
/// possibly above the lowest one).
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json makes of `text`: its top-level fields, or `None` when it
    /// refuses it (or it is not an object).
    fn serde_split(text: &str) -> Option<Vec<(String, String)>> {
        let fields = crate::event::serde_fields(text).ok()?;
        Some(
            fields
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.to_owned()))
                .collect(),
        )
    }

    fn ours(text: &str) -> Option<Vec<(String, String)>> {
        let mut fields = vec![("stale", "entry")];
        split_object(text, &mut fields).then(|| {
            fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
    }

    /// Our answer, when there is one, is serde_json's.
    fn check(text: &str) {
        if let Some(fields) = ours(text) {
            assert_eq!(Some(fields), serde_split(text), "{text:?}");
        }
    }

    #[test]
    fn splits_what_events_usually_look_like() {
        let text = r#" {"memberId":"M1","age":31,"gender":"MALE","h":9.5e1,"e_n":"구매하기 버튼 클릭",
            "tags":["a",{"b":[true,false,null]}],"q":"a\"b\\c","neg":-0.5E-3,"empty":{}} "#;
        let fields = ours(text).expect("split");
        assert_eq!(fields.len(), 9);
        assert_eq!(fields[4], ("e_n".into(), "\"구매하기 버튼 클릭\"".into()));
        assert_eq!(fields[5].1, r#"["a",{"b":[true,false,null]}]"#);
        assert_eq!(fields[6].1, r#""a\"b\\c""#);
        check(text);
        assert_eq!(ours("{}"), Some(vec![]));
        assert_eq!(ours(" { } "), Some(vec![]));
    }

    #[test]
    fn leaves_to_serde_json_what_it_does_not_read_itself() {
        for text in [
            r#"{"a\u0062":1}"#,  // escape in a name
            r#"{"a":"\u00e9"}"#, // \u escape in a value
            "{\"a\":\"x\ty\"}",  // control character in a string
            r#"{"a\"b":1}"#,     // escape in a name
            "[1,2]",             // not an object
            "",                  // nothing
        ] {
            assert_eq!(ours(text), None, "{text:?}");
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(150), "]".repeat(150));
        assert_eq!(ours(&deep), None);
    }

    #[test]
    fn refuses_what_is_not_json() {
        for text in [
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":{\"b\"}}",
            "{\"a\":1}x",
            "{\"a\":1}}",
            "{\"a\":\"x}",
            "{\"a\":\"\\x\"}",
            "{'a':1}",
            "{a:1}",
            "{\"a\":NaN}",
            "{\"a\":[}",
            "{\"a\":{,}}",
            "{\"a\":1,,\"b\":2}",
            "{\"a\":\"\\\"}",
        ] {
            assert_eq!(ours(text), None, "{text:?}");
            assert_eq!(
                serde_split(text),
                None,
                "serde_json should refuse {text:?} too"
            );
        }
    }

    #[test]
    fn the_word_scan_finds_the_first_special_byte_wherever_it_is() {
        for len in 0..40 {
            for hit in 0..len {
                for special_byte in [b'"', b'\\', 0x00, 0x1f] {
                    let mut bytes = vec![b'x'; len];
                    // Bytes that trip the zero-byte trick's borrows after the hit.
                    for (i, b) in bytes.iter_mut().enumerate().skip(hit + 1) {
                        *b = [0x01, 0x21, 0x5d, 0x23, 0x80, 0xff][i % 6];
                    }
                    bytes[hit] = special_byte;
                    assert_eq!(special(&bytes, 0), Some(hit), "{bytes:?}");
                }
            }
            let plain: Vec<u8> = (0..len)
                .map(|i| [b'a', 0x20, 0x7f, 0xc3, 0xa9][i % 5])
                .collect();
            assert_eq!(special(&plain, 0), None, "{plain:?}");
        }
    }

    /// Many generated documents, each also cut short and with one byte
    /// changed: whenever the splitter answers, serde_json agrees.
    #[test]
    fn agrees_with_serde_json_on_generated_and_damaged_documents() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        const PIECES: [&str; 24] = [
            "0",
            "-1",
            "31",
            "2.5",
            "-0.0e+3",
            "1E9",
            "true",
            "false",
            "null",
            "\"\"",
            "\"MALE\"",
            "\"구매\"",
            "\"a\\\"b\"",
            "\"\\\\\"",
            "\"\\n\\t/\"",
            "[]",
            "{}",
            "[1,\"x\"]",
            "{\"k\":[null]}",
            " ",
            "\n",
            "\"long string that spans several words\"",
            "\"\\/\"",
            "[[],[{}]]",
        ];
        const SPICE: [u8; 20] = [
            b'{', b'}', b'[', b']', b'"', b'\\', b',', b':', b'0', b'1', b'-', b'+', b'.', b'e',
            b' ', 0x01, 0xff, b'u', b'x', b'a',
        ];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut text = String::from("{");
            for i in 0..random(6) {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&format!("\"f{}\":", random(4)));
                text.push_str(PIECES[random(PIECES.len())]);
            }
            text.push('}');
            check(&text);
            accepted += usize::from(ours(&text).is_some());
            let cut = random(text.len() + 1);
            if text.is_char_boundary(cut) {
                check(&text[..cut]);
            }
            let mut changed = text.clone().into_bytes();
            let at = random(changed.len());
            changed[at] = SPICE[random(SPICE.len())];
            let mut inserted = text.clone().into_bytes();
            inserted.insert(random(text.len() + 1), SPICE[random(SPICE.len())]);
            for damaged in [changed, inserted] {
                if let Ok(damaged) = String::from_utf8(damaged) {
                    check(&damaged);
                }
            }
        }
        assert!(
            accepted > 15_000,
            "only {accepted} generated documents split"
        );
    }
}
