//! Loading a plugin: checking the bytes, compiling them once, checking the
//! imports and exports against the plugin world, and asking the plugin to
//! describe itself.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::Component;

use super::bindings::{self, BindingsPre, PLUGIN_EXPORT, TYPES_IMPORT, WIT_VERSION};
use super::instance::{Instance, Live};
use super::state::HostState;
use super::{RuntimeError, RuntimeInner, compile, limits, short_hex};

/// Import prefixes a plugin may use. They are linked to a deny-all WASI
/// context; `wasi:sockets` and `wasi:http` are not among them.
const GRANTED_IMPORTS: &[&str] = &[
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/types@",
    "wasi:filesystem/preopens@",
];

/// The shape of a plugin, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// Keeps or drops each event unchanged.
    Filter,
    /// Turns each event into exactly one output record.
    Map,
    /// Turns each event into zero or one output record.
    FilterMap,
    /// Turns each event into zero or more output records.
    FlatMap,
    /// Says whether each event matched and emits one record per event.
    Scenario,
}

impl PluginKind {
    /// The kebab-case name used in WIT and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Filter => "filter",
            PluginKind::Map => "map",
            PluginKind::FilterMap => "filter-map",
            PluginKind::FlatMap => "flat-map",
            PluginKind::Scenario => "scenario",
        }
    }
}

/// What a plugin says about itself, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Lowercase letters, digits and `-`.
    pub name: String,
    /// Semantic version, e.g. `1.2.0`.
    pub version: String,
    /// The plugin's shape.
    pub kind: PluginKind,
    /// One line for people.
    pub description: String,
    /// JSON Schema of the configuration, as JSON text (known to parse).
    pub config_schema: String,
    /// sha256 of the component bytes, lowercase hex.
    pub sha256: String,
}

/// A validated, compiled plugin. Cheap to clone; instantiate it once per
/// scenario configuration.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub(crate) runtime: Arc<RuntimeInner>,
    pub(crate) info: PluginInfo,
    /// The interfaces the component imports (each one granted).
    pub(crate) imports: Vec<String>,
    pub(crate) pre: BindingsPre<HostState>,
    /// The plugin's configuration schema, compiled once.
    schema: jsonschema::Validator,
}

