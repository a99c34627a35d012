//! Writers for output records: bytes go straight into the batch's output buffer.

use std::io;

use serde::Serialize;

use crate::Error;
use crate::RawJson;
use crate::batch::Output;

/// The one output record a [`Map`](crate::Map), [`FilterMap`](crate::FilterMap)
/// or [`Scenario`](crate::Scenario) plugin writes for an event. Bytes are
/// appended to the batch's output buffer directly; nothing is copied later.
/// It implements [`std::io::Write`].
///
/// ```
/// use weir_sdk::{Harness, Event, Record, Map, Plugin, NoConfig, Error};
///
/// struct Upper;
/// impl Plugin for Upper {
///     const NAME: &'static str = "upper";
///     const VERSION: &'static str = "0.1.0";
///     const DESCRIPTION: &'static str = "Upper-cases the value.";
///     type Config = NoConfig;
///     fn new(_: NoConfig) -> Result<Self, Error> { Ok(Upper) }
/// }
/// impl Map for Upper {
///     fn map(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<(), Error> {
///         out.push_str(&event.text()?.to_uppercase());
///         Ok(())
///     }
/// }
/// let results = Harness::map::<Upper>("{}")?.run_lines("abc");
/// assert_eq!(results[0].text(0), "ABC");
/// # Ok::<(), weir_sdk::Error>(())
/// ```
#[derive(Debug)]
pub struct Record<'o> {
    buf: &'o mut Vec<u8>,
    start: usize,
}

impl<'o> Record<'o> {
    pub(crate) fn new(buf: &'o mut Vec<u8>) -> Self {
        let start = buf.len();
        Self { buf, start }
    }

    /// Appends bytes.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.push(b"abc");
    /// assert_eq!(out.as_bytes(), b"abc");
    /// ```
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends text.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.push_str("구매");
    /// assert_eq!(out.as_bytes(), "구매".as_bytes());
    /// ```
    #[inline]
    pub fn push_str(&mut self, text: &str) {
        self.buf.extend_from_slice(text.as_bytes());
    }

    /// Appends `value` serialized as JSON.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.json(&serde_json::json!({"a": [1, 2]}))?;
    /// assert_eq!(out.as_bytes(), br#"{"a":[1,2]}"#);
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        serde_json::to_writer(&mut *self.buf, value)
            .map_err(|e| Error::new(format!("cannot serialize the output record: {e}")))
    }

    /// Starts a JSON object; add fields to the returned writer. The object is
    /// closed when the writer is dropped or [`finish`](ObjectWriter::finish)ed.
    /// The fastest way to emit JSON: raw field values from the input are copied
    /// byte for byte, without being parsed.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// let event = weir_sdk::Event::new(r#"{"age":31,"e_n":"구매"}"#.as_bytes());
    /// let mut obj = out.object();
    /// obj.raw("e_n", event.raw("e_n")?.unwrap());
    /// obj.i64("success", 1);
    /// obj.finish();
    /// assert_eq!(out.as_bytes(), r#"{"e_n":"구매","success":1}"#.as_bytes());
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn object(&mut self) -> ObjectWriter<'_> {
        self.buf.push(b'{');
        ObjectWriter {
            buf: self.buf,
            first: true,
        }
    }

    /// The bytes written to this record so far.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// assert!(out.as_bytes().is_empty());
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// A record writing into `buf`, for trying the writer API outside a plugin.
    ///
    /// ```
    /// let mut buf = Vec::new();
    /// weir_sdk::Record::for_tests(&mut buf).push(b"x");
    /// assert_eq!(buf, b"x");
    /// ```
    pub fn for_tests(buf: &'o mut Vec<u8>) -> Self {
        Self::new(buf)
    }
}

