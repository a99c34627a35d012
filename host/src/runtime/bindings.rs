//! Host bindings generated from `wit/plugin.wit` (`weir:plugin@0.1.0`).
//!
//! This is the only place `bindgen!` runs; the rest of the runtime uses the
//! few names re-exported below and never the generated modules directly.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "weir-plugin",
    additional_derives: [PartialEq],
});

#[cfg(test)]
pub(crate) use self::weir::plugin::types::Outcome;
pub(crate) use self::weir::plugin::types::{
    Batch, Event, Header, Info, Kind, Output, Span, Status,
};
pub(crate) use WeirPluginPre as BindingsPre;

/// The WIT package version this host accepts, as it appears in import and export names.
pub(crate) const WIT_VERSION: &str = "0.1.0";

/// The export a plugin must provide.
pub(crate) const PLUGIN_EXPORT: &str = "weir:plugin/plugin@0.1.0";

/// The types-only interface a plugin may import (it carries no functions).
pub(crate) const TYPES_IMPORT: &str = "weir:plugin/types@0.1.0";