/// At most this many schema violations are listed in one error.
const MAX_SCHEMA_ERRORS: usize = 5;

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.inner.info)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn load(
        runtime: Arc<RuntimeInner>,
        bytes: &[u8],
        sha256: [u8; 32],
    ) -> Result<Self, RuntimeError> {
        let short = short_hex(&sha256);
        match bytes.get(..8) {
            Some(header) if header.starts_with(b"\0asm") => {
                if header[4..8] == [1, 0, 0, 0] {
                    return Err(RuntimeError::CoreModule {
                        sha256: short,
                        wit: WIT_VERSION,
                    });
                }
            }
            _ => return Err(RuntimeError::NotWasm { sha256: short }),
        }

        limits::check_component(bytes).map_err(|refusal| refusal.into_error(&short))?;
        if let Some(program) = &runtime.config.compile_program {
            compile_first(program, &runtime, bytes, &sha256, &short)?;
        }
        let engine = &runtime.engine;
        let started = std::time::Instant::now();
        let component = Component::new(engine, bytes).map_err(|e| RuntimeError::Compile {
            sha256: short.clone(),
            reason: format!("{e:#}"),
        })?;
        let compile_ms = started.elapsed().as_millis();

        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        if !exports.contains(&PLUGIN_EXPORT) {
            let reason = match exports
                .iter()
                .find(|e| e.starts_with("weir:plugin/plugin@"))
            {
                Some(other) => format!(
                    "it exports `{other}`, built against another version of the contract; \
                     this host accepts `{PLUGIN_EXPORT}`"
                ),
                None if exports.is_empty() => {
                    format!("it exports nothing; a plugin exports `{PLUGIN_EXPORT}`")
                }
                None => format!(
                    "it exports {} but not `{PLUGIN_EXPORT}`",
                    exports
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(RuntimeError::WrongWorld {
                sha256: short,
                reason,
                wit: WIT_VERSION,
            });
        }

        let mut imports = Vec::new();
        for (import, _) in ty.imports(engine) {
            imports.push(import.to_owned());
            let granted = import == TYPES_IMPORT
                || GRANTED_IMPORTS
                    .iter()
                    .any(|prefix| import.starts_with(prefix));
            if !granted {
                return Err(RuntimeError::ForbiddenImport {
                    sha256: short,
                    import: import.to_owned(),
                    wit: WIT_VERSION,
                });
            }
        }
        let wrong_world = |e: wasmtime::Error| RuntimeError::WrongWorld {
            sha256: short.clone(),
            reason: format!("{e:#}"),
            wit: WIT_VERSION,
        };
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = BindingsPre::new(pre).map_err(wrong_world)?;

        let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
        let raw = describe(&runtime, &pre, &short)?;
        let (info, schema) = check_info(raw, hex, &short)?;
        tracing::info!(
            plugin = %info.name,
            version = %info.version,
            kind = info.kind.as_str(),
            sha256 = %short,
            compile_ms,
            "plugin loaded"
        );
        Ok(Self {
            inner: Arc::new(PluginInner {
                runtime,
                info,
                imports,
                pre,
                schema,
            }),
        })
    }

    /// The interfaces the component imports, as WIT names
    /// (`wasi:io/streams@0.2.6`, …); every one is granted.
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }

    /// Creates an instance and configures it with `config_json`. The
    /// configuration must be JSON (an empty string counts as `{}`), must
    /// satisfy the plugin's JSON Schema, and the plugin must accept it.
    pub fn instantiate(&self, config_json: &str) -> Result<Instance, RuntimeError> {
        let info = &self.inner.info;
        let config = if config_json.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(config_json).map_err(|e| RuntimeError::ConfigJson {
                plugin: info.name.clone(),
                version: info.version.clone(),
                reason: e.to_string(),
            })?
        };
        let violations: Vec<String> = self
            .inner
            .schema
            .iter_errors(&config)
            .take(MAX_SCHEMA_ERRORS)
            .map(|e| {
                let at = e.instance_path.to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                format!("at {at}: {e}")
            })
            .collect();
        if !violations.is_empty() {
            return Err(RuntimeError::ConfigSchema {
                plugin: info.name.clone(),
                version: info.version.clone(),
                violations: violations.join("; "),
            });
        }
        Instance::new(self.clone(), config_json.to_owned())
    }

    /// A new store for this plugin, with its limits in place.
    pub(crate) fn new_store(&self) -> Store<HostState> {
        new_store(
            &self.inner.runtime,
            &self.inner.info.name,
            &self.inner.info.version,
        )
    }

    /// A fresh, configured instance.
    pub(crate) fn live(&self, config: &str) -> Result<Live, RuntimeError> {
        let info = &self.inner.info;
        let mut store = self.new_store();
        let bindings =
            self.inner
                .pre
                .instantiate(&mut store)
                .map_err(|e| RuntimeError::Instantiate {
                    plugin: info.name.clone(),
                    version: info.version.clone(),
                    reason: format!("{e:#}"),
                })?;
        let mut live = Live { store, bindings };
        let refused = |reason: String| RuntimeError::Configure {
            plugin: info.name.clone(),
            version: info.version.clone(),
            reason,
        };
        live.arm(&self.inner.runtime, 0, None);
        let answer = live
            .bindings
            .weir_plugin_plugin()
            .call_configure(&mut live.store, config);
        live.store.data_mut().end_call();
        match answer {
            Ok(Ok(())) => Ok(live),
            Ok(Err(reason)) => Err(refused(reason)),
            Err(trap) => Err(refused(format!("configure trapped: {trap:#}"))),
        }
    }
}

