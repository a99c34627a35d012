//! The archive's column types, per scenario: learned once, kept, never changed.
//!
//! Readers that take a scenario's files as one table (Spark's `mergeSchema`,
//! DuckDB's `union_by_name`, pyarrow's `unify_schemas`) accept files that add or
//! lack a column, but not a column whose type changes, and a float column loses
//! integers above 2^53. So the first time a field of a scenario's records reaches
//! the archive, its type is decided from the values seen (integers → int64,
//! numbers → float64, booleans → bool, strings or a mix → string) and kept in a
//! [`ColumnCatalog`]; the registry's keeps it for every replica and every restart,
//! and the first writer to learn a column wins. After that, a value of that field
//! goes to its column only when the column's type holds it exactly (an integer in a
//! float64 column only up to 2^53 in size); any other value is kept, as written, in
//! the row's `extra` JSON column, and the typed column is null there.
//!
//! A scenario's document may declare types ahead of the first records
//! (`"archive_columns": {"price": "float64", "sku": "string"}`): they are kept
//! first, for fields not learned yet. A declaration never changes a type already
//! learned; to give a field another type, give it another name.

use std::collections::{BTreeMap, HashMap};

use super::ArchiveError;
use crate::registry::Registry;

/// The type of an archive column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ColumnType {
    /// Parquet INT64: JSON integers in the i64 range.
    Int64,
    /// Parquet DOUBLE: JSON numbers that are not integers, and integers up to 2^53.
    Float64,
    /// Parquet BOOLEAN.
    Bool,
    /// Parquet BYTE_ARRAY (UTF8): JSON strings.
    Utf8,
}

impl ColumnType {
    /// The name kept in the registry.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Utf8 => "string",
        }
    }

    /// The type of a name kept in the registry.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "int64" => ColumnType::Int64,
            "float64" => ColumnType::Float64,
            "bool" => ColumnType::Bool,
            "string" => ColumnType::Utf8,
            _ => return None,
        })
    }
}

/// A scenario's columns besides the fixed ones: field name → type.
pub type Columns = BTreeMap<String, ColumnType>;

/// Where the column types of every scenario are kept.
pub trait ColumnCatalog: Send + std::fmt::Debug {
    /// The column types known for `scenario`.
    fn known(&mut self, scenario: &str) -> Result<Columns, ArchiveError>;

    /// Keeps the `proposed` types of columns of `scenario` that have none yet, and
    /// returns every column known for it: where another writer learned a column
    /// first, with that writer's type.
    fn learn(&mut self, scenario: &str, proposed: &Columns) -> Result<Columns, ArchiveError>;
}

/// Column types kept in this process only (one writer, or tests).
#[derive(Debug, Default)]
pub struct MemoryColumns {
    scenarios: HashMap<String, Columns>,
}

impl ColumnCatalog for MemoryColumns {
    fn known(&mut self, scenario: &str) -> Result<Columns, ArchiveError> {
        Ok(self.scenarios.get(scenario).cloned().unwrap_or_default())
    }

    fn learn(&mut self, scenario: &str, proposed: &Columns) -> Result<Columns, ArchiveError> {
        let known = self.scenarios.entry(scenario.to_owned()).or_default();
        for (name, kind) in proposed {
            known.entry(name.clone()).or_insert(*kind);
        }
        Ok(known.clone())
    }
}

/// Column types kept in the registry, shared by every replica.
#[derive(Debug)]
pub struct RegistryColumns {
    registry: Registry,
    runtime: tokio::runtime::Handle,
}

impl RegistryColumns {
    /// The registry's catalog, its calls run on `runtime` (call it off the
    /// runtime's threads, as the archive is).
    pub fn new(registry: Registry, runtime: tokio::runtime::Handle) -> Self {
        Self { registry, runtime }
    }

    fn error(scenario: &str, e: impl std::fmt::Display) -> ArchiveError {
        ArchiveError::Columns {
            scenario: scenario.to_owned(),
            reason: e.to_string(),
        }
    }

    fn typed(scenario: &str, names: BTreeMap<String, String>) -> Result<Columns, ArchiveError> {
        names
            .into_iter()
            .map(|(name, kind)| {
                ColumnType::from_name(&kind)
                    .map(|t| (name.clone(), t))
                    .ok_or_else(|| {
                        Self::error(scenario, format!("column {name}: unknown type {kind:?}"))
                    })
            })
            .collect()
    }
}

impl ColumnCatalog for RegistryColumns {
    /// What the registry keeps, after keeping first the types the scenario's
    /// document declares (`archive_columns`) for fields not learned yet.
    fn known(&mut self, scenario: &str) -> Result<Columns, ArchiveError> {
        let registry = &self.registry;
        let names = self
            .runtime
            .block_on(async {
                let declared = match registry.scenario(scenario).await {
                    Ok(found) => found
                        .spec()
                        .map(|spec| spec.archive_columns)
                        .unwrap_or_default(),
                    Err(crate::registry::RegistryError::ScenarioNotFound { .. }) => BTreeMap::new(),
                    Err(e) => return Err(e),
                };
                if declared.is_empty() {
                    registry.archive_columns(scenario).await
                } else {
                    registry.learn_archive_columns(scenario, &declared).await
                }
            })
            .map_err(|e| Self::error(scenario, e))?;
        Self::typed(scenario, names)
    }

    fn learn(&mut self, scenario: &str, proposed: &Columns) -> Result<Columns, ArchiveError> {
        let names: BTreeMap<String, String> = proposed
            .iter()
            .map(|(name, kind)| (name.clone(), kind.name().to_owned()))
            .collect();
        let known = self
            .runtime
            .block_on(self.registry.learn_archive_columns(scenario, &names))
            .map_err(|e| Self::error(scenario, e))?;
        Self::typed(scenario, known)
    }
}