impl io::Write for Record<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one JSON object field by field. Returned by [`Record::object`].
///
/// ```
/// # let mut buf = Vec::new();
/// # let mut out = weir_sdk::Record::for_tests(&mut buf);
/// let mut obj = out.object();
/// obj.str("gender", "MALE");
/// obj.bool("vip", false);
/// drop(obj); // closes the object, like `finish`
/// assert_eq!(out.as_bytes(), br#"{"gender":"MALE","vip":false}"#);
/// ```
#[derive(Debug)]
pub struct ObjectWriter<'r> {
    buf: &'r mut Vec<u8>,
    first: bool,
}

impl ObjectWriter<'_> {
    fn key(&mut self, name: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        write_json_string(self.buf, name);
        self.buf.push(b':');
    }

    /// Adds a field whose value is raw JSON text, copied byte for byte.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// let event = weir_sdk::Event::new(br#"{"a":[1, 2]}"#);
    /// out.object().raw("a", event.raw("a")?.unwrap());
    /// assert_eq!(out.as_bytes(), br#"{"a":[1, 2]}"#);
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn raw(&mut self, name: &str, value: RawJson<'_>) -> &mut Self {
        self.key(name);
        self.buf.extend_from_slice(value.get().as_bytes());
        self
    }

    /// Adds a string field.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.object().str("q", "a\"b");
    /// assert_eq!(out.as_bytes(), br#"{"q":"a\"b"}"#);
    /// ```
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        self.key(name);
        write_json_string(self.buf, value);
        self
    }

    /// Adds an integer field.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.object().i64("n", -3);
    /// assert_eq!(out.as_bytes(), br#"{"n":-3}"#);
    /// ```
    pub fn i64(&mut self, name: &str, value: i64) -> &mut Self {
        self.key(name);
        let mut digits = itoa_buf(value);
        self.buf.append(&mut digits);
        self
    }

    /// Adds a number field; a non-finite value is written as `null`.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.object().f64("x", 0.5);
    /// assert_eq!(out.as_bytes(), br#"{"x":0.5}"#);
    /// ```
    pub fn f64(&mut self, name: &str, value: f64) -> &mut Self {
        self.key(name);
        match serde_json::Number::from_f64(value) {
            Some(n) => self.buf.extend_from_slice(n.to_string().as_bytes()),
            None => self.buf.extend_from_slice(b"null"),
        }
        self
    }

    /// Adds a boolean field.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.object().bool("ok", true);
    /// assert_eq!(out.as_bytes(), br#"{"ok":true}"#);
    /// ```
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.key(name);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Adds a `null` field.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.object().null("x");
    /// assert_eq!(out.as_bytes(), br#"{"x":null}"#);
    /// ```
    pub fn null(&mut self, name: &str) -> &mut Self {
        self.key(name);
        self.buf.extend_from_slice(b"null");
        self
    }

    /// Adds a field holding `value` serialized as JSON.
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.object().json("tags", &["a", "b"])?;
    /// assert_eq!(out.as_bytes(), br#"{"tags":["a","b"]}"#);
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<&mut Self, Error> {
        self.key(name);
        serde_json::to_writer(&mut *self.buf, value)
            .map_err(|e| Error::new(format!("cannot serialize output field {name:?}: {e}")))?;
        Ok(self)
    }

    /// Closes the object (dropping the writer does the same).
    ///
    /// ```
    /// # let mut buf = Vec::new();
    /// # let mut out = weir_sdk::Record::for_tests(&mut buf);
    /// out.object().finish();
    /// assert_eq!(out.as_bytes(), b"{}");
    /// ```
    pub fn finish(self) {}
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        self.buf.push(b'}');
    }
}

fn itoa_buf(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Appends `text` as a JSON string literal. ASCII without quotes, backslashes
/// or control characters (nearly every field name) is copied in one go.
fn write_json_string(buf: &mut Vec<u8>, text: &str) {
    let needs_escape = text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if needs_escape {
        serde_json::to_writer(&mut *buf, text).expect("writing to a Vec cannot fail");
    } else {
        buf.push(b'"');
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'"');
    }
}