/// Compiles `bytes` in the compile worker unless a worker compiled them
/// before (a marker next to the compiled-code cache says so), so that what is
/// too costly to compile is refused before this process compiles it.
fn compile_first(
    program: &std::path::Path,
    runtime: &RuntimeInner,
    bytes: &[u8],
    sha256: &[u8; 32],
    short: &str,
) -> Result<(), RuntimeError> {
    let marker = runtime.config.cache_dir.as_ref().map(|dir| {
        let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
        dir.join("weir-compiled").join(hex)
    });
    if marker.as_ref().is_some_and(|m| m.exists()) {
        return Ok(());
    }
    match compile::compile_in_worker(program, &runtime.config, bytes) {
        Ok(()) => {
            if let Some(marker) = marker {
                // Only saves the next load a worker run; nothing depends on it.
                let _ = std::fs::create_dir_all(marker.parent().unwrap_or(&marker))
                    .and_then(|()| std::fs::write(&marker, b""));
            }
            Ok(())
        }
        Err(compile::WorkerRefusal::Refused(refusal)) => Err(refusal.into_error(short)),
        Err(compile::WorkerRefusal::Unavailable(reason)) => Err(RuntimeError::Config { reason }),
    }
}

pub(crate) fn new_store(runtime: &RuntimeInner, plugin: &str, version: &str) -> Store<HostState> {
    let config = &runtime.config;
    // `Runtime::new` checked that the memory limit fits in usize.
    let memory_limit = usize::try_from(config.memory_limit_bytes).unwrap_or(usize::MAX);
    let state = HostState::new(
        plugin,
        version,
        memory_limit,
        config.guest_log_bytes_per_call,
    );
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|state| &mut state.limiter);
    // Instantiation runs the guest's start code: it needs a budget too.
    if let Some(ticks) = runtime.deadline_ticks(None) {
        store.set_epoch_deadline(ticks);
    }
    if let Some(fuel) = config.fuel_per_call {
        // Only fails when fuel is off in the engine, and it is on here.
        let _ = store.set_fuel(fuel);
    }
    store
}

/// Instantiates the plugin without configuration and calls `describe`.
fn describe(
    runtime: &RuntimeInner,
    pre: &BindingsPre<HostState>,
    short: &str,
) -> Result<bindings::Info, RuntimeError> {
    let failed = |reason: String| RuntimeError::Describe {
        sha256: short.to_owned(),
        reason,
    };
    let mut store = new_store(runtime, short, "?");
    let bindings = pre
        .instantiate(&mut store)
        .map_err(|e| failed(format!("cannot instantiate: {e:#}")))?;
    let mut live = Live { store, bindings };
    live.arm(runtime, 0, None);
    let info = live
        .bindings
        .weir_plugin_plugin()
        .call_describe(&mut live.store);
    live.store.data_mut().end_call();
    info.map_err(|e| failed(format!("{e:#}")))
}

