//! Plugins and their versions: upload (validated by the runtime), listing,
//! download, rollback and deletion.
//!
//! A plugin is a name; each upload of new bytes under that name adds a version
//! numbered one above the highest ever given to that name (numbers are not
//! reused after a version is deleted). One version per name is *current*: the
//! one scenarios that name no version run. Uploading bytes that are already a
//! version of the name returns that version and makes it current again.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Registry, RegistryError, db, get, now_ms, rfc3339};
use crate::runtime::PluginInfo;

/// What an upload does to the current version when the bytes are already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MakeCurrent {
    /// The uploaded version becomes current, new or not (`weir plugin push`).
    Always,
    /// Only a new version becomes current; bytes already stored change nothing
    /// (installing the shipped plugins at start-up, which must not undo a rollback).
    IfNew,
}

/// One stored version of a plugin (without its bytes). Its schema is open
/// (no `deny_unknown_fields`): an upload's answer is this object with one more
/// field (`Upload`), which a closed schema would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PluginVersion {
    /// The plugin's registry name.
    pub name: String,
    /// Registry version number, from 1, monotonic per name.
    #[schema(minimum = 1)]
    pub version: i64,
    /// sha256 of the component bytes, lowercase hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    /// Size of the component in bytes.
    pub size_bytes: i64,
    /// What `describe` reported: `filter`, `map`, `filter-map`, `flat-map` or `scenario`.
    #[schema(pattern = "^(filter|map|filter-map|flat-map|scenario)$")]
    pub kind: String,
    /// The name the plugin gives itself in `describe`.
    pub declared_name: String,
    /// The version the plugin gives itself in `describe` (semantic version).
    pub declared_version: String,
    /// One line for people.
    pub description: String,
    /// JSON Schema of the configuration.
    pub config_schema: serde_json::Value,
    /// When it was uploaded, RFC 3339.
    #[schema(format = DateTime)]
    pub uploaded_at: String,
    /// Who uploaded it: the token's role, or `weir` for shipped plugins.
    pub uploaded_by: String,
    /// Whether this is the plugin's current version.
    pub current: bool,
}

/// A plugin and its current version, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSummary {
    /// The plugin's registry name.
    pub name: String,
    /// The version scenarios without a pinned version run.
    pub current_version: i64,
    /// The highest version number given so far.
    pub latest_version: i64,
    /// The current version's details.
    pub current: PluginVersion,
}

/// A plugin with every stored version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginDetail {
    /// The plugin's registry name.
    pub name: String,
    /// The version scenarios without a pinned version run.
    pub current_version: i64,
    /// Every stored version, oldest first.
    pub versions: Vec<PluginVersion>,
}

/// The result of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Upload {
    /// The stored version (new, or the one with the same bytes).
    #[serde(flatten)]
    pub version: PluginVersion,
    /// Whether this upload added a version.
    pub created: bool,
}

/// A reference to a plugin as scenarios write it: `name` (the current
/// version) or `name@version` (pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    /// Registry name.
    pub name: String,
    /// Pinned registry version, or `None` for the current one.
    pub version: Option<i64>,
}

impl PluginRef {
    /// Parses `name` or `name@version`; the error says what would be accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, version) =
            match text.split_once('@') {
                Some((name, version)) => {
                    let version = version.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(
                        || {
                            format!(
                                "`{text}`: the version after `@` must be a registry version number \
                             (1, 2, …), as listed by `weir plugin list`"
                            )
                        },
                    )?;
                    (name, Some(version))
                }
                None => (text, None),
            };
        if !valid_plugin_name(name) {
            return Err(format!(
                "`{text}`: expected a plugin name (lowercase letters, digits and `-`) optionally \
                 followed by `@<version>`, e.g. `scenario` or `scenario@2`"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            version,
        })
    }
}

impl std::fmt::Display for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// 1 to 64 lowercase ASCII letters, digits and `-`, starting with a letter.
pub fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Largest piece of component bytes stored in one row (see migration 0002).
const CHUNK_BYTES: usize = 1 << 20;

