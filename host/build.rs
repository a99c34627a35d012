//! Carries the SDK's sources and the WIT contract into the `weir` binary, for
//! `weir plugin new` (`src/cli/scaffold.rs`): a plugin crate made on a machine
//! without this repository builds against exactly the contract this weir
//! accepts. The SDK's manifest is rewritten to stand alone: its dependencies
//! at the versions the workspace pins, without the runtime-backed `testing`
//! layer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    let sdk = root.join("sdk");
    let wit = root.join("wit");
    for watched in [
        sdk.join("src"),
        sdk.join("Cargo.toml"),
        wit.clone(),
        root.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    let mut files = Vec::new();
    collect(&sdk.join("src"), &root, "rs", &mut files);
    collect(&wit, &root, "wit", &mut files);
    // The runtime-backed layer needs weir-runtime (wasmtime): it stays home.
    files.retain(|(relative, _)| relative != "sdk/src/testing.rs");
    files.sort();
    assert!(
        files.iter().any(|(r, _)| r == "sdk/src/lib.rs")
            && files.iter().any(|(r, _)| r.starts_with("wit/")),
        "the SDK's sources and the WIT files are where build.rs expects them"
    );

    let workspace =
        std::fs::read_to_string(root.join("Cargo.toml")).expect("the workspace manifest");
    let pinned = |name: &str| -> String {
        workspace
            .lines()
            .find(|line| line.split('=').next().is_some_and(|key| key.trim() == name))
            .unwrap_or_else(|| panic!("[workspace.dependencies] has no `{name}`"))
            .trim()
            .to_owned()
    };
    let package = |key: &str| -> String {
        let line = pinned(key);
        line.split_once('=')
            .expect("key = value")
            .1
            .trim()
            .trim_matches('"')
            .to_owned()
    };
    let edition = package("edition");
    let version = package("version");
    let sdk_manifest = format!(
        "[package]\nname = \"weir-sdk\"\nversion = \"{version}\"\nedition = \"{edition}\"\npublish = false\n\
         description = \"Write weir plugins: one function and one export line (carried by weir {version}).\"\n\n\
         [dependencies]\n{}\n{}\n{}\n{}\n\n\
         [lints.rust]\n\
         # The `testing` layer (runs built components through weir's runtime) is not carried.\n\
         unexpected_cfgs = {{ level = \"warn\", check-cfg = ['cfg(feature, values(\"testing\"))'] }}\n",
        pinned("wit-bindgen"),
        pinned("serde"),
        pinned("serde_json"),
        pinned("serde_path_to_error"),
    );

    let mut out = String::new();
    out.push_str("/// The SDK's sources and the WIT files, by path under `.weir/`.\n");
    out.push_str("pub(super) const SDK_FILES: &[(&str, &str)] = &[\n");
    for (relative, path) in &files {
        let _ = writeln!(
            out,
            "    ({relative:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let _ = writeln!(
        out,
        "/// The SDK's manifest, standing alone.\npub(super) const SDK_MANIFEST: &str = {sdk_manifest:?};"
    );
    let _ = writeln!(
        out,
        "/// The workspace's edition.\npub(super) const EDITION: &str = {edition:?};"
    );
    let _ = writeln!(
        out,
        "/// The serde line of the workspace's dependencies.\npub(super) const SERDE: &str = {:?};",
        pinned("serde")
    );
    let _ = writeln!(
        out,
        "/// The serde_json line of the workspace's dependencies.\npub(super) const SERDE_JSON: &str = {:?};",
        pinned("serde_json")
    );
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out_dir.join("sdk_files.rs"), out).expect("writing sdk_files.rs");
}

/// Every file ending in `.ext` under `dir`, as (path relative to `root`, path).
fn collect(dir: &Path, root: &Path, ext: &str, files: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, root, ext, files);
        } else if path.extension().is_some_and(|e| e == ext) {
            let relative = path
                .strip_prefix(root)
                .expect("under the root")
                .display()
                .to_string();
            files.push((relative, path));
        }
    }
}
