//! Write weir plugins in Rust: one small trait impl and one export line.
//!
//! ```
//! use weir_sdk::{Error, Event, Filter, Plugin};
//!
//! struct Adults {
//!     min_age: i64,
//! }
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     min_age: i64,
//! }
//!
//! impl Plugin for Adults {
//!     const NAME: &'static str = "adults";
//!     const VERSION: &'static str = "0.1.0";
//!     const DESCRIPTION: &'static str = "Keeps events of members older than min_age.";
//!     const CONFIG_SCHEMA: &'static str = r#"{"type":"object","required":["min_age"]}"#;
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, Error> {
//!         Ok(Adults { min_age: config.min_age })
//!     }
//! }
//!
//! impl Filter for Adults {
//!     fn keep(&self, event: &Event<'_>) -> Result<bool, Error> {
//!         Ok(event.i64("age")?.is_some_and(|age| age > self.min_age))
//!     }
//! }
//!
//! weir_sdk::export!(Adults as filter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and upload the
//! `.wasm`: for that target a `cdylib` is already a component of the world
//! `weir:plugin/weir-plugin@0.1.0` (`wit/plugin.wit`). The plugin's
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"] # rlib: also usable natively, in tests and benches
//!
//! [dependencies]
//! weir-sdk = "0.1"
//! serde = { version = "1", features = ["derive"] }
//!
//! [lints.rust]
//! # `export!` expands wit-bindgen's ABI glue, which is unsafe code, under a
//! # scoped `#[allow(unsafe_code)]`; `forbid` would reject that, `deny` does not.
//! unsafe_code = "deny"
//! ```
//!
//! # Kinds
//!
//! [`Plugin`] says who the plugin is and how it is configured; one kind trait
//! says what it does with each event, and [`export!`] names that kind:
//!
//! | trait | method | output per event | `matched` | export |
//! |---|---|---|---|---|
//! | [`Filter`] | `keep(&Event) -> bool` | the value unchanged, or nothing | `keep` | `export!(P as filter)` |
//! | [`Map`] | `map(&Event, &mut Record)` | exactly one record | always | `export!(P as map)` |
//! | [`FilterMap`] | `filter_map(&Event, &mut Record) -> bool` | one record when `true` | the returned bool | `export!(P as filter_map)` |
//! | [`FlatMap`] | `flat_map(&Event, &mut Records)` | zero or more records | at least one record | `export!(P as flat_map)` |
//! | [`Scenario`] | `evaluate(&Event, &mut Record) -> bool` | exactly one record, matched or not | the returned bool | `export!(P as scenario)` |
//!
//! Every method returns `Result<_, Error>`. An `Err` makes that one event a
//! `failed` outcome carrying the message (the host dead-letters it); anything
//! the method had written for the event is discarded. A panic is not caught:
//! inside the component it traps, which fails the whole batch call, and the
//! host then isolates the offending event. Return errors for bad input; keep
//! panics for bugs.
//!
//! # Reading events
//!
//! [`Event`] gives the value, key, headers, offset and timestamp, and typed,
//! lazy access to the fields of a JSON-object value: [`Event::str`],
//! [`Event::i64`], [`Event::f64`], [`Event::bool`], [`Event::get`] and
//! [`Event::raw`]. The first lookup splits the object into borrowed raw field
//! texts ([`RawJson`]) once; each getter then parses only the value asked for.
//! That is the fast way (about four times cheaper than a `serde_json::Value`),
//! and it is the easy one too. Copy a field to an output unchanged with
//! [`ObjectWriter::raw`]: its bytes are not parsed at all.
//!
//! # Configuration
//!
//! The host calls `configure` with the scenario's configuration as JSON text.
//! The SDK deserializes it into [`Plugin::Config`] and calls [`Plugin::new`].
//! A config that does not deserialize is refused with the path of the
//! offending field, e.g. ``config field `filters[2].operator`: unknown variant
//! `=~`, expected one of ...``. An empty string counts as `{}`. Use
//! [`NoConfig`] for a plugin without settings. [`Plugin::CONFIG_SCHEMA`] is the
//! JSON Schema the host shows and checks before `configure`.
//!
//! # Testing
//!
//! The SDK compiles natively, so plugin logic is unit-tested with plain
//! `cargo test` through [`Harness`], which runs the same batch code the
//! component runs, minus the WebAssembly boundary:
//!
//! ```
//! # use weir_sdk::{Error, Event, Filter, Plugin};
//! # struct Adults { min_age: i64 }
//! # #[derive(serde::Deserialize)] struct Config { min_age: i64 }
//! # impl Plugin for Adults {
//! #     const NAME: &'static str = "adults"; const VERSION: &'static str = "0.1.0";
//! #     const DESCRIPTION: &'static str = "x"; type Config = Config;
//! #     fn new(c: Config) -> Result<Self, Error> { Ok(Adults { min_age: c.min_age }) }
//! # }
//! # impl Filter for Adults {
//! #     fn keep(&self, e: &Event<'_>) -> Result<bool, Error> {
//! #         Ok(e.i64("age")?.is_some_and(|a| a > self.min_age))
//! #     }
//! # }
//! use weir_sdk::{Harness, Status};
//!
//! let harness = Harness::filter::<Adults>(r#"{"min_age": 20}"#)?;
//! let results = harness.run_lines("{\"age\":31}\n{\"age\":12}\n{\"age\":\"x\"}\n");
//! assert_eq!(results[0].status, Status::Emitted);
//! assert_eq!(results[1].status, Status::Dropped);
//! assert_eq!(results[2].status, Status::Failed);
//! assert_eq!(results[2].error.as_deref(),
//!            Some(r#"field "age": invalid type: string "x", expected i64, found "x""#));
//!
//! let refused = Harness::filter::<Adults>(r#"{"min_age": "twenty"}"#).unwrap_err();
//! assert!(refused.message().starts_with("config field `min_age`: invalid type"));
//! # Ok::<(), weir_sdk::Error>(())
//! ```
//!
//! A second layer runs the real `.wasm` through the host runtime with its
//! sandbox and limits: the [`testing`] module, behind the `testing` feature
//! (a dev-dependency feature: it brings in the whole host runtime).
//!
//! # What a plugin sees, and its bounds
//!
//! A plugin gets no file system, network, environment or arguments. Its
//! clocks are virtual: `std::time::Instant` and `SystemTime` read zero
//! (1970-01-01) when a call starts and move only by the plugin's own sleeps,
//! which return at once. Randomness (`HashMap`'s keys included) is seeded per
//! batch, so the same batch always gets the same numbers. Take event time from
//! [`Event::timestamp_ms`] or a field, never from the clock. Every call runs
//! under a CPU deadline, one memory budget for the whole instance, and caps on
//! output (per record, per call, per failure reason); an event that passes a
//! cap fails alone. `wit/plugin.wit` lists them all.
//!
//! # Performance
//!
//! Inside the sandbox every loop iteration and function call of the plugin
//! pays a CPU-deadline check, and the guest's compiled code runs about half as
//! fast as the same code compiled natively, so per-event work counts about
//! twice over. What keeps it small:
//!
//! - Read fields through [`Event`]'s getters; never parse the whole value into
//!   a `serde_json::Value` (about five times the cost of the lazy split).
//! - A plugin that reads several fields of every event declares them once in
//!   a [`FieldSet`] and reads them with [`Event::pick`]: one pass over the
//!   event's fields instead of one per name.
//! - Avoid allocating per event: in the guest each allocation is a chain of
//!   calls into the allocator. The SDK's own loop allocates nothing per event.
//! - Copy fields to the output with [`ObjectWriter::raw`], or
//!   [`Record::push`] of [`RawJson::get`]: their bytes are not parsed again.
//! - Render what does not depend on the event (keys, constant fields) once in
//!   [`Plugin::new`] and [`Record::push`] the bytes; one append per piece.
//! - Build the component with the release profile; fat LTO did not make the
//!   shipped plugins faster in the sandbox.
//!
//! `weir plugin test --input events.jsonl` prints events/s through the same
//! runtime and limits as the service.

#![deny(missing_docs)]

mod batch;
mod error;
mod event;
mod field_set;
mod output;
mod scan;
#[cfg(feature = "testing")]
pub mod testing;

pub use batch::{Batch, EventMut, EventResult, Header, Outcome, Output, Status};
pub use error::Error;
pub use event::{Event, Fields, RawJson, string_value};
pub use field_set::{FieldSet, Picked};
pub use output::{ObjectWriter, Record, Records};

use serde::de::DeserializeOwned;

/// Who a plugin is and how it is configured. Implement it together with one
/// kind trait ([`Filter`], [`Map`], [`FilterMap`], [`FlatMap`] or
/// [`Scenario`]) and name both in [`export!`].
///
/// ```
/// use weir_sdk::{Error, NoConfig, Plugin};
///
/// struct Noop;
/// impl Plugin for Noop {
///     const NAME: &'static str = "noop";
///     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
///     const DESCRIPTION: &'static str = "Does nothing.";
///     type Config = NoConfig;
///     fn new(_: NoConfig) -> Result<Self, Error> {
///         Ok(Noop)
///     }
/// }
/// ```
pub trait Plugin: Sized + 'static {
    /// Plugin name: lowercase letters, digits and `-`.
    const NAME: &'static str;
    /// The plugin's own semantic version, e.g. `1.2.0`.
    const VERSION: &'static str;
    /// One line for people.
    const DESCRIPTION: &'static str;
    /// JSON Schema (draft 2020-12) of [`Config`](Self::Config), as JSON text.
    /// Defaults to "any object".
    const CONFIG_SCHEMA: &'static str = r#"{"type":"object"}"#;

    /// The configuration, deserialized from the JSON text the host passes to
    /// `configure`. Use [`NoConfig`] when there is none.
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration, once per instance. Return an
    /// error naming the offending field and what would be accepted.
    fn new(config: Self::Config) -> Result<Self, Error>;
}