const VERSION_COLUMNS: &str = "v.name, v.version, v.sha256, v.size_bytes, v.kind, v.declared_name, \
     v.declared_version, v.description, v.config_schema, v.uploaded_at, v.uploaded_by, \
     p.current_version";

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<PluginVersion, RegistryError> {
    let what = "plugin_versions";
    let version: i64 = get(row, "version", what)?;
    let current: i64 = get(row, "current_version", what)?;
    let schema: String = get(row, "config_schema", what)?;
    Ok(PluginVersion {
        name: get(row, "name", what)?,
        version,
        sha256: get(row, "sha256", what)?,
        size_bytes: get(row, "size_bytes", what)?,
        kind: get(row, "kind", what)?,
        declared_name: get(row, "declared_name", what)?,
        declared_version: get(row, "declared_version", what)?,
        description: get(row, "description", what)?,
        config_schema: serde_json::from_str(&schema).map_err(|e| RegistryError::Corrupt {
            what: format!("{what}.config_schema"),
            reason: e.to_string(),
        })?,
        uploaded_at: rfc3339(get(row, "uploaded_at", what)?),
        uploaded_by: get(row, "uploaded_by", what)?,
        current: version == current,
    })
}

impl Registry {
    /// Validates `bytes` with the runtime (a component for the right world
    /// whose `describe` works and whose config schema compiles) and stores
    /// them as a new version of `name` (default: the name the plugin gives
    /// itself). Bytes already stored under that name return the existing
    /// version; `make_current` says whether it becomes current again.
    pub async fn upload_plugin(
        &self,
        bytes: Vec<u8>,
        name: Option<&str>,
        uploaded_by: &str,
        make_current: MakeCurrent,
    ) -> Result<Upload, RegistryError> {
        let runtime = self.runtime.clone();
        let (info, bytes) = tokio::task::spawn_blocking(move || {
            runtime
                .load(&bytes)
                .map(|plugin| (plugin.info().clone(), bytes))
        })
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))?
        .map_err(RegistryError::InvalidPlugin)?;

        let name = name.unwrap_or(&info.name).to_owned();
        if !valid_plugin_name(&name) {
            return Err(RegistryError::InvalidPluginName { name });
        }
        check_schema(&name, &info)?;

        let mut tx = self.begin_write().await?;
        let plugin = sqlx::query(
            self.sql("SELECT current_version, latest_version FROM plugins WHERE name = ?"),
        )
        .bind(&name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading a plugin"))?;
        let (current, latest) = match &plugin {
            Some(row) => (
                Some(get::<i64>(row, "current_version", "plugins")?),
                get::<i64>(row, "latest_version", "plugins")?,
            ),
            None => (None, 0),
        };

        let existing = sqlx::query(
            self.sql("SELECT version FROM plugin_versions WHERE name = ? AND sha256 = ?"),
        )
        .bind(&name)
        .bind(&info.sha256)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("looking up a plugin version by sha256"))?;
        if let Some(row) = existing {
            let version: i64 = get(&row, "version", "plugin_versions")?;
            if make_current == MakeCurrent::Always && current != Some(version) {
                self.set_current_in(&mut tx, &name, version).await?;
                tx.commit().await.map_err(db("committing an upload"))?;
                tracing::info!(plugin = %name, version, "plugin version made current again");
            } else {
                tx.rollback().await.map_err(db("ending an upload"))?;
            }
            let version = self.plugin_version(&name, version).await?;
            return Ok(Upload {
                version,
                created: false,
            });
        }

        let version = latest + 1;
        let now = now_ms();
        if plugin.is_some() {
            sqlx::query(
                self.sql(
                    "UPDATE plugins SET current_version = ?, latest_version = ? WHERE name = ?",
                ),
            )
            .bind(version)
            .bind(version)
            .bind(&name)
            .execute(&mut *tx)
            .await
            .map_err(db("updating a plugin"))?;
        } else {
            sqlx::query(self.sql(
                "INSERT INTO plugins (name, current_version, latest_version, created_at) \
                 VALUES (?, ?, ?, ?)",
            ))
            .bind(&name)
            .bind(version)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("inserting a plugin"))?;
        }
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        sqlx::query(self.sql(
            "INSERT INTO plugin_versions (name, version, sha256, size_bytes, component, kind, \
             declared_name, declared_version, description, config_schema, uploaded_at, \
             uploaded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&name)
        .bind(version)
        .bind(&info.sha256)
        .bind(size)
        .bind(Vec::<u8>::new())
        .bind(info.kind.as_str())
        .bind(&info.name)
        .bind(&info.version)
        .bind(&info.description)
        .bind(&info.config_schema)
        .bind(now)
        .bind(uploaded_by)
        .execute(&mut *tx)
        .await
        .map_err(db("storing a plugin version"))?;
        for (seq, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            sqlx::query(
                self.sql(
                    "INSERT INTO plugin_chunks (name, version, seq, bytes) VALUES (?, ?, ?, ?)",
                ),
            )
            .bind(&name)
            .bind(version)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(chunk.to_vec())
            .execute(&mut *tx)
            .await
            .map_err(db("storing a plugin component"))?;
        }
        tx.commit().await.map_err(db("committing an upload"))?;
        tracing::info!(plugin = %name, version, sha256 = %info.sha256, "plugin version stored");
        Ok(Upload {
            version: self.plugin_version(&name, version).await?,
            created: true,
        })
    }

    /// Installs the plugins shipped with weir, `(name, component bytes)`.
    /// Idempotent: bytes already stored change nothing (a rollback an
    /// operator made stays); new bytes become a new current version.
    pub async fn install_shipped(&self, plugins: &[(&str, &[u8])]) -> Result<(), RegistryError> {
        for (name, bytes) in plugins {
            self.upload_plugin(bytes.to_vec(), Some(name), "weir", MakeCurrent::IfNew)
                .await?;
        }
        Ok(())
    }

    /// Every plugin with its current version, by name.
    pub async fn list_plugins(&self) -> Result<Vec<PluginSummary>, RegistryError> {
        let rows = sqlx::query(self.sql(&format!(
            "SELECT {VERSION_COLUMNS}, p.latest_version FROM plugins p \
             JOIN plugin_versions v ON v.name = p.name AND v.version = p.current_version \
             ORDER BY p.name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing plugins"))?;
        rows.iter()
            .map(|row| {
                let current = version_from_row(row)?;
                Ok(PluginSummary {
                    name: current.name.clone(),
                    current_version: current.version,
                    latest_version: get(row, "latest_version", "plugins")?,
                    current,
                })
            })
            .collect()
    }

    /// One plugin with all its versions.
    pub async fn plugin(&self, name: &str) -> Result<PluginDetail, RegistryError> {
        let rows = sqlx::query(self.sql(&format!(
            "SELECT {VERSION_COLUMNS} FROM plugins p \
             JOIN plugin_versions v ON v.name = p.name WHERE p.name = ? ORDER BY v.version"
        )))
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a plugin"))?;
        let versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let current_version = versions
            .iter()
            .find(|v| v.current)
            .map(|v| v.version)
            .ok_or_else(|| RegistryError::PluginNotFound {
                name: name.to_owned(),
            })?;
        Ok(PluginDetail {
            name: name.to_owned(),
            current_version,
            versions,
        })
    }

    /// One version's details.
    pub async fn plugin_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<PluginVersion, RegistryError> {
        let detail = self.plugin(name).await?;
        let available = detail.versions.iter().map(|v| v.version).collect();
        detail
            .versions
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| RegistryError::VersionNotFound {
                name: name.to_owned(),
                version,
                available,
            })
    }

    /// Resolves a reference (current version unless pinned) to the version's
    /// details, without reading its component.
    pub async fn resolve_plugin(
        &self,
        reference: &PluginRef,
    ) -> Result<PluginVersion, RegistryError> {
        let detail = self.plugin(&reference.name).await?;
        let version = reference.version.unwrap_or(detail.current_version);
        let available = detail.versions.iter().map(|v| v.version).collect();
        detail
            .versions
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| RegistryError::VersionNotFound {
                name: reference.name.clone(),
                version,
                available,
            })
    }

    /// Resolves a reference (current version unless pinned) to the version's
    /// details and its component bytes.
    pub async fn plugin_component(
        &self,
        reference: &PluginRef,
    ) -> Result<(PluginVersion, Vec<u8>), RegistryError> {
        let info = self.resolve_plugin(reference).await?;
        let version = info.version;
        let chunks = sqlx::query(
            self.sql("SELECT bytes FROM plugin_chunks WHERE name = ? AND version = ? ORDER BY seq"),
        )
        .bind(&reference.name)
        .bind(version)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a plugin component"))?;
        let bytes = if chunks.is_empty() {
            // Stored before components were split into chunks.
            let row = sqlx::query(
                self.sql("SELECT component FROM plugin_versions WHERE name = ? AND version = ?"),
            )
            .bind(&reference.name)
            .bind(version)
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading a plugin component"))?;
            get(&row, "component", "plugin_versions")?
        } else {
            let mut bytes = Vec::with_capacity(usize::try_from(info.size_bytes).unwrap_or(0));
            for chunk in &chunks {
                bytes.extend_from_slice(&get::<Vec<u8>>(chunk, "bytes", "plugin_chunks")?);
            }
            bytes
        };
        let sha256: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if sha256 != info.sha256 {
            return Err(RegistryError::Corrupt {
                what: format!("component of {}@{version}", reference.name),
                reason: format!(
                    "its sha256 is {sha256}, not the {} recorded at upload",
                    info.sha256
                ),
            });
        }
        Ok((info, bytes))
    }

    /// Makes an earlier (or later) stored version current.
    pub async fn rollback_plugin(
        &self,
        name: &str,
        version: i64,
    ) -> Result<PluginVersion, RegistryError> {
        let mut tx = self.begin_write().await?;
        self.set_current_in(&mut tx, name, version).await?;
        tx.commit().await.map_err(db("committing a rollback"))?;
        tracing::info!(plugin = %name, version, "plugin rolled back");
        self.plugin_version(name, version).await
    }

    async fn set_current_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
        version: i64,
    ) -> Result<(), RegistryError> {
        let versions = self.versions_in(tx, name).await?;
        if !versions.contains(&version) {
            return Err(RegistryError::VersionNotFound {
                name: name.to_owned(),
                version,
                available: versions,
            });
        }
        sqlx::query(self.sql("UPDATE plugins SET current_version = ? WHERE name = ?"))
            .bind(version)
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(db("changing the current version"))?;
        Ok(())
    }

    /// Version numbers of `name`, ascending; `PluginNotFound` when there are none.
    pub(super) async fn versions_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
    ) -> Result<Vec<i64>, RegistryError> {
        let rows = sqlx::query(
            self.sql("SELECT version FROM plugin_versions WHERE name = ? ORDER BY version"),
        )
        .bind(name)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("listing plugin versions"))?;
        let versions = rows
            .iter()
            .map(|row| get(row, "version", "plugin_versions"))
            .collect::<Result<Vec<i64>, _>>()?;
        if versions.is_empty() {
            return Err(RegistryError::PluginNotFound {
                name: name.to_owned(),
            });
        }
        Ok(versions)
    }

    /// Deletes a plugin with every version. Refused while scenarios use it,
    /// unless `force`, which disables those scenarios. Returns the scenarios
    /// that were disabled.
    pub async fn delete_plugin(
        &self,
        name: &str,
        force: bool,
    ) -> Result<Vec<String>, RegistryError> {
        let mut tx = self.begin_write().await?;
        self.versions_in(&mut tx, name).await?;
        let users = self.delete_all_in(&mut tx, name, force).await?;
        tx.commit().await.map_err(db("committing a deletion"))?;
        tracing::info!(plugin = %name, disabled = ?users, "plugin deleted");
        Ok(users)
    }

    async fn delete_all_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
        force: bool,
    ) -> Result<Vec<String>, RegistryError> {
        let users = self.scenarios_using_in(tx, name, None).await?;
        if !users.is_empty() && !force {
            return Err(RegistryError::PluginInUse {
                name: name.to_owned(),
                version: None,
                scenarios: users,
            });
        }
        self.disable_scenarios_in(tx, &users).await?;
        sqlx::query(self.sql("DELETE FROM plugin_chunks WHERE name = ?"))
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(db("deleting plugin components"))?;
        sqlx::query(self.sql("DELETE FROM plugin_versions WHERE name = ?"))
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(db("deleting plugin versions"))?;
        sqlx::query(self.sql("DELETE FROM plugins WHERE name = ?"))
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(db("deleting a plugin"))?;
        Ok(users)
    }

    /// Deletes one version. The current version can only go with the whole
    /// plugin (when it is the only version, this deletes the plugin). Refused
    /// while scenarios pin it, unless `force`, which disables them.
    pub async fn delete_plugin_version(
        &self,
        name: &str,
        version: i64,
        force: bool,
    ) -> Result<Vec<String>, RegistryError> {
        let mut tx = self.begin_write().await?;
        let versions = self.versions_in(&mut tx, name).await?;
        if !versions.contains(&version) {
            return Err(RegistryError::VersionNotFound {
                name: name.to_owned(),
                version,
                available: versions,
            });
        }
        if versions.len() == 1 {
            let users = self.delete_all_in(&mut tx, name, force).await?;
            tx.commit().await.map_err(db("committing a deletion"))?;
            tracing::info!(plugin = %name, disabled = ?users, "plugin deleted with its last version");
            return Ok(users);
        }
        let row = sqlx::query(self.sql("SELECT current_version FROM plugins WHERE name = ?"))
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading a plugin"))?;
        let current: i64 = get(&row, "current_version", "plugins")?;
        if current == version {
            return Err(RegistryError::DeleteCurrent {
                name: name.to_owned(),
                version,
            });
        }
        let users = self
            .scenarios_using_in(&mut tx, name, Some(version))
            .await?;
        if !users.is_empty() && !force {
            return Err(RegistryError::PluginInUse {
                name: name.to_owned(),
                version: Some(version),
                scenarios: users,
            });
        }
        self.disable_scenarios_in(&mut tx, &users).await?;
        sqlx::query(self.sql("DELETE FROM plugin_chunks WHERE name = ? AND version = ?"))
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting a plugin component"))?;
        sqlx::query(self.sql("DELETE FROM plugin_versions WHERE name = ? AND version = ?"))
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db("deleting a plugin version"))?;
        tx.commit().await.map_err(db("committing a deletion"))?;
        tracing::info!(plugin = %name, version, disabled = ?users, "plugin version deleted");
        Ok(users)
    }

    /// Scenarios that reference `name` (any version), or that pin `version`.
    async fn scenarios_using_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
        version: Option<i64>,
    ) -> Result<Vec<String>, RegistryError> {
        let rows = match version {
            None => {
                sqlx::query(self.sql(
                    "SELECT scenario_id FROM scenarios WHERE plugin_name = ? ORDER BY scenario_id",
                ))
                .bind(name)
                .fetch_all(&mut **tx)
                .await
            }
            Some(v) => sqlx::query(self.sql(
                "SELECT scenario_id FROM scenarios WHERE plugin_name = ? AND plugin_version = ? \
                     ORDER BY scenario_id",
            ))
            .bind(name)
            .bind(v)
            .fetch_all(&mut **tx)
            .await,
        }
        .map_err(db("finding the scenarios that use a plugin"))?;
        rows.iter()
            .map(|row| get(row, "scenario_id", "scenarios"))
            .collect()
    }
}

