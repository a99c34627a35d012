//! Builds every guest crate of the workspace for `wasm32-wasip2` and generates
//! `artifacts.rs` with one path constant per component (see `src/lib.rs`).
//!
//! Guest crates are found, not listed: every directory under `plugins/` and
//! `tests/fixtures/` with a `Cargo.toml` is one. They are built by ONE nested
//! `cargo build --release --target wasm32-wasip2 -p ...` with its own target
//! directory (`target/wasm-artifacts`): the outer cargo holds the lock of
//! `target/`, so sharing it would deadlock.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// First bytes of a binary component (magic, then version 0x0d and layer 1).
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A core WebAssembly module (not a component) exporting `process: func()`.
/// Written out as the `core-module` fixture: the host must refuse it.
const CORE_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1 (core)
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: one type, func() -> ()
    0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
    0x07, 0x0b, 0x01, 0x07, b'p', b'r', b'o', b'c', b'e', b's', b's', 0x00,
    0x00, // export section: "process" = func 0
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section: one empty body
];

/// One guest crate: where it lives and what it is called.
struct Guest {
    /// `plugin` or `fixture`.
    group: &'static str,
    /// Directory name, e.g. `endless-loop`.
    dir_name: String,
    /// Cargo package name, e.g. `weir-fixture-endless-loop`.
    package: String,
    /// Absolute path of the built component.
    wasm: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("tests/artifacts sits two levels below the workspace root")
        .to_path_buf();
    let target_dir = workspace.join("target").join("wasm-artifacts");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    // A directory here means "any file below it" to cargo.
    for watched in [
        "wit",
        "sdk",
        "plugins",
        "tests/fixtures",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    let mut guests = Vec::new();
    discover(
        &workspace.join("plugins"),
        "plugin",
        &target_dir,
        &mut guests,
    );
    discover(
        &workspace.join("tests").join("fixtures"),
        "fixture",
        &target_dir,
        &mut guests,
    );

    if !guests.is_empty() {
        build(&workspace, &target_dir, &guests);
    }
    for guest in &guests {
        check_component(guest);
    }

    fs::create_dir_all(&target_dir).expect("create target/wasm-artifacts");
    let core_module = target_dir.join("core-module.wasm");
    fs::write(&core_module, CORE_MODULE).expect("write core-module.wasm");
    guests.extend(text_fixtures(
        &workspace.join("tests").join("fixtures"),
        &target_dir,
    ));
    guests.push(compile_bomb(&target_dir));

    let code = generate(&guests, &core_module);
    fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}

/// Adds every crate directly below `dir` (a directory holding a `Cargo.toml`).
fn discover(dir: &Path, group: &'static str, target_dir: &Path, guests: &mut Vec<Guest>) {
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

/// Components written by hand in the text format (`tests/fixtures/*.wat`),
/// for shapes no Rust toolchain emits (several memories, say). Each is
/// assembled here into `target/wasm-artifacts/<name>.wasm`.
fn text_fixtures(dir: &Path, target_dir: &Path) -> Vec<Guest> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read tests/fixtures")
        .map(|entry| entry.expect("read directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wat"))
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|path| {
            let dir_name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .expect("UTF-8 fixture name")
                .to_owned();
            let bytes = wat::parse_file(&path)
                .unwrap_or_else(|e| panic!("assemble {}: {e}", path.display()));
            let wasm = target_dir.join(format!("{dir_name}.wasm"));
            fs::write(&wasm, bytes).unwrap_or_else(|e| panic!("write {}: {e}", wasm.display()));
            Guest {
                group: "fixture",
                package: format!("{dir_name}.wat"),
                dir_name,
                wasm,
            }
        })
        .collect()
}

