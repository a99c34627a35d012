//! `weir plugin new` and `weir plugin build`: a plugin crate that builds on a
//! machine with nothing but the package registry, and its component checked
//! the way the service checks uploads.
//!
//! The SDK comes with weir: its sources and the WIT contract are carried in
//! this binary (`build.rs` embeds them) and written next to the new crate, in
//! `.weir/sdk` and `.weir/wit`, so the plugin is built against exactly the
//! contract this weir accepts (`weir:plugin@0.1.0`). Its other dependencies
//! (wit-bindgen, serde) come from the registry at the versions weir uses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use weir::runtime::{Runtime, RuntimeConfig};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));
}

/// What a new plugin does with each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    /// Keeps or drops each event unchanged.
    Filter,
    /// Turns each event into exactly one record.
    Map,
    /// Turns each event into one record, or none.
    FilterMap,
    /// Turns each event into zero or more records.
    FlatMap,
    /// One record per event, matched or not (what scenarios count).
    Scenario,
}

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The plugin's name: lowercase letters, digits and `-`.
    name: String,
    /// What it does with each event.
    #[arg(long, value_enum, default_value_t = Kind::Filter)]
    kind: Kind,
    /// Where to make the crate (default `./NAME`); it must not exist yet.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The plugin crate (default: this directory).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// Whether `name` is a plugin name the registry takes.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
}

/// `buy-clicks` as `BuyClicks`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

impl NewArgs {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        if !valid_name(&self.name) {
            bail!(
                "{:?} is not a plugin name: use lowercase letters, digits and `-`, starting \
                 with a letter (at most 64)",
                self.name
            );
        }
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&self.name));
        if dir.exists() {
            bail!(
                "{} exists already; choose another --dir or remove it",
                dir.display()
            );
        }
        for (path, text) in files(&self.name, self.kind) {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "made the {} plugin `{}` in {}\n\nnext:\n  cd {}\n  cargo test                 # its unit test, natively\n  weir plugin build          # the component, checked as the service checks it\n  weir plugin test target/wasm32-wasip2/release/{}.wasm --config '{}' --input captured.jsonl",
            kind_name(self.kind),
            self.name,
            dir.display(),
            dir.display(),
            self.name.replace('-', "_"),
            config_example(self.kind),
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Filter => "filter",
        Kind::Map => "map",
        Kind::FilterMap => "filter-map",
        Kind::FlatMap => "flat-map",
        Kind::Scenario => "scenario",
    }
}

fn config_example(kind: Kind) -> &'static str {
    match kind {
        Kind::Filter | Kind::FilterMap | Kind::Scenario => r#"{"field": "e_n", "equals": "구매"}"#,
        Kind::Map | Kind::FlatMap => r#"{"field": "e_n"}"#,
    }
}

/// Every file of a new crate: its path under the crate and its text.
fn files(name: &str, kind: Kind) -> Vec<(String, String)> {
    let mut files = vec![
        ("Cargo.toml".to_owned(), cargo_toml(name)),
        ("src/lib.rs".to_owned(), lib_rs(name, kind)),
        ("README.md".to_owned(), readme(name, kind)),
        ("captured.jsonl".to_owned(), CAPTURED.to_owned()),
        (".gitignore".to_owned(), "/target\n".to_owned()),
        (
            ".weir/sdk/Cargo.toml".to_owned(),
            embedded::SDK_MANIFEST.to_owned(),
        ),
    ];
    for (path, text) in embedded::SDK_FILES {
        files.push((format!(".weir/{path}"), (*text).to_owned()));
    }
    files
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "{edition}"
publish = false

[lib]
# cdylib: the component weir runs (wasm32-wasip2); rlib: the same code natively,
# for `cargo test`.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The SDK of the weir that made this crate (`weir plugin new`), for the plugin
# contract weir:plugin@{wit}.
weir-sdk = {{ path = ".weir/sdk" }}
{serde}
{serde_json}

[lints.rust]
# `export!` expands wit-bindgen's ABI glue (unsafe code) under a scoped allow.
unsafe_code = "deny"

# A crate of its own, even inside another workspace.
[workspace]

[profile.release]
opt-level = "s"
"#,
        edition = embedded::EDITION,
        wit = weir::runtime::WIT_VERSION,
        serde = embedded::SERDE,
        serde_json = embedded::SERDE_JSON,
    )
}

