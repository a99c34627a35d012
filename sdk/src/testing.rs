//! The second test layer: a built `.wasm` run through weir's own runtime, with the
//! sandbox and limits the service uses (feature `testing`).
//!
//! Unit tests with [`Harness`](crate::Harness) check a plugin's logic natively;
//! these check the component: that it loads (a component of the right world and
//! version, importing nothing weir does not grant), that `describe` and `configure`
//! answer, and that events give the same results inside the sandbox, within the
//! CPU, memory and output limits.
//!
//! ```no_run
//! use weir_sdk::Status;
//! use weir_sdk::testing::Component;
//!
//! let component = Component::load("target/wasm32-wasip2/release/adults.wasm")?;
//! assert_eq!(component.name(), "adults");
//! let mut instance = component.configure(r#"{"min_age": 20}"#)?;
//! let results = instance.run_lines("{\"age\":31}\n{\"age\":12}\n")?;
//! assert_eq!(results[0].status, Status::Emitted);
//! assert_eq!(results[1].status, Status::Dropped);
//! # Ok::<(), String>(())
//! ```

use std::path::Path;

use weir_runtime::{self as runtime, Batch, Runtime, RuntimeConfig};

use crate::{EventResult, Status};

/// A component loaded and checked by the host runtime, ready to configure.
#[derive(Debug)]
pub struct Component {
    plugin: runtime::Plugin,
}

impl Component {
    /// Loads `path` with the runtime's default limits; the error says why the
    /// service would refuse the component.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, String> {
        Self::load_with(path, RuntimeConfig::default())
    }

    /// Loads `path` under the given runtime limits.
    pub fn load_with(path: impl AsRef<Path>, config: RuntimeConfig) -> Result<Self, String> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let runtime = Runtime::new(config).map_err(|e| e.to_string())?;
        let plugin = runtime.load(&bytes).map_err(|e| e.to_string())?;
        Ok(Self { plugin })
    }

    /// The name `describe` reports.
    pub fn name(&self) -> &str {
        &self.plugin.info().name
    }

    /// The version `describe` reports.
    pub fn version(&self) -> &str {
        &self.plugin.info().version
    }

    /// The configuration schema `describe` reports, as JSON text.
    pub fn config_schema(&self) -> &str {
        &self.plugin.info().config_schema
    }

    /// A fresh instance configured with `config` (JSON); the error is the
    /// plugin's or the schema's reason.
    pub fn configure(&self, config: &str) -> Result<Instance, String> {
        let inner = self.plugin.instantiate(config).map_err(|e| e.to_string())?;
        Ok(Instance {
            inner,
            scenario_id: "test".to_owned(),
        })
    }
}

/// A configured instance of a [`Component`].
#[derive(Debug)]
pub struct Instance {
    inner: runtime::Instance,
    scenario_id: String,
}

impl Instance {
    /// Runs one batch: one event per non-blank line of `jsonl` (offsets 0, 1, …,
    /// no timestamp), as [`Harness::run_lines`](crate::Harness::run_lines) does
    /// natively. A trap or limit fails only the events that caused it.
    pub fn run_lines(&mut self, jsonl: &str) -> Result<Vec<EventResult>, String> {
        let mut batch = Batch::new(&self.scenario_id, "test", 0);
        let lines = jsonl.lines().filter(|line| !line.trim().is_empty());
        for (offset, line) in lines.enumerate() {
            batch
                .push(offset as i64, line.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let result = self.inner.process(&batch).map_err(|e| e.to_string())?;
        Ok(result
            .outcomes()
            .iter()
            .map(|outcome| EventResult {
                status: match outcome.status {
                    runtime::Status::Dropped => Status::Dropped,
                    runtime::Status::Emitted => Status::Emitted,
                    runtime::Status::Failed => Status::Failed,
                },
                matched: outcome.matched,
                records: result.records(outcome).map(<[u8]>::to_vec).collect(),
                error: outcome.error.as_ref().map(ToString::to_string),
            })
            .collect())
    }
}