/// The `compile-bomb` fixture: a small component (about 0.3 MB) whose one
/// function nests 100,000 blocks, which Cranelift takes tens of seconds and
/// over a gigabyte to compile (the cost grows with the square of the depth).
/// The host must refuse it before compiling. Generated, not checked in.
fn compile_bomb(target_dir: &Path) -> Guest {
    const DEPTH: usize = 100_000;
    let text = format!(
        "(component (core module (func {} {})))",
        "block ".repeat(DEPTH),
        "end ".repeat(DEPTH)
    );
    let bytes = wat::parse_str(&text).expect("assemble the compile bomb");
    let wasm = target_dir.join("compile-bomb.wasm");
    fs::write(&wasm, bytes).expect("write compile-bomb.wasm");
    Guest {
        group: "fixture",
        dir_name: "compile-bomb".to_owned(),
        package: "(generated by tests/artifacts/build.rs)".to_owned(),
        wasm,
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

fn build(workspace: &Path, target_dir: &Path, guests: &[Guest]) {
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
fn check_component(guest: &Guest) {
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

fn generate(guests: &[Guest], core_module: &Path) -> String {
    let mut code = String::from("// Generated by tests/artifacts/build.rs. Do not edit.\n\n");
    let mut plugins = Vec::new();
    let mut fixtures = Vec::new();
    let mut shipped = String::new();
    for guest in guests {
        let konst = format!(
            "{}_{}",
            guest.group.to_uppercase(),
            guest.dir_name.to_uppercase().replace('-', "_")
        );
        let what = if guest.group == "plugin" {
            format!("The shipped plugin `plugins/{}`", guest.dir_name)
        } else {
            format!("The test fixture `tests/fixtures/{}`", guest.dir_name)
        };
        writeln!(
            code,
            "/// {what} (crate `{}`), a `{TARGET}` component.\npub const {konst}: &str = {:?};",
            guest.package,
            guest.wasm.display().to_string()
        )
        .unwrap();
        if guest.group == "plugin" {
            // `include_bytes!` takes a literal, not the constant.
            writeln!(
                shipped,
                "    ({:?}, include_bytes!({:?})),",
                guest.dir_name,
                guest.wasm.display().to_string()
            )
            .unwrap();
        }
        let entry = (guest.dir_name.clone(), konst);
        if guest.group == "plugin" {
            plugins.push(entry);
        } else {
            fixtures.push(entry);
        }
    }
    writeln!(
        code,
        "/// The test fixture `core-module`: a core WebAssembly module, not a component;\n\
         /// the host must refuse to load it.\npub const FIXTURE_CORE_MODULE: &str = {:?};",
        core_module.display().to_string()
    )
    .unwrap();
    fixtures.push(("core-module".into(), "FIXTURE_CORE_MODULE".into()));
    fixtures.sort();

    let table = |items: &[(String, String)]| {
        items
            .iter()
            .map(|(name, konst)| format!("    ({name:?}, {konst}),\n"))
            .collect::<String>()
    };
    let invocations = |items: &[(String, String)]| {
        items
            .iter()
            .map(|(name, _)| format!("        $m!({});\n", name.replace('-', "_")))
            .collect::<String>()
    };
    // The shipped plugins' bytes too, so `weir serve` can carry them in its binary.
    write!(
        code,
        "\n/// Every shipped plugin as `(directory name, component bytes)`, built in.\n\
         pub static SHIPPED: &[(&str, &[u8])] = &[\n{shipped}];\n"
    )
    .unwrap();
    write!(
        code,
        "\n/// Every shipped plugin as `(directory name, path)`.\n\
         pub const PLUGINS: &[(&str, &str)] = &[\n{}];\n\
         \n/// Every test fixture as `(directory name, path)`.\n\
         pub const FIXTURES: &[(&str, &str)] = &[\n{}];\n\
         \n/// Every artifact, plugins then fixtures, as `(directory name, path)`.\n\
         pub const ALL: &[(&str, &str)] = &[\n{}{}];\n\
         \n/// Calls `$m!(name)` once per test fixture, `name` being its directory name in\n\
         /// snake case. See the crate documentation for how tests use it.\n\
         #[macro_export]\nmacro_rules! foreach_fixture {{\n    ($m:ident) => {{\n{}    }};\n}}\n\
         \n/// Calls `$m!(name)` once per shipped plugin, `name` being its directory name in\n\
         /// snake case.\n\
         #[macro_export]\nmacro_rules! foreach_plugin {{\n    ($m:ident) => {{\n{}    }};\n}}\n",
        table(&plugins),
        table(&fixtures),
        table(&plugins),
        table(&fixtures),
        invocations(&fixtures),
        invocations(&plugins),
    )
    .unwrap();
    code
}