/// Keeps or drops each event unchanged. Export with `export!(P as filter)`.
///
/// A kept event is emitted as one record holding its value and counts as
/// matched; a dropped one produces nothing and counts as not matched.
///
/// ```
/// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin, Harness, Status};
/// struct Buys;
/// # impl Plugin for Buys {
/// #     const NAME: &'static str = "buys"; const VERSION: &'static str = "0.1.0";
/// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(Buys) }
/// # }
/// impl Filter for Buys {
///     fn keep(&self, event: &Event<'_>) -> Result<bool, Error> {
///         Ok(event.str("e_n")?.as_deref() == Some("구매"))
///     }
/// }
/// let results = Harness::filter::<Buys>("{}")?.run_lines(r#"{"e_n":"구매"}"#);
/// assert_eq!(results[0].status, Status::Emitted);
/// # Ok::<(), Error>(())
/// ```
pub trait Filter: Plugin {
    /// Whether to keep `event`.
    fn keep(&self, event: &Event<'_>) -> Result<bool, Error>;
}

/// Turns each event into exactly one record. Export with `export!(P as map)`.
/// Every handled event counts as matched. See [`Record`] for an example.
pub trait Map: Plugin {
    /// Writes the one output record for `event` into `out`.
    ///
    /// See [`Record`] for an example.
    fn map(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<(), Error>;
}

/// Turns each event into zero or one record. Export with
/// `export!(P as filter_map)`.
///
/// ```
/// # use weir_sdk::{Error, Event, FilterMap, NoConfig, Plugin, Harness, Record, Status};
/// struct Names;
/// # impl Plugin for Names {
/// #     const NAME: &'static str = "names"; const VERSION: &'static str = "0.1.0";
/// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(Names) }
/// # }
/// impl FilterMap for Names {
///     fn filter_map(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<bool, Error> {
///         let Some(name) = event.str("name")? else { return Ok(false) };
///         out.push_str(&name);
///         Ok(true)
///     }
/// }
/// let results = Harness::filter_map::<Names>("{}")?.run_lines("{\"name\":\"kim\"}\n{}");
/// assert_eq!(results[0].text(0), "kim");
/// assert_eq!(results[1].status, Status::Dropped);
/// # Ok::<(), Error>(())
/// ```
pub trait FilterMap: Plugin {
    /// Writes the output record for `event` into `out` and returns `true`, or
    /// returns `false` to emit nothing (whatever was written is discarded).
    /// The returned bool is also the event's `matched`.
    fn filter_map(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<bool, Error>;
}

/// Turns each event into zero or more records. Export with
/// `export!(P as flat_map)`. An event counts as matched when it produced at
/// least one record. See [`Records`] for an example.
pub trait FlatMap: Plugin {
    /// Emits the records for `event` through `out`.
    ///
    /// See [`Records`] for an example.
    fn flat_map(&self, event: &Event<'_>, out: &mut Records<'_>) -> Result<(), Error>;
}

/// Decides whether each event matched a scenario and emits exactly one record
/// for every event, matched or not. Export with `export!(P as scenario)`.
///
/// ```
/// # use weir_sdk::{Error, Event, Scenario, NoConfig, Plugin, Harness, Record};
/// struct Adult;
/// # impl Plugin for Adult {
/// #     const NAME: &'static str = "adult"; const VERSION: &'static str = "0.1.0";
/// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(Adult) }
/// # }
/// impl Scenario for Adult {
///     fn evaluate(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<bool, Error> {
///         let matched = event.i64("age")?.is_some_and(|age| age > 20);
///         out.object().i64("success", matched as i64);
///         Ok(matched)
///     }
/// }
/// let results = Harness::scenario::<Adult>("{}")?.run_lines("{\"age\":31}\n{\"age\":3}");
/// assert!(results[0].matched && !results[1].matched);
/// assert_eq!(results[1].text(0), r#"{"success":0}"#);
/// # Ok::<(), Error>(())
/// ```
pub trait Scenario: Plugin {
    /// Writes the output record for `event` into `out` and returns whether the
    /// event matched.
    fn evaluate(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<bool, Error>;
}

/// A configuration for plugins that take none: accepts `{}` (or an empty
/// string) and the scenario keys every configuration may carry
/// ([`SCENARIO_KEYS`]: the host passes a scenario's document, less weir's own
/// keys, as the configuration), and refuses any other key.
///
/// ```
/// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin, Harness};
/// # struct All;
/// # impl Plugin for All {
/// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
/// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
/// # }
/// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
/// assert!(Harness::filter::<All>("").is_ok());
/// assert!(Harness::filter::<All>(r#"{"scenario_id":7,"title":"t","manager":"m"}"#).is_ok());
/// assert!(Harness::filter::<All>(r#"{"x":1}"#).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {
    #[serde(default, rename = "scenario_id")]
    _scenario_id: serde::de::IgnoredAny,
    #[serde(default, rename = "title")]
    _title: serde::de::IgnoredAny,
    #[serde(default, rename = "manager")]
    _manager: serde::de::IgnoredAny,
}

/// Keys of a scenario document that reach every plugin's configuration: the
/// scenario's id and its descriptive `title` and `manager`. A plugin's
/// configuration schema should allow them.
pub const SCENARIO_KEYS: &[&str] = &["scenario_id", "title", "manager"];

/// The shape of a plugin, as reported to the host.
///
/// ```
/// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin, Harness, PluginKind};
/// # struct All;
/// # impl Plugin for All {
/// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
/// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
/// # }
/// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
/// assert_eq!(Harness::filter::<All>("{}")?.kind(), PluginKind::Filter);
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// See [`Filter`].
    Filter,
    /// See [`Map`].
    Map,
    /// See [`FilterMap`].
    FilterMap,
    /// See [`FlatMap`].
    FlatMap,
    /// See [`Scenario`].
    Scenario,
}

/// Parses `config` into `P::Config` and builds the plugin; the error names the
/// offending field.
fn configure<P: Plugin>(config: &str) -> Result<P, Error> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed: P::Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::new(format!("config: {inner}"))
        } else {
            Error::new(format!("config field `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| Error::new(format!("config: {e}")))?;
    P::new(parsed)
}

/// Runs `K`'s per-event method over `batch`: the one batch loop shared by the
/// component glue and [`Harness`].
fn process<K: __private::KindAdapter>(plugin: &K::Plugin, batch: &Batch) -> Output {
    let bytes = batch.values.bytes().len();
    let mut out = Output::with_capacity(batch.len(), bytes + batch.len() * 32);
    // Room for the fields of a typical event, grown as needed and reused.
    let mut spare = Vec::with_capacity(16);
    for index in 0..batch.len() {
        let records_len = out.records.len();
        let ends_len = out.record_ends.len();
        let result = match batch.event(index) {
            Ok(event) => {
                let event = event.with_spare(std::mem::take(&mut spare));
                let result = K::handle(plugin, &event, &mut out);
                spare = event.into_spare();
                result
            }
            Err(message) => Err(Error::new(message)),
        };
        let outcome = match result {
            Ok(matched) => {
                let records = (out.record_ends.len() - ends_len) as u32;
                Outcome {
                    status: if records > 0 {
                        Status::Emitted
                    } else {
                        Status::Dropped
                    },
                    matched,
                    records,
                    error: None,
                }
            }
            Err(error) => {
                out.records.truncate(records_len);
                out.record_ends.truncate(ends_len);
                Outcome {
                    status: Status::Failed,
                    matched: false,
                    records: 0,
                    error: Some(error.into_message()),
                }
            }
        };
        out.outcomes.push(outcome);
    }
    out
}

fn end_record(out: &mut Output) {
    let end = u32::try_from(out.records.len())
        .expect("output larger than 4 GiB cannot cross the WIT boundary");
    out.record_ends.push(end);
}

/// Runs a plugin natively, without WebAssembly, over batches built in the
/// test: plain `cargo test` for plugin logic. It uses the same configuration
/// parsing and batch loop as the component.
///
/// ```
/// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin};
/// # struct All;
/// # impl Plugin for All {
/// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
/// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
/// # }
/// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
/// use weir_sdk::{Batch, Harness, Status};
///
/// let harness = Harness::filter::<All>("{}")?;
/// let mut batch = Batch::new("5");
/// batch.push(b"{}").timestamp_ms(0);
/// let output = harness.process(&batch);
/// assert_eq!(output.outcomes()[0].status, Status::Emitted);
/// assert_eq!(output.record(0), Some(&b"{}"[..]));
/// # Ok::<(), Error>(())
/// ```
pub struct Harness {
    kind: PluginKind,
    name: &'static str,
    scenario_id: String,
    run: Box<dyn Fn(&Batch) -> Output>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("scenario_id", &self.scenario_id)
            .finish_non_exhaustive()
    }
}

impl Harness {
    fn build<K: __private::KindAdapter>(config: &str) -> Result<Self, Error> {
        let plugin = configure::<K::Plugin>(config)?;
        Ok(Self {
            kind: K::KIND,
            name: K::Plugin::NAME,
            scenario_id: "test".to_owned(),
            run: Box::new(move |batch| process::<K>(&plugin, batch)),
        })
    }

    /// Configures filter plugin `P` with `config` (JSON text).
    ///
    /// See [`Filter`] for an example.
    pub fn filter<P: Filter>(config: &str) -> Result<Self, Error> {
        Self::build::<__private::AsFilter<P>>(config)
    }

    /// Configures map plugin `P` with `config` (JSON text).
    ///
    /// See [`Record`] for an example.
    pub fn map<P: Map>(config: &str) -> Result<Self, Error> {
        Self::build::<__private::AsMap<P>>(config)
    }

    /// Configures filter-map plugin `P` with `config` (JSON text).
    ///
    /// See [`FilterMap`] for an example.
    pub fn filter_map<P: FilterMap>(config: &str) -> Result<Self, Error> {
        Self::build::<__private::AsFilterMap<P>>(config)
    }

    /// Configures flat-map plugin `P` with `config` (JSON text).
    ///
    /// See [`Records`] for an example.
    pub fn flat_map<P: FlatMap>(config: &str) -> Result<Self, Error> {
        Self::build::<__private::AsFlatMap<P>>(config)
    }

    /// Configures scenario plugin `P` with `config` (JSON text).
    ///
    /// See [`Scenario`] for an example.
    pub fn scenario<P: Scenario>(config: &str) -> Result<Self, Error> {
        Self::build::<__private::AsScenario<P>>(config)
    }

    /// The scenario id used by [`run_lines`](Self::run_lines) and
    /// [`run_one`](Self::run_one) (default `test`).
    ///
    /// ```
    /// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin, Harness};
    /// # struct All;
    /// # impl Plugin for All {
    /// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
    /// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
    /// # }
    /// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
    /// let harness = Harness::filter::<All>("{}")?.with_scenario_id("5");
    /// # Ok::<(), Error>(())
    /// ```
    pub fn with_scenario_id(mut self, scenario_id: &str) -> Self {
        self.scenario_id = scenario_id.to_owned();
        self
    }

    /// The plugin's kind.
    ///
    /// See [`PluginKind`] for an example.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// The plugin's name ([`Plugin::NAME`]).
    ///
    /// ```
    /// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin, Harness};
    /// # struct All;
    /// # impl Plugin for All {
    /// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
    /// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
    /// # }
    /// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
    /// assert_eq!(Harness::filter::<All>("{}")?.name(), "all");
    /// # Ok::<(), Error>(())
    /// ```
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Processes `batch` exactly as the component would, returning the flat
    /// output the host would receive.
    ///
    /// See [`Harness`] for an example.
    pub fn process(&self, batch: &Batch) -> Output {
        let output = (self.run)(batch);
        assert_eq!(output.outcomes.len(), batch.len(), "one outcome per event");
        output
    }

    /// Processes `batch` and splits the output per event.
    ///
    /// ```
    /// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin, Harness, Batch};
    /// # struct All;
    /// # impl Plugin for All {
    /// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
    /// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
    /// # }
    /// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
    /// let results = Harness::filter::<All>("{}")?.run(&Batch::from_lines("5", "{}"));
    /// assert_eq!(results.len(), 1);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn run(&self, batch: &Batch) -> Vec<EventResult> {
        self.process(batch).results()
    }

    /// Processes one event per non-blank line of `jsonl` (offsets 0, 1, …, no
    /// timestamp) and splits the output per event.
    ///
    /// See the crate documentation for an example.
    pub fn run_lines(&self, jsonl: &str) -> Vec<EventResult> {
        self.run(&Batch::from_lines(&self.scenario_id, jsonl))
    }

    /// Processes a batch of one event with this value.
    ///
    /// ```
    /// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin, Harness, Status};
    /// # struct All;
    /// # impl Plugin for All {
    /// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
    /// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
    /// # }
    /// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
    /// let result = Harness::filter::<All>("{}")?.run_one("");
    /// assert_eq!(result.status, Status::Emitted);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn run_one(&self, value: &str) -> EventResult {
        let mut batch = Batch::new(&self.scenario_id);
        batch.push(value.as_bytes());
        self.run(&batch).remove(0)
    }
}