fn readme(name: &str, kind: Kind) -> String {
    format!(
        "# {name}\n\nA weir {} plugin. `cargo test` runs its unit tests natively; `weir plugin build` \
         builds `target/wasm32-wasip2/release/{}.wasm` and checks it as weir will.\n\
         `weir plugin test <that .wasm> --config '{}' --input captured.jsonl` runs it on \
         sample events (`weir capture` takes real ones off a topic).\n\
         `weir plugin push <that .wasm>` uploads it; a scenario names it with `\"plugin\": \"{name}\"`.\n",
        kind_name(kind),
        name.replace('-', "_"),
        config_example(kind),
    )
}

/// Sample events, as the tracking pixel sends them (what `weir capture`
/// would take off the demo's topic, without the envelope).
const CAPTURED: &str = r#"{"memberId":"m0002","age":28,"gender":"MALE","h":10,"e_n":"구매","url":"/goods/7"}
{"memberId":"m0003","age":35,"gender":"FEMALE","h":11,"e_n":"조회","url":"/goods/8"}
{"memberId":"m0004","age":42,"gender":"MALE","h":8,"e_n":"장바구니","url":"/goods/9"}
{"memberId":"m0005","age":19,"gender":"FEMALE","h":21,"e_n":"구매","url":"/goods/1"}
{"memberId":"m0006","age":56,"gender":"MALE","h":13}
"#;

