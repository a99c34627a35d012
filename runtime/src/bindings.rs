//! Host bindings generated from `wit/plugin.wit` (`weir:plugin@0.1.0`).
//!
//! This is the only place `bindgen!` runs; the rest of the runtime uses the
//! few names re-exported below and never the generated modules directly.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "weir-plugin",
    additional_derives: [PartialEq],
});

pub(crate) use self::weir::plugin::types::{
    Batch, EventHeaders, EventKeys, EventValues, Header, Info, Kind, Output,
};
pub(crate) use WeirPluginPre as BindingsPre;

/// `batch.timestamps` entry of an event without a timestamp.
pub(crate) const NO_TIMESTAMP: i64 = i64::MIN;
/// `output.outcomes` status values, in the low two bits.
pub(crate) const EMITTED: u8 = 1;
pub(crate) const FAILED: u8 = 2;
pub(crate) const STATUS_MASK: u8 = 3;
/// `output.outcomes` bit: the event matched the scenario.
pub(crate) const MATCHED: u8 = 4;

/// The WIT package version this host accepts, as it appears in import and export names.
pub const WIT_VERSION: &str = "0.1.0";

/// The export a plugin must provide.
pub(crate) const PLUGIN_EXPORT: &str = "weir:plugin/plugin@0.1.0";

/// The types-only interface a plugin may import (it carries no functions).
pub(crate) const TYPES_IMPORT: &str = "weir:plugin/types@0.1.0";