/// Exports a plugin as the component's implementation of the `weir-plugin`
/// world. Write it once, at the top level of the plugin crate, naming the
/// plugin type and its kind: `filter`, `map`, `filter_map`, `flat_map` or
/// `scenario`.
///
/// ```
/// # use weir_sdk::{Error, Event, Filter, NoConfig, Plugin};
/// # struct All;
/// # impl Plugin for All {
/// #     const NAME: &'static str = "all"; const VERSION: &'static str = "0.1.0";
/// #     const DESCRIPTION: &'static str = "x"; type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, Error> { Ok(All) }
/// # }
/// # impl Filter for All { fn keep(&self, _: &Event<'_>) -> Result<bool, Error> { Ok(true) } }
/// weir_sdk::export!(All as filter);
/// ```
///
/// Outside `wasm32` it only checks that the type implements the named kind,
/// so the crate also builds natively (an `rlib` for tests and benchmarks)
/// without exporting symbols.
#[macro_export]
macro_rules! export {
    ($plugin:ty as filter) => {
        $crate::__export_adapter!($crate::__private::AsFilter<$plugin>);
    };
    ($plugin:ty as map) => {
        $crate::__export_adapter!($crate::__private::AsMap<$plugin>);
    };
    ($plugin:ty as filter_map) => {
        $crate::__export_adapter!($crate::__private::AsFilterMap<$plugin>);
    };
    ($plugin:ty as flat_map) => {
        $crate::__export_adapter!($crate::__private::AsFlatMap<$plugin>);
    };
    ($plugin:ty as scenario) => {
        $crate::__export_adapter!($crate::__private::AsScenario<$plugin>);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_adapter {
    ($adapter:ty) => {
        // The export glue wit-bindgen generates defines `extern "C"` functions
        // with `#[unsafe(export_name)]`: unsafe by nature, and the only unsafe
        // code a plugin crate contains.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            type __WeirGlue = $crate::__private::Glue<$adapter>;
    $crate::__bindings::__export_weir_plugin!(__WeirGlue with_types_in $crate::__bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: $crate::PluginKind = <$adapter as $crate::__private::KindAdapter>::KIND;
    };
}

/// The guest bindings of `wit/plugin.wit`, generated by wit-bindgen. Plugin
/// code never needs them; [`export!`] wires a plugin to them.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs)] // wit-bindgen's generated ABI glue is unsafe by nature.
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "weir-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_weir_plugin",
    });
}

