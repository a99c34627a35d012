//! The error a plugin function returns for one event.

use std::fmt;

/// Why a plugin could not handle one event, or why its configuration was refused.
///
/// Returning `Err` from a plugin function turns the event into a `failed`
/// outcome carrying this message; the host sends the event to the dead-letter
/// topic with it. Build one from a `String` or `&str`, or let `?` convert a
/// `serde_json::Error`:
///
/// ```
/// use weir_sdk::Error;
///
/// fn parse_level(level: &str) -> Result<u8, Error> {
///     match level {
///         "low" => Ok(1),
///         "high" => Ok(2),
///         other => Err(format!("level {other:?} is not one of \"low\", \"high\"").into()),
///     }
/// }
/// assert_eq!(parse_level("medium").unwrap_err().message(),
///            "level \"medium\" is not one of \"low\", \"high\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    ///
    /// ```
    /// let e = weir_sdk::Error::new("field \"age\" is negative");
    /// assert_eq!(e.to_string(), "field \"age\" is negative");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message, as the host will see it.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Error::from("bad").message(), "bad");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message, by value.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Error::from("bad").into_message(), "bad");
    /// ```
    pub fn into_message(self) -> String {
        self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::new(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::new(e.to_string())
    }
}