/// The plugin's config schema must compile as a JSON Schema, or no scenario
/// could ever be checked against it.
fn check_schema(name: &str, info: &PluginInfo) -> Result<(), RegistryError> {
    let refused = |reason: String| RegistryError::InvalidPluginSchema {
        name: name.to_owned(),
        reason,
    };
    let schema: serde_json::Value =
        serde_json::from_str(&info.config_schema).map_err(|e| refused(e.to_string()))?;
    jsonschema::validator_for(&schema).map_err(|e| refused(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_follow_the_rules() {
        for good in ["scenario", "access-log", "a1", "x-2-y"] {
            assert!(valid_plugin_name(good), "{good}");
        }
        for bad in ["", "Scenario", "1abc", "a_b", "a b", &"a".repeat(65)] {
            assert!(!valid_plugin_name(bad), "{bad}");
        }
    }

    #[test]
    fn references_parse_with_and_without_a_version() {
        assert_eq!(
            PluginRef::parse("scenario").unwrap(),
            PluginRef {
                name: "scenario".into(),
                version: None
            }
        );
        let pinned = PluginRef::parse("access-log@3").unwrap();
        assert_eq!(pinned.version, Some(3));
        assert_eq!(pinned.to_string(), "access-log@3");
        for bad in ["scenario@", "scenario@0", "scenario@1.2.0", "Bad", "@3"] {
            let err = PluginRef::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