fn lib_rs(name: &str, kind: Kind) -> String {
    let ty = type_name(name);
    let mut code = format!(
        r##"//! The `{name}` plugin for weir. `weir_sdk` documents every kind and getter.

use serde::Deserialize;
use weir_sdk::{{Error, Event, Plugin}};

/// The plugin, configured.
pub struct {ty} {{
    config: Config,
}}

/// Its configuration: the document of each scenario that uses the plugin,
/// without weir's own fields (`scenario_id`, `title` and `manager` stay, and
/// are not read here; weir refuses keys the schema does not name).
#[derive(Debug, Deserialize)]
pub struct Config {{
{config_fields}}}

impl Plugin for {ty} {{
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str = "{description}";
    const CONFIG_SCHEMA: &'static str = r#"{schema}"#;
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {{
        Ok(Self {{ config }})
    }}
}}
"##,
        config_fields = match kind {
            Kind::Filter | Kind::FilterMap | Kind::Scenario =>
                "    /// The field to look at.\n    field: String,\n    /// The value it must have.\n    equals: String,\n",
            Kind::Map | Kind::FlatMap => "    /// The field to keep.\n    field: String,\n",
        },
        description = match kind {
            Kind::Filter => "Keeps the events whose field has the configured value.",
            Kind::Map => "Turns each event into a record of one field and the event's offset.",
            Kind::FilterMap => "Keeps the matching events, as records of the matched field.",
            Kind::FlatMap => "Turns each event into one record per character of a field.",
            Kind::Scenario => "Says for every event whether its field has the configured value.",
        },
        schema = match kind {
            Kind::Filter | Kind::FilterMap | Kind::Scenario =>
                r#"{"type":"object","required":["field","equals"],"properties":{"field":{"type":"string"},"equals":{"type":"string"},"scenario_id":{"type":["integer","string"]},"title":{"type":"string"},"manager":{"type":"string"}}}"#,
            Kind::Map | Kind::FlatMap =>
                r#"{"type":"object","required":["field"],"properties":{"field":{"type":"string"},"scenario_id":{"type":["integer","string"]},"title":{"type":"string"},"manager":{"type":"string"}}}"#,
        },
    );
    let body = match kind {
        Kind::Filter => format!(
            r#"
impl weir_sdk::Filter for {ty} {{
    fn keep(&self, event: &Event<'_>) -> Result<bool, Error> {{
        Ok(event.str(&self.config.field)?.as_deref() == Some(self.config.equals.as_str()))
    }}
}}

weir_sdk::export!({ty} as filter);
"#
        ),
        Kind::Map => format!(
            r#"
impl weir_sdk::Map for {ty} {{
    fn map(&self, event: &Event<'_>, out: &mut weir_sdk::Record<'_>) -> Result<(), Error> {{
        let value = event.get::<serde_json::Value>(&self.config.field)?;
        out.json(&serde_json::json!({{"offset": event.offset(), &self.config.field: value}}))
    }}
}}

weir_sdk::export!({ty} as map);
"#
        ),
        Kind::FilterMap => format!(
            r#"
impl weir_sdk::FilterMap for {ty} {{
    fn filter_map(&self, event: &Event<'_>, out: &mut weir_sdk::Record<'_>) -> Result<bool, Error> {{
        let value = event.str(&self.config.field)?;
        if value.as_deref() != Some(self.config.equals.as_str()) {{
            return Ok(false);
        }}
        out.json(&serde_json::json!({{&self.config.field: value}}))?;
        Ok(true)
    }}
}}

weir_sdk::export!({ty} as filter_map);
"#
        ),
        Kind::FlatMap => format!(
            r#"
impl weir_sdk::FlatMap for {ty} {{
    fn flat_map(&self, event: &Event<'_>, out: &mut weir_sdk::Records<'_>) -> Result<(), Error> {{
        for c in event.str(&self.config.field)?.unwrap_or_default().chars() {{
            out.push_json(&serde_json::json!({{&self.config.field: c.to_string()}}))?;
        }}
        Ok(())
    }}
}}

weir_sdk::export!({ty} as flat_map);
"#
        ),
        Kind::Scenario => format!(
            r#"
impl weir_sdk::Scenario for {ty} {{
    fn evaluate(&self, event: &Event<'_>, out: &mut weir_sdk::Record<'_>) -> Result<bool, Error> {{
        let matched = event.str(&self.config.field)?.as_deref() == Some(self.config.equals.as_str());
        out.json(&serde_json::json!({{"offset": event.offset(), "matched": matched}}))?;
        Ok(matched)
    }}
}}

weir_sdk::export!({ty} as scenario);
"#
        ),
    };
    code.push_str(&body);
    let (harness, config, expect) = match kind {
        Kind::Filter => ("filter", CONFIG_EQUALS, "Status::Emitted, Status::Dropped"),
        Kind::Map => ("map", CONFIG_FIELD, "Status::Emitted, Status::Emitted"),
        Kind::FilterMap => (
            "filter_map",
            CONFIG_EQUALS,
            "Status::Emitted, Status::Dropped",
        ),
        Kind::FlatMap => ("flat_map", CONFIG_FIELD, "Status::Emitted, Status::Emitted"),
        Kind::Scenario => (
            "scenario",
            CONFIG_EQUALS,
            "Status::Emitted, Status::Emitted",
        ),
    };
    let _ = write!(
        code,
        r##"
#[cfg(test)]
mod tests {{
    use super::*;
    use weir_sdk::{{Batch, Harness, Status}};

    #[test]
    fn answers_the_sample_events() {{
        let harness = Harness::{harness}::<{ty}>(r#"{config}"#).unwrap();
        let mut batch = Batch::new("test");
        batch.push(r#"{{"e_n": "구매", "memberId": "m0002"}}"#.as_bytes());
        batch.push(r#"{{"e_n": "조회", "memberId": "m0003"}}"#.as_bytes());
        let output = harness.process(&batch);
        let statuses: Vec<Status> = output.outcomes().iter().map(|o| o.status).collect();
        assert_eq!(statuses, [{expect}]);
    }}

    #[test]
    fn a_configuration_without_its_field_is_refused() {{
        assert!(Harness::{harness}::<{ty}>("{{}}").is_err());
    }}
}}
"##
    );
    code
}

const CONFIG_EQUALS: &str = r#"{"field": "e_n", "equals": "구매"}"#;
const CONFIG_FIELD: &str = r#"{"field": "e_n"}"#;

impl BuildArgs {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        let manifest = self.dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).with_context(|| {
            format!(
                "{} is not a plugin crate (no Cargo.toml); `weir plugin new NAME` makes one",
                self.dir.display()
            )
        })?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
        let Some(package) = table
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        else {
            bail!("{} has no [package] name", manifest.display());
        };
        ensure_target()?;
        let status = Command::new("cargo")
            .args(["build", "--release", "--target", TARGET])
            .current_dir(&self.dir)
            .status()
            .context("running cargo (is the Rust toolchain installed? https://rustup.rs)")?;
        if !status.success() {
            bail!("cargo build failed ({status}); its messages are above");
        }
        let wasm = target_dir(&self.dir)
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
        // Compiled as the service compiles uploads (in a child process, under
        // the compile budgets), into the cache the service's default uses.
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(std::env::temp_dir().join("weir-plugin-test-cache")),
            compile_program: std::env::current_exe().ok(),
            ..RuntimeConfig::default()
        })?;
        let started = std::time::Instant::now();
        let plugin = runtime.load(&bytes).with_context(|| {
            format!(
                "{} is not a plugin weir accepts (world weir:plugin@{})",
                wasm.display(),
                weir::runtime::WIT_VERSION
            )
        })?;
        let info = plugin.info();
        println!(
            "{}\n  {} bytes, sha256 {}\n  plugin {} {} ({}): {}\n  imports: {}\n  compiled and checked in {} ms",
            wasm.display(),
            bytes.len(),
            &info.sha256[..12],
            info.name,
            info.version,
            info.kind.as_str(),
            info.description,
            plugin.imports().join(", "),
            started.elapsed().as_millis(),
        );
        Ok(ExitCode::SUCCESS)
    }
}

