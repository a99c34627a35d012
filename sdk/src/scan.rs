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

use std::borrow::Cow;

/// How deep arrays and objects may nest inside a field before the splitter
/// hands the text to serde_json (whose own limit is 128).
const MAX_DEPTH: usize = 100;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Top-level fields of `text` in document order, or `None` when the text
/// must be read by serde_json (see the module documentation).
pub(crate) fn split_object(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let mut scan = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    scan.whitespace();
    scan.eat(b'{')?;
    let mut fields = Vec::with_capacity(16);
    scan.whitespace();
    if !scan.eat_if(b'}') {
        loop {
            scan.eat(b'"')?;
            let (start, end, escaped) = scan.string()?;
            if escaped {
                return None;
            }
            scan.whitespace();
            scan.eat(b':')?;
            scan.whitespace();
            let value_start = scan.at;
            scan.value(0)?;
            // Both ranges start and end at ASCII bytes (quotes, brackets,
            // digits, letters), so they are char boundaries of `text`.
            fields.push((
                Cow::Borrowed(text.get(start..end)?),
                text.get(value_start..scan.at)?,
            ));
            scan.whitespace();
            match scan.next()? {
                b',' => scan.whitespace(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    scan.whitespace();
    (scan.at == scan.bytes.len()).then_some(fields)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn eat(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    fn eat_if(&mut self, expected: u8) -> bool {
        let found = self.bytes.get(self.at) == Some(&expected);
        self.at += usize::from(found);
        found
    }

    #[inline(always)]
    fn whitespace(&mut self) {
        // Compact JSON has none: test once before looping.
        if let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
                self.at += 1;
            }
        }
    }

    /// One value, its first byte at `self.at`; `depth` arrays or objects
    /// enclose it below the top-level field.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.next()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            b'n' => self.literal(b"ull"),
            b'-' => {
                let first = self.next()?;
                self.number(first)
            }
            first @ b'0'..=b'9' => self.number(first),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.whitespace();
        if self.eat_if(b'}') {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            self.string()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            self.value(depth)?;
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.whitespace();
        if self.eat_if(b']') {
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    fn literal(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.at + rest.len();
        (self.bytes.get(self.at..end)? == rest).then(|| self.at = end)
    }

    /// A number whose first digit, `first`, was just read (after any `-`).
    fn number(&mut self, first: u8) -> Option<()> {
        match first {
            // A leading zero stands alone.
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat_if(b'.') {
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        // What follows (a digit after a leading zero, as in "01", included)
        // is checked by the caller, which accepts only `,`, `}` or `]` there.
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// The rest of a string whose opening quote was just read: its contents'
    /// range and whether it holds escapes. Only the escapes `\" \\ \/ \b \f
    /// \n \r \t` are accepted here; `\u` and control characters give `None`.
    #[inline(always)]
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.at;
        let mut escaped = false;
        loop {
            self.at = special(self.bytes, self.at)?;
            match self.next()? {
                b'"' => return Some((start, self.at - 1, escaped)),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => escaped = true,
                    _ => return None,
                },
                _ => return None,
            }
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
        split_object(text).map(|fields| {
            fields
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.to_owned()))
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
