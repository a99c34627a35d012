//! Paths of every guest component the tests use, built for `wasm32-wasip2`:
//! the test fixtures (built here) and the shipped plugins (built by
//! `weir-plugins` and re-exported here, so tests name both from one place).
//!
//! Depend on this crate as a dev-dependency to get ready-built `.wasm` files
//! in tests and benchmarks:
//!
//! ```
//! let bytes = std::fs::read(weir_artifacts::FIXTURE_PASSTHROUGH).unwrap();
//! assert_eq!(&bytes[..4], b"\0asm");
//! ```
//!
//! # What is built
//!
//! The build script finds every guest crate under `tests/fixtures/` (hostile
//! ones included) and builds them with one nested
//! `cargo build --release --target wasm32-wasip2 -p <crate>...` into
//! `target/wasm-artifacts/` (a separate target directory, because the outer
//! cargo holds the lock of `target/`; `plugins/bundle/guests.rs` has the code
//! both build scripts share). Each crate is a `cdylib`, which for
//! `wasm32-wasip2` is already a component; the build fails if one is not.
//! Fixtures written in the component text format (`tests/fixtures/*.wat`) are
//! assembled, and two are generated: [`FIXTURE_CORE_MODULE`], a tiny core
//! module (not a component) for the "a core module is refused" tests, and
//! [`FIXTURE_COMPILE_BOMB`], a component too costly to compile. It reruns
//! when anything under `wit/`, `sdk/` or `tests/fixtures/` changes.
//!
//! Each fixture has a constant holding the absolute path of its component,
//! `FIXTURE_<DIR>` (upper case, `-` becomes `_`), e.g. [`FIXTURE_PASSTHROUGH`];
//! each shipped plugin `PLUGIN_<DIR>`. [`PLUGINS`] and [`FIXTURES`] list them
//! as `(directory name, path)`, and [`all`] both.
//!
//! # A fixture without a test is a build error
//!
//! [`foreach_fixture!`] calls a macro once per fixture with the fixture's
//! directory name in snake case. The runtime's test module for fixtures must
//! invoke it with a macro that names a test function of that name:
//!
//! ```text
//! macro_rules! assert_fixture_has_test {
//!     ($name:ident) => {
//!         #[allow(unused_imports)]
//!         use self::$name as _;
//!     };
//! }
//! weir_artifacts::foreach_fixture!(assert_fixture_has_test);
//!
//! #[test]
//! fn endless_loop() { /* load FIXTURE_ENDLESS_LOOP, prove it is contained */ }
//! ```
//!
//! Adding a directory under `tests/fixtures/` adds a constant and a
//! `foreach_fixture!` entry; until a test function with its name exists in
//! that module, `use self::<name>` does not resolve and the test binary does
//! not compile. This is exactly what fails, and nothing more: the check is
//! that a test of that name exists, not what it asserts. [`foreach_plugin!`]
//! does the same for shipped plugins.

pub use weir_plugins::*;

/// Every artifact, plugins then fixtures, as `(directory name, path)`.
pub fn all() -> impl Iterator<Item = (&'static str, &'static str)> {
    PLUGINS.iter().chain(FIXTURES).copied()
}

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    const CORE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

    fn header(path: &str) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        bytes[..8].to_vec()
    }

    #[test]
    fn every_artifact_is_a_component_except_the_core_module() {
        assert_eq!(all().count(), PLUGINS.len() + FIXTURES.len());
        for (name, path) in all() {
            assert!(path.ends_with(".wasm"), "{name}: {path}");
            let expected = if name == "core-module" {
                CORE_HEADER
            } else {
                COMPONENT_HEADER
            };
            assert_eq!(header(path), expected, "{name}: {path}");
        }
    }

    /// The top-level import and export names of a component.
    fn interface(path: &str) -> (Vec<String>, Vec<String>) {
        use wasmparser::{Parser, Payload};
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let (mut imports, mut exports) = (Vec::new(), Vec::new());
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(&bytes) {
            match payload.unwrap_or_else(|e| panic!("parse {path}: {e}")) {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(reader) if depth == 0 => {
                    for import in reader {
                        imports.push(import.unwrap().name.name.to_owned());
                    }
                }
                Payload::ComponentExportSection(reader) if depth == 0 => {
                    for export in reader {
                        exports.push(export.unwrap().name.name.to_owned());
                    }
                }
                _ => {}
            }
        }
        (imports, exports)
    }

    #[test]
    fn components_export_the_plugin_interface_of_their_version() {
        for (name, path) in all().filter(|(name, _)| *name != "core-module") {
            let (_, exports) = interface(path);
            let expected: &[&str] = match name {
                "wrong-world" => &["weir:plugin/plugin@0.2.0"],
                // Refused for their cost before anything looks at their interface.
                "compile-bomb" | "slow-compile" => &[],
                _ => &["weir:plugin/plugin@0.1.0"],
            };
            assert_eq!(exports, expected, "{name}: {path}");
        }
    }

    #[test]
    fn only_forbidden_import_imports_sockets_or_filesystem() {
        for (name, path) in all().filter(|(name, _)| *name != "core-module") {
            let (imports, _) = interface(path);
            let sockets = imports.iter().any(|i| i.starts_with("wasi:sockets/tcp"));
            let preopens = imports
                .iter()
                .any(|i| i.starts_with("wasi:filesystem/preopens"));
            if name == "forbidden-import" {
                assert!(sockets && preopens, "{name} imports only {imports:?}");
            } else {
                assert!(!sockets, "{name} imports wasi:sockets: {imports:?}");
            }
        }
    }

    #[test]
    fn foreach_fixture_names_every_fixture() {
        let mut named = Vec::new();
        macro_rules! collect {
            ($name:ident) => {
                named.push(stringify!($name).replace('_', "-"));
            };
        }
        foreach_fixture!(collect);
        let listed: Vec<String> = FIXTURES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(named, listed);
        assert!(listed.contains(&"passthrough".to_string()));
        assert!(listed.contains(&"core-module".to_string()));
    }
}