const TARGET: &str = "wasm32-wasip2";

/// Installs the wasm32-wasip2 target when rustup is there and it is missing.
fn ensure_target() -> anyhow::Result<()> {
    let Ok(installed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        // No rustup: cargo says whether the target is there.
        eprintln!("weir: no rustup here; the {TARGET} target must be installed with the toolchain");
        return Ok(());
    };
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("weir: installing the {TARGET} target (rustup target add {TARGET})");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed ({status})");
    }
    Ok(())
}

/// Where cargo puts the crate's builds: `CARGO_TARGET_DIR` or `DIR/target`.
fn target_dir(dir: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert!(valid_name("buy-clicks"));
        assert!(valid_name("p2"));
        for bad in ["", "Buy", "2p", "a_b", "a-", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(type_name("buy-clicks"), "BuyClicks");
        assert_eq!(type_name("p2"), "P2");
    }

    #[test]
    fn a_new_crate_carries_the_sdk_and_the_contract() {
        let files = files("buy-clicks", Kind::Filter);
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        for needed in [
            "Cargo.toml",
            "src/lib.rs",
            "README.md",
            "captured.jsonl",
            ".weir/sdk/Cargo.toml",
            ".weir/sdk/src/lib.rs",
            ".weir/wit/plugin.wit",
        ] {
            assert!(paths.contains(&needed), "{needed} in {paths:?}");
        }
        assert!(
            !paths.contains(&".weir/sdk/src/testing.rs"),
            "the runtime-backed test layer stays home"
        );
        let readme = &files.iter().find(|(p, _)| p == "README.md").unwrap().1;
        assert_eq!(readme.lines().count(), 5, "{readme}");
        let lib = &files.iter().find(|(p, _)| p == "src/lib.rs").unwrap().1;
        assert!(
            lib.contains("weir_sdk::export!(BuyClicks as filter);"),
            "{lib}"
        );
        for line in CAPTURED.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn the_sdks_manifest_stands_alone() {
        let manifest: toml::Table = embedded::SDK_MANIFEST.parse().unwrap();
        let text = embedded::SDK_MANIFEST;
        assert!(!text.contains("workspace = true"), "{text}");
        assert!(
            manifest["dependencies"].get("wit-bindgen").is_some(),
            "{text}"
        );
        assert!(
            manifest["dependencies"].get("weir-runtime").is_none(),
            "{text}"
        );
    }
}