fn check_info(
    raw: bindings::Info,
    sha256: String,
    short: &str,
) -> Result<(PluginInfo, jsonschema::Validator), RuntimeError> {
    let invalid = |field: &'static str, reason: String| RuntimeError::InvalidInfo {
        sha256: short.to_owned(),
        field,
        reason,
    };
    if !valid_name(&raw.name) {
        return Err(invalid(
            "name",
            format!(
                "{:?}; a name is 1 to 64 lowercase letters, digits and `-`, starting with a letter",
                raw.name
            ),
        ));
    }
    if !valid_version(&raw.version) {
        return Err(invalid(
            "version",
            format!(
                "{:?}; a version is semantic, like `1.2.0` or `1.2.0-rc.1`",
                raw.version
            ),
        ));
    }
    if raw.description.len() > 1024 || raw.description.contains('\n') {
        return Err(invalid(
            "description",
            "a description is one line of at most 1024 bytes".to_owned(),
        ));
    }
    let schema = match serde_json::from_str::<serde_json::Value>(&raw.config_schema) {
        Ok(schema @ (serde_json::Value::Object(_) | serde_json::Value::Bool(_))) => schema,
        Ok(other) => {
            return Err(invalid(
                "config-schema",
                format!("a JSON Schema is an object or a boolean, not {other}"),
            ));
        }
        Err(e) => return Err(invalid("config-schema", format!("not JSON: {e}"))),
    };
    limits::check_schema(&raw.config_schema, &schema)
        .map_err(|reason| invalid("config-schema", reason))?;
    // Compiled without remote or file reference resolution: a schema that
    // needs either is refused here rather than fetched.
    let schema = jsonschema::validator_for(&schema)
        .map_err(|e| invalid("config-schema", format!("not a usable JSON Schema: {e}")))?;
    let info = PluginInfo {
        name: raw.name,
        version: raw.version,
        kind: match raw.kind {
            bindings::Kind::Filter => PluginKind::Filter,
            bindings::Kind::Map => PluginKind::Map,
            bindings::Kind::FilterMap => PluginKind::FilterMap,
            bindings::Kind::FlatMap => PluginKind::FlatMap,
            bindings::Kind::Scenario => PluginKind::Scenario,
        },
        description: raw.description,
        config_schema: raw.config_schema,
        sha256,
    };
    Ok((info, schema))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_version(version: &str) -> bool {
    let (core, suffix) = match version.find(['-', '+']) {
        Some(at) => version.split_at(at),
        None => (version, ""),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers.iter().all(|n| {
            !n.is_empty()
                && n.chars().all(|c| c.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        })
        && (suffix.is_empty()
            || (suffix.len() > 1
                && suffix[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, version: &str, schema: &str) -> bindings::Info {
        bindings::Info {
            name: name.to_owned(),
            version: version.to_owned(),
            kind: bindings::Kind::Scenario,
            description: "test".to_owned(),
            config_schema: schema.to_owned(),
        }
    }

    #[test]
    fn names_and_versions_follow_the_contract() {
        assert!(valid_name("access-log"));
        assert!(valid_name("scenario2"));
        for bad in ["", "Scenario", "-x", "a b", "ünï", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["0.1.0", "1.2.3", "1.0.0-rc.1", "1.0.0+build.5"] {
            assert!(valid_version(good), "{good:?}");
        }
        for bad in ["", "1", "1.2", "1.2.x", "01.2.3", "1.2.3-", "v1.2.3"] {
            assert!(!valid_version(bad), "{bad:?}");
        }
    }

    #[test]
    fn garbage_from_describe_is_refused_with_the_field() {
        let (ok, schema) = check_info(
            raw("scenario", "0.1.0", r#"{"type":"object"}"#),
            "ab".into(),
            "ab",
        )
        .unwrap();
        assert_eq!(ok.kind, PluginKind::Scenario);
        assert!(schema.is_valid(&serde_json::json!({})));
        assert!(!schema.is_valid(&serde_json::json!([])));

        let err = check_info(raw("Bad Name", "0.1.0", "{}"), "ab".into(), "ab").unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidInfo { field: "name", .. }),
            "{err}"
        );
        let err = check_info(raw("ok", "one", "{}"), "ab".into(), "ab").unwrap_err();
        assert!(
            matches!(
                err,
                RuntimeError::InvalidInfo {
                    field: "version",
                    ..
                }
            ),
            "{err}"
        );
        let err = check_info(raw("ok", "0.1.0", "{not json"), "ab".into(), "ab").unwrap_err();
        assert!(err.to_string().contains("config-schema: not JSON"), "{err}");
        let err = check_info(raw("ok", "0.1.0", "[1]"), "ab".into(), "ab").unwrap_err();
        assert!(err.to_string().contains("object or a boolean"), "{err}");
        let err = check_info(
            raw("ok", "0.1.0", r#"{"type":"colour"}"#),
            "ab".into(),
            "ab",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not a usable JSON Schema"),
            "{err}"
        );
    }
}
