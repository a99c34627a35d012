//! Building guest crates for `wasm32-wasip2`: shared by the build scripts of
//! `weir-plugins` (the shipped plugins, `plugins/*`) and `weir-artifacts` (the
//! test fixtures, `tests/fixtures/*`), each of which includes this file with
//! `#[path]`.
//!
//! Guest crates are found, not listed: every directory with a `Cargo.toml`
//! whose library is a `cdylib`. They are built by ONE nested
//! `cargo build --release --target wasm32-wasip2 -p ...` per build script, with
//! its own target directory (`target/wasm-artifacts`): the outer cargo holds
//! the lock of `target/`, so sharing it would deadlock.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip2";

/// First bytes of a binary component (magic, then version 0x0d and layer 1).
pub const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// One guest crate: where it lives and what it is called.
pub struct Guest {
    /// `plugin` or `fixture`.
    pub group: &'static str,
    /// Directory name, e.g. `endless-loop`.
    pub dir_name: String,
    /// Cargo package name, e.g. `weir-fixture-endless-loop`.
    pub package: String,
    /// Absolute path of the built component.
    pub wasm: PathBuf,
}

/// `target/wasm-artifacts` of the workspace two levels above `manifest_dir`.
pub fn workspace_and_target(manifest_dir: &Path) -> (PathBuf, PathBuf) {
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("the crate sits two levels below the workspace root")
        .to_path_buf();
    let target_dir = workspace.join("target").join("wasm-artifacts");
    (workspace, target_dir)
}

/// Tells cargo to rerun the build script when anything below these paths of
/// the workspace changes (a directory means any file below it).
pub fn watch(workspace: &Path, paths: &[&str]) {
    for watched in paths {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
}

/// The constant naming a guest's path: `PLUGIN_ACCESS_LOG`, `FIXTURE_PASSTHROUGH`.
pub fn constant(guest: &Guest) -> String {
    format!(
        "{}_{}",
        guest.group.to_uppercase(),
        guest.dir_name.to_uppercase().replace('-', "_")
    )
}

/// Adds every guest crate directly below `dir`: a directory holding a
/// `Cargo.toml` whose library is a `cdylib` (other crates there, such as the
/// one embedding the shipped plugins, are not guests).
pub fn discover(dir: &Path, group: &'static str, target_dir: &Path, guests: &mut Vec<Guest>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read directory entry").path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    found.sort();
    for crate_dir in found {
        let manifest = crate_dir.join("Cargo.toml");
        let text = fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("read {}: {e}", manifest.display()));
        let cdylib = text
            .lines()
            .any(|line| line.trim_start().starts_with("crate-type") && line.contains("\"cdylib\""));
        if !cdylib {
            continue;
        }
        let package = package_name(&text)
            .unwrap_or_else(|| panic!("{}: no `name = \"...\"` in [package]", manifest.display()));
        let dir_name = crate_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 crate directory name")
            .to_owned();
        let wasm = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        guests.push(Guest {
            group,
            dir_name,
            package,
            wasm,
        });
    }
}

/// The `name` of the `[package]` table; enough TOML for our own manifests.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

pub fn build(workspace: &Path, target_dir: &Path, guests: &[Guest]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(target_dir);
    for guest in guests {
        cmd.args(["-p", &guest.package]);
    }
    // The workspace's release profile keeps line tables for host backtraces; in
    // a component they are most of the bytes (2.4 MB instead of ~0.1 MB for the
    // passthrough fixture) and every test would pay for compiling them. The
    // symbol names stay, so trap backtraces still name guest functions.
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    // The outer cargo configures this build script's environment for the host
    // target; none of that must leak into a wasm build. `clippy-driver` comes in
    // through RUSTC_WORKSPACE_WRAPPER when the outer command is `cargo clippy`.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = [
            "CARGO_CFG_",
            "CARGO_FEATURE_",
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "DEP_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || matches!(
                key,
                "CARGO_ENCODED_RUSTFLAGS"
                    | "RUSTFLAGS"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_BUILD_TARGET"
                    | "CARGO_BUILD_TARGET_DIR"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_CRATE_NAME"
                    | "OUT_DIR"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if leaks {
            cmd.env_remove(key);
        }
    }
    eprintln!("running: {cmd:?}");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        status.success(),
        "building the guest components failed ({status}); run this to see why:\n  \
         cargo build --release --target {TARGET} --target-dir target/wasm-artifacts {}",
        guests
            .iter()
            .map(|g| format!("-p {}", g.package))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Every guest crate must produce a component (a `cdylib` for wasm32-wasip2),
/// never a core module: fail the build rather than hand tests the wrong thing.
pub fn check_component(guest: &Guest) {
    let bytes = fs::read(&guest.wasm).unwrap_or_else(|e| {
        panic!(
            "{} built but {} is missing ({e}); is its crate-type \"cdylib\"?",
            guest.package,
            guest.wasm.display()
        )
    });
    assert!(
        bytes.starts_with(&COMPONENT_HEADER),
        "{} is not a WebAssembly component (header {:02x?}, expected {:02x?})",
        guest.wasm.display(),
        &bytes[..bytes.len().min(8)],
        COMPONENT_HEADER
    );
}
