//! The plugins weir ships, built for `wasm32-wasip2` and carried in the
//! binary: `weir serve` installs [`SHIPPED`] on start.
//!
//! The build script finds every guest crate under `plugins/` (a directory
//! with a `Cargo.toml` whose library is a `cdylib`; this crate is not one),
//! builds them with one nested `cargo build --release --target wasm32-wasip2`
//! into `target/wasm-artifacts/`, and fails unless each is a component. It
//! reruns when anything under `wit/`, `sdk/` or `plugins/` changes. Test
//! fixtures are built elsewhere (`weir-artifacts`, a dev-dependency only), so a
//! release build of weir never builds them.
//!
//! For each plugin there is a path constant `PLUGIN_<DIR>` (upper case, `-`
//! becomes `_`), e.g. [`PLUGIN_SCENARIO`]:
//!
//! ```
//! let bytes = std::fs::read(weir_plugins::PLUGIN_SCENARIO).unwrap();
//! assert_eq!(&bytes[..4], b"\0asm");
//! assert!(weir_plugins::SHIPPED.iter().any(|(name, _)| *name == "scenario"));
//! ```

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