/// The records a [`FlatMap`](crate::FlatMap) plugin emits for one event: zero,
/// one or many.
///
/// ```
/// use weir_sdk::{Harness, Event, Records, FlatMap, Plugin, NoConfig, Error};
///
/// struct Split;
/// impl Plugin for Split {
///     const NAME: &'static str = "split";
///     const VERSION: &'static str = "0.1.0";
///     const DESCRIPTION: &'static str = "One record per word.";
///     type Config = NoConfig;
///     fn new(_: NoConfig) -> Result<Self, Error> { Ok(Split) }
/// }
/// impl FlatMap for Split {
///     fn flat_map(&self, event: &Event<'_>, out: &mut Records<'_>) -> Result<(), Error> {
///         for word in event.text()?.split_whitespace() {
///             out.push(word.as_bytes());
///         }
///         Ok(())
///     }
/// }
/// let results = Harness::flat_map::<Split>("{}")?.run_lines("a b c");
/// assert_eq!(results[0].records, [b"a", b"b", b"c"]);
/// # Ok::<(), weir_sdk::Error>(())
/// ```
#[derive(Debug)]
pub struct Records<'o> {
    out: &'o mut Output,
    count: u32,
}

impl<'o> Records<'o> {
    pub(crate) fn new(out: &'o mut Output) -> Self {
        Self { out, count: 0 }
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    fn end_record(&mut self) {
        let end = u32::try_from(self.out.records.len())
            .expect("output larger than 4 GiB cannot cross the WIT boundary");
        self.out.record_ends.push(end);
        self.count += 1;
    }

    /// Emits one record with these bytes.
    ///
    /// See the type's example.
    pub fn push(&mut self, bytes: &[u8]) {
        self.out.records.extend_from_slice(bytes);
        self.end_record();
    }

    /// Emits one record holding `value` serialized as JSON.
    ///
    /// ```
    /// # use weir_sdk::{Harness, Event, Records, FlatMap, Plugin, NoConfig, Error};
    /// # struct Two;
    /// # impl Plugin for Two {
    /// #     const NAME: &'static str = "two"; const VERSION: &'static str = "0.1.0";
    /// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(Two) }
    /// # }
    /// # impl FlatMap for Two {
    /// #     fn flat_map(&self, _: &Event<'_>, out: &mut Records<'_>) -> Result<(), Error> {
    /// out.push_json(&serde_json::json!({"n": 1}))?;
    /// #         Ok(())
    /// #     }
    /// # }
    /// # assert_eq!(Harness::flat_map::<Two>("{}")?.run_lines("{}")[0].text(0), r#"{"n":1}"#);
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn push_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let start = self.out.records.len();
        if let Err(e) = serde_json::to_writer(&mut self.out.records, value) {
            self.out.records.truncate(start);
            return Err(Error::new(format!(
                "cannot serialize an output record: {e}"
            )));
        }
        self.end_record();
        Ok(())
    }

    /// Emits one record written by `write` through a [`Record`]; when `write`
    /// fails nothing is emitted and its error is returned.
    ///
    /// ```
    /// # use weir_sdk::{Harness, Event, Records, FlatMap, Plugin, NoConfig, Error};
    /// # struct Obj;
    /// # impl Plugin for Obj {
    /// #     const NAME: &'static str = "obj"; const VERSION: &'static str = "0.1.0";
    /// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(Obj) }
    /// # }
    /// # impl FlatMap for Obj {
    /// #     fn flat_map(&self, _: &Event<'_>, out: &mut Records<'_>) -> Result<(), Error> {
    /// out.push_with(|record| {
    ///     record.object().i64("part", 1);
    ///     Ok(())
    /// })?;
    /// #         Ok(())
    /// #     }
    /// # }
    /// # assert_eq!(Harness::flat_map::<Obj>("{}")?.run_lines("{}")[0].text(0), r#"{"part":1}"#);
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn push_with(
        &mut self,
        write: impl FnOnce(&mut Record<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let start = self.out.records.len();
        let result = write(&mut Record::new(&mut self.out.records));
        match result {
            Ok(()) => {
                self.end_record();
                Ok(())
            }
            Err(e) => {
                self.out.records.truncate(start);
                Err(e)
            }
        }
    }
}