#[doc(hidden)]
pub mod __private {
    //! Glue between the kind traits, the batch loop and the generated
    //! bindings. Public only because [`export!`](crate::export) expands in
    //! plugin crates.

    use std::any::Any;
    use std::cell::RefCell;
    use std::marker::PhantomData;

    use crate::__bindings::exports::weir::plugin::plugin::Guest;
    use crate::__bindings::weir::plugin::types as wit;
    use crate::batch::Values;
    use crate::{
        Batch, Error, Event, Filter, FilterMap, FlatMap, Header, Map, Output, Plugin, PluginKind,
        Record, Records, Scenario, Status, end_record,
    };

    /// How one kind trait drives the batch loop.
    pub trait KindAdapter: 'static {
        type Plugin: Plugin;
        const KIND: PluginKind;
        /// Handles one event, appending its records to `out`; returns `matched`.
        fn handle(
            plugin: &Self::Plugin,
            event: &Event<'_>,
            out: &mut Output,
        ) -> Result<bool, Error>;
    }

    #[derive(Debug)]
    pub struct AsFilter<P>(PhantomData<P>);
    #[derive(Debug)]
    pub struct AsMap<P>(PhantomData<P>);
    #[derive(Debug)]
    pub struct AsFilterMap<P>(PhantomData<P>);
    #[derive(Debug)]
    pub struct AsFlatMap<P>(PhantomData<P>);
    #[derive(Debug)]
    pub struct AsScenario<P>(PhantomData<P>);

    impl<P: Filter> KindAdapter for AsFilter<P> {
        type Plugin = P;
        const KIND: PluginKind = PluginKind::Filter;
        fn handle(plugin: &P, event: &Event<'_>, out: &mut Output) -> Result<bool, Error> {
            let keep = plugin.keep(event)?;
            if keep {
                out.records.extend_from_slice(event.value());
                end_record(out);
            }
            Ok(keep)
        }
    }

    impl<P: Map> KindAdapter for AsMap<P> {
        type Plugin = P;
        const KIND: PluginKind = PluginKind::Map;
        fn handle(plugin: &P, event: &Event<'_>, out: &mut Output) -> Result<bool, Error> {
            plugin.map(event, &mut Record::new(&mut out.records))?;
            end_record(out);
            Ok(true)
        }
    }

    impl<P: FilterMap> KindAdapter for AsFilterMap<P> {
        type Plugin = P;
        const KIND: PluginKind = PluginKind::FilterMap;
        fn handle(plugin: &P, event: &Event<'_>, out: &mut Output) -> Result<bool, Error> {
            let start = out.records.len();
            let emit = plugin.filter_map(event, &mut Record::new(&mut out.records))?;
            if emit {
                end_record(out);
            } else {
                out.records.truncate(start);
            }
            Ok(emit)
        }
    }

    impl<P: FlatMap> KindAdapter for AsFlatMap<P> {
        type Plugin = P;
        const KIND: PluginKind = PluginKind::FlatMap;
        fn handle(plugin: &P, event: &Event<'_>, out: &mut Output) -> Result<bool, Error> {
            let mut records = Records::new(out);
            plugin.flat_map(event, &mut records)?;
            Ok(records.count() > 0)
        }
    }

    impl<P: Scenario> KindAdapter for AsScenario<P> {
        type Plugin = P;
        const KIND: PluginKind = PluginKind::Scenario;
        fn handle(plugin: &P, event: &Event<'_>, out: &mut Output) -> Result<bool, Error> {
            let matched = plugin.evaluate(event, &mut Record::new(&mut out.records))?;
            end_record(out);
            Ok(matched)
        }
    }

    thread_local! {
        /// The configured plugin of this instance. A component instance is
        /// single-threaded, so a thread-local is the instance's global state.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// Implements the exported `plugin` interface for the plugin `K` adapts.
    #[derive(Debug)]
    pub struct Glue<K>(PhantomData<K>);

    impl<K: KindAdapter> Guest for Glue<K> {
        fn describe() -> wit::Info {
            wit::Info {
                name: K::Plugin::NAME.to_owned(),
                version: K::Plugin::VERSION.to_owned(),
                kind: match K::KIND {
                    PluginKind::Filter => wit::Kind::Filter,
                    PluginKind::Map => wit::Kind::Map,
                    PluginKind::FilterMap => wit::Kind::FilterMap,
                    PluginKind::FlatMap => wit::Kind::FlatMap,
                    PluginKind::Scenario => wit::Kind::Scenario,
                },
                description: K::Plugin::DESCRIPTION.to_owned(),
                config_schema: K::Plugin::CONFIG_SCHEMA.to_owned(),
            }
        }

        fn configure(config: String) -> Result<(), String> {
            let result = crate::configure::<K::Plugin>(&config);
            INSTANCE.with(|instance| {
                let mut instance = instance.borrow_mut();
                match result {
                    Ok(plugin) => {
                        *instance = Some(Box::new(plugin));
                        Ok(())
                    }
                    Err(error) => {
                        *instance = None;
                        Err(error.into_message())
                    }
                }
            })
        }

        fn process(batch: wit::Batch) -> wit::Output {
            let batch = from_wit(batch);
            let output = INSTANCE.with(|instance| {
                let instance = instance.borrow();
                match instance
                    .as_ref()
                    .and_then(|p| p.downcast_ref::<K::Plugin>())
                {
                    Some(plugin) => crate::process::<K>(plugin, &batch),
                    None => not_configured(batch.len()),
                }
            });
            to_wit(output)
        }
    }

    fn not_configured(events: usize) -> Output {
        let mut output = Output::with_capacity(events, 0);
        for _ in 0..events {
            output.outcomes.push(crate::Outcome {
                status: Status::Failed,
                matched: false,
                records: 0,
                error: Some("process called before configure succeeded".to_owned()),
            });
        }
        output
    }

    /// Moves the columns out of the generated type: no byte is copied.
    fn from_wit(batch: wit::Batch) -> Batch {
        let keys = batch.keys.unwrap_or(wit::EventKeys {
            present: Vec::new(),
            bytes: Vec::new(),
            ends: Vec::new(),
        });
        let (headers, header_ends) = match batch.headers {
            Some(headers) => (
                headers
                    .items
                    .into_iter()
                    .map(|h| Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
                headers.ends,
            ),
            None => (Vec::new(), Vec::new()),
        };
        Batch {
            scenario_id: batch.scenario_id,
            topic: batch.topic,
            partition: batch.partition,
            offsets: batch.offsets,
            values: match batch.values {
                wit::EventValues::Text(text) => Values::Text(text),
                wit::EventValues::Bytes(bytes) => Values::Bytes(bytes),
            },
            value_ends: batch.value_ends,
            timestamps: batch.timestamps,
            key_present: keys.present,
            keys: keys.bytes,
            key_ends: keys.ends,
            headers,
            header_ends,
        }
    }

    /// `output.outcomes` values: the status in the low two bits, 4 for matched.
    const EMITTED: u8 = 1;
    const FAILED: u8 = 2;
    const MATCHED: u8 = 4;

    fn to_wit(output: Output) -> wit::Output {
        let events = output.outcomes.len();
        let mut outcomes = Vec::with_capacity(events);
        let mut record_counts = Vec::with_capacity(events);
        let mut errors = Vec::new();
        for outcome in output.outcomes {
            let status = match outcome.status {
                Status::Dropped => 0,
                Status::Emitted => EMITTED,
                Status::Failed => {
                    errors.push(outcome.error.unwrap_or_default());
                    FAILED
                }
            };
            outcomes.push(status | if outcome.matched { MATCHED } else { 0 });
            record_counts.push(outcome.records);
        }
        wit::Output {
            outcomes,
            record_counts,
            errors,
            records: output.records,
            record_ends: output.record_ends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only its deserialization is under test
    struct Config {
        rules: Vec<Rule>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rule {
        op: Op,
    }

    #[derive(serde::Deserialize)]
    enum Op {
        #[serde(rename = "==")]
        Eq,
    }

    /// Writes half a record, then fails on events without `ok`.
    struct HalfWriter;

    impl Plugin for HalfWriter {
        const NAME: &'static str = "half-writer";
        const VERSION: &'static str = "0.1.0";
        const DESCRIPTION: &'static str = "test";
        type Config = Config;
        fn new(_: Config) -> Result<Self, Error> {
            Ok(HalfWriter)
        }
    }

    impl FilterMap for HalfWriter {
        fn filter_map(&self, event: &Event<'_>, out: &mut Record<'_>) -> Result<bool, Error> {
            out.push(b"partial");
            match event.bool("ok")? {
                Some(true) => Ok(true),
                Some(false) => Ok(false),
                None => Err("no ok".into()),
            }
        }
    }

    impl FlatMap for HalfWriter {
        fn flat_map(&self, event: &Event<'_>, out: &mut Records<'_>) -> Result<(), Error> {
            for _ in 0..event.i64("n")?.unwrap_or(0) {
                out.push(b"r");
            }
            if event.has("fail")? {
                return Err("asked to fail".into());
            }
            Ok(())
        }
    }

    const CONFIG: &str = r#"{"rules":[{"op":"=="}]}"#;

    #[test]
    fn config_errors_name_the_field() {
        let err = Harness::filter_map::<HalfWriter>(r#"{"rules":[{"op":"=="},{"op":"=~"}]}"#)
            .unwrap_err();
        assert!(
            err.message()
                .starts_with("config field `rules[1].op`: unknown variant `=~`, expected `==`"),
            "{err}"
        );
        let err = Harness::filter_map::<HalfWriter>(r#"{"rules":[],"x":1}"#).unwrap_err();
        assert!(err.message().contains("unknown field `x`"), "{err}");
        let err = Harness::filter_map::<HalfWriter>("{}").unwrap_err();
        assert!(
            err.message().starts_with("config: missing field `rules`"),
            "{err}"
        );
        let err = Harness::filter_map::<HalfWriter>(r#"{"rules":[]} trailing"#).unwrap_err();
        assert!(
            err.message().starts_with("config: trailing characters"),
            "{err}"
        );
    }

    #[test]
    fn failed_and_dropped_events_leave_no_bytes_behind() {
        let harness = Harness::filter_map::<HalfWriter>(CONFIG).unwrap();
        let batch = Batch::from_lines(
            "1",
            "{\"ok\":true}\n{}\n{\"ok\":false}\n{\"ok\":true}\nnot json",
        );
        let output = harness.process(&batch);
        assert_eq!(output.records, b"partialpartial");
        assert_eq!(output.record_ends, [7, 14]);
        let statuses: Vec<Status> = output.outcomes.iter().map(|o| o.status).collect();
        use Status::*;
        assert_eq!(statuses, [Emitted, Failed, Dropped, Emitted, Failed]);
        assert_eq!(output.outcomes[1].error.as_deref(), Some("no ok"));
        let reason = output.outcomes[4].error.as_deref().unwrap();
        assert!(
            reason.starts_with("value is not valid JSON: expected ident"),
            "{reason}"
        );
    }

    #[test]
    fn flat_map_counts_records_and_matches_when_any() {
        let harness = Harness::flat_map::<HalfWriter>(CONFIG).unwrap();
        let results = harness.run_lines("{\"n\":3}\n{\"n\":0}\n{\"n\":2,\"fail\":1}\n{\"n\":1}");
        assert_eq!(results[0].records.len(), 3);
        assert!(results[0].matched);
        assert_eq!(results[1].status, Status::Dropped);
        assert!(!results[1].matched);
        assert_eq!(results[2].status, Status::Failed);
        assert!(results[2].records.is_empty());
        assert_eq!(results[3].records, [b"r"]);
    }

    #[test]
    fn columns_that_do_not_describe_an_event_fail_that_event_only() {
        let harness = Harness::flat_map::<HalfWriter>(CONFIG).unwrap();
        let mut batch = Batch::from_lines("1", &"{\"n\":1}\n".repeat(4));
        // An end offset past the buffer breaks its event and the next one,
        // which starts there.
        batch.value_ends[1] = 1000;
        batch.timestamps.truncate(3);
        let results = harness.run(&batch);
        assert_eq!(results[0].status, Status::Emitted);
        assert_eq!(
            results[1].error.as_deref(),
            Some("event value 7..1000 is outside batch.values (length 28)")
        );
        assert_eq!(
            results[2].error.as_deref(),
            Some("event value 1000..21 is outside batch.values (length 28)")
        );
        assert_eq!(
            results[3].error.as_deref(),
            Some("batch.timestamps has no entry for event 3")
        );
    }

    #[test]
    fn glue_converts_the_generated_types_and_refuses_to_run_unconfigured() {
        use __bindings::exports::weir::plugin::plugin::Guest;
        use __bindings::weir::plugin::types as wit;
        type G = __private::Glue<__private::AsFilterMap<HalfWriter>>;

        let info = G::describe();
        assert_eq!(info.name, "half-writer");
        assert!(matches!(info.kind, wit::Kind::FilterMap));

        let values = r#"{"ok":true}{"ok":false}"#;
        let batch = || wit::Batch {
            scenario_id: "5".into(),
            topic: "t".into(),
            partition: 0,
            offsets: vec![10, 11],
            values: wit::EventValues::Text(values.into()),
            value_ends: vec![11, 23],
            timestamps: vec![0, i64::MIN],
            keys: None,
            headers: None,
        };

        assert!(G::configure("{".into()).is_err());
        let output = G::process(batch());
        assert_eq!(output.outcomes, [2, 2], "both failed");
        assert_eq!(output.errors.len(), 2);
        assert!(
            output
                .errors
                .iter()
                .all(|e| e == "process called before configure succeeded")
        );

        G::configure(CONFIG.into()).unwrap();
        let output = G::process(batch());
        assert_eq!(output.outcomes, [1 | 4, 0], "emitted and matched, dropped");
        assert_eq!(output.record_counts, [1, 0]);
        assert!(output.errors.is_empty());
        assert_eq!(output.records, b"partial");
        assert_eq!(output.record_ends, [7]);
    }
}
