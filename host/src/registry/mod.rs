//! The registry: the SQL state every weir process shares — uploaded plugins
//! and their versions, scenarios, member attributes — and the generation
//! number that tells replicas something changed.
//!
//! Data enters through [`Registry`]'s write methods ([`Registry::upload_plugin`],
//! [`Registry::put_scenario`], [`Registry::import_members`], …), which validate
//! it (plugins through the [`Runtime`], scenarios against their plugin) and
//! store it in one transaction: a request that fails stores nothing. It leaves
//! through the read methods, used by the HTTP API and by the pipeline.
//!
//! Backends: SQLite (the embedded default), MariaDB/MySQL and PostgreSQL,
//! chosen by the URL scheme and reached through sqlx's `Any` driver. The schema
//! lives in `host/migrations/<backend>/` (the dialects differ in blob and text
//! types) and is applied by [`Registry::connect`]. Statements are written once
//! with `?` placeholders and rewritten to `$n` for PostgreSQL.
//!
//! Generation: every write transaction first increments the single row of
//! `registry_generation`. That makes [`Registry::generation`] a one-row read a
//! replica can afford every second, and, because the increment takes that row's
//! write lock, it also serializes writers, so plugin version numbers are
//! assigned without races on every backend. A transaction that turns out to
//! change nothing (an upload of bytes already current) rolls back, increment
//! included.

mod columns;
mod members;
mod plugins;
mod scenarios;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, AssertSqlSafe, Transaction};

use crate::runtime::{Runtime, RuntimeError};

pub use columns::MAX_COLUMN_NAME;
pub use members::{Member, MemberFormat, parse_members};
pub use plugins::{
    MakeCurrent, PluginDetail, PluginRef, PluginSummary, PluginVersion, Upload, valid_plugin_name,
};
pub use scenarios::{
    CanaryBy, CanarySpec, DEFAULT_PLUGIN, Enrich, PutMode, Scenario, ScenarioSpec,
    WEIR_SCENARIO_FIELDS,
};
pub(crate) use scenarios::{valid_id, valid_topic};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static MYSQL: Migrator = sqlx::migrate!("migrations/mysql");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// One problem with one field of a request, for field-level error lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where: a field path such as `filters[2].operator`, or `line 3` for imports.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Everything the registry can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database URL names no backend weir supports.
    #[error(
        "database URL `{url}` is not supported: use sqlite://PATH, mysql://USER:PASS@HOST:PORT/DB \
         (MariaDB too) or postgres://USER:PASS@HOST:PORT/DB"
    )]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
    },
    /// The database could not be reached or set up.
    #[error("cannot open the registry database {url}: {reason}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// The driver's message.
        reason: String,
    },
    /// Applying the schema migrations failed.
    #[error("cannot migrate the registry database {url}: {reason}")]
    Migrate {
        /// The URL, password removed.
        url: String,
        /// The migrator's message.
        reason: String,
    },
    /// A statement failed.
    #[error("registry database error while {action}: {source}")]
    Database {
        /// What the registry was doing.
        action: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Stored data could not be read back (a row that does not decode).
    #[error("registry holds unreadable data in {what}: {reason}")]
    Corrupt {
        /// Which row.
        what: String,
        /// Why.
        reason: String,
    },
    /// The uploaded bytes are not a plugin this host accepts.
    #[error(transparent)]
    InvalidPlugin(RuntimeError),
    /// The plugin's configuration schema is not a usable JSON Schema.
    #[error("plugin `{name}`: its config-schema is not a valid JSON Schema: {reason}")]
    InvalidPluginSchema {
        /// The plugin's name.
        name: String,
        /// The schema compiler's message.
        reason: String,
    },
    /// A plugin name that does not follow the rules.
    #[error(
        "plugin name `{name}` is not valid: use 1 to 64 lowercase letters, digits and `-`, \
         starting with a letter"
    )]
    InvalidPluginName {
        /// The refused name.
        name: String,
    },
    /// No plugin of that name.
    #[error("no plugin named `{name}`")]
    PluginNotFound {
        /// The name asked for.
        name: String,
    },
    /// The plugin exists but not that version.
    #[error("plugin `{name}` has no version {version}; it has versions {available:?}")]
    VersionNotFound {
        /// The plugin.
        name: String,
        /// The version asked for.
        version: i64,
        /// The versions it has.
        available: Vec<i64>,
    },
    /// Deleting something scenarios still use.
    #[error(
        "plugin `{name}`{} is used by scenario(s) {}; change or delete them first, or delete with \
         force=true (which disables them)",
        .version.map(|v| format!(" version {v}")).unwrap_or_default(),
        .scenarios.join(", ")
    )]
    PluginInUse {
        /// The plugin.
        name: String,
        /// The version, when deleting one version.
        version: Option<i64>,
        /// The scenarios using it.
        scenarios: Vec<String>,
    },
    /// Deleting the current version while others exist.
    #[error(
        "version {version} is the current version of plugin `{name}`; roll back to another \
         version first, or delete the whole plugin"
    )]
    DeleteCurrent {
        /// The plugin.
        name: String,
        /// Its current version.
        version: i64,
    },
    /// A scenario document with problems, all of them listed.
    #[error("scenario{} is not valid: {}", .scenario.as_ref().map(|s| format!(" `{s}`")).unwrap_or_default(), summarize(.errors))]
    InvalidScenario {
        /// The scenario id, when it could be read.
        scenario: Option<String>,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
    /// No scenario with that id.
    #[error("no scenario with id `{id}`")]
    ScenarioNotFound {
        /// The id asked for.
        id: String,
    },
    /// Creating a scenario whose id is taken.
    #[error("scenario `{id}` already exists; update it with PUT /api/scenarios/{id}")]
    ScenarioExists {
        /// The id.
        id: String,
    },
    /// A member import with problems, all of them listed; nothing was imported.
    #[error("member import refused, nothing imported: {}", summarize(.errors))]
    InvalidMembers {
        /// Every problem found, by line.
        errors: Vec<FieldError>,
    },
    /// No member with that id.
    #[error("no member with id `{id}`")]
    MemberNotFound {
        /// The id asked for.
        id: String,
    },
    /// A blocking task (plugin validation) panicked or was cancelled.
    #[error("plugin validation task failed: {0}")]
    Task(String),
}

impl RegistryError {
    /// Whether the caller caused this error (bad input, missing or conflicting
    /// item) rather than the registry or its database.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            RegistryError::UnsupportedUrl { .. }
                | RegistryError::Connect { .. }
                | RegistryError::Migrate { .. }
                | RegistryError::Database { .. }
                | RegistryError::Corrupt { .. }
                | RegistryError::Task(_)
        )
    }
}

impl RegistryError {
    /// Whether the database could not be reached (no connection within the
    /// pool's wait, or the connection broke), rather than refusing a statement.
    pub fn is_unreachable(&self) -> bool {
        match self {
            RegistryError::Connect { .. } => true,
            RegistryError::Database { source, .. } => matches!(
                source,
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
            ),
            _ => false,
        }
    }
}

fn summarize(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which SQL dialect a registry speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the embedded default.
    Sqlite,
    /// MariaDB or MySQL.
    MySql,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend a database URL names, if weir supports it.
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0;
        match scheme {
            "sqlite" => Some(Backend::Sqlite),
            "mysql" | "mariadb" => Some(Backend::MySql),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }
}

/// A URL with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// The shared registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pool: AnyPool,
    /// The URL as the driver takes it, password included: never shown.
    url: String,
    /// The URL as configured, without the password.
    location: String,
    backend: Backend,
    runtime: Runtime,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("location", &self.location)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens the database at `url` (creating a SQLite file if needed), applies
    /// pending migrations, and returns the registry. Plugins and scenarios are
    /// validated with `runtime`.
    pub async fn connect(url: &str, runtime: Runtime) -> Result<Self, RegistryError> {
        let registry = Self::open(url, runtime)?;
        registry.migrate().await?;
        Ok(registry)
    }

    /// The registry at `url` without connecting yet: only the URL is checked
    /// (an unsupported one is an error). Statements wait for the database, so
    /// [`Registry::migrate`] must have worked before the registry is used.
    pub fn open(url: &str, runtime: Runtime) -> Result<Self, RegistryError> {
        let shown = redact_url(url);
        let backend = Backend::from_url(url)
            .ok_or_else(|| RegistryError::UnsupportedUrl { url: shown.clone() })?;
        install_default_drivers();
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            Backend::MySql if url.starts_with("mariadb:") => {
                format!("mysql:{}", &url["mariadb:".len()..])
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&url)
            .map_err(|e| RegistryError::Connect {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            pool,
            url,
            location: shown,
            backend,
            runtime,
        })
    }

    /// Connects once (a refused connection fails at once, not after the
    /// pool's wait) and applies pending migrations.
    pub async fn migrate(&self) -> Result<(), RegistryError> {
        use sqlx::Connection;
        let shown = &self.location;
        let probe = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::AnyConnection::connect(&self.url),
        )
        .await
        .map_err(|_| RegistryError::Connect {
            url: shown.clone(),
            reason: "no answer within 10 s".into(),
        })?
        .map_err(|e| RegistryError::Connect {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let _ = probe.close().await;
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE,
            Backend::MySql => &MYSQL,
            Backend::Postgres => &POSTGRES,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| RegistryError::Migrate {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        tracing::info!(database = %shown, backend = ?self.backend, "registry ready");
        Ok(())
    }

    /// Whether a failure to connect or migrate is a misconfiguration that no
    /// retry fixes: credentials refused, no such database, a bad option.
    pub fn is_misconfiguration(error: &RegistryError) -> bool {
        let reason = match error {
            RegistryError::UnsupportedUrl { .. } => return true,
            RegistryError::Connect { reason, .. } | RegistryError::Migrate { reason, .. } => reason,
            _ => return false,
        };
        // The drivers' words for refused credentials and a missing database
        // (MySQL 1045/1044/1049, PostgreSQL 28P01/28000/3D000), and for a bad
        // option in the URL.
        [
            "Access denied",
            "Unknown database",
            "password authentication failed",
            "28P01",
            "28000",
            "3D000",
            "does not exist",
            "error with configuration",
            "unable to open database file",
        ]
        .iter()
        .any(|words| reason.contains(words))
    }

    /// Where the database is: its URL without the password.
    pub fn location(&self) -> String {
        self.location.clone()
    }

    /// The SQL dialect in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The runtime plugins are validated with.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The generation number: it grows by at least one with every write. One
    /// single-row read, cheap enough to poll every second.
    pub async fn generation(&self) -> Result<i64, RegistryError> {
        let row = sqlx::query(self.sql("SELECT generation FROM registry_generation WHERE id = 1"))
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the generation"))?;
        get(&row, "generation", "registry_generation")
    }

    /// A statement in this backend's placeholder syntax. `sql` is always a
    /// constant of this module with `?` placeholders and no `?` elsewhere.
    fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        if self.backend != Backend::Postgres {
            return AssertSqlSafe(sql.to_owned());
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        AssertSqlSafe(out)
    }

    /// Starts a write transaction: bumps the generation first, which also
    /// takes the registry-wide write lock (see the module docs).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, RegistryError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        sqlx::query(
            self.sql("UPDATE registry_generation SET generation = generation + 1 WHERE id = 1"),
        )
        .execute(&mut *tx)
        .await
        .map_err(db("bumping the generation"))?;
        Ok(tx)
    }
}

/// Maps a driver error to [`RegistryError::Database`] with what was being done.
fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> RegistryError {
    move |source| RegistryError::Database { action, source }
}

/// Reads one column, naming the table in the error.
fn get<'r, T>(row: &'r sqlx::any::AnyRow, column: &str, what: &str) -> Result<T, RegistryError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    use sqlx::Row;
    row.try_get(column).map_err(|e| RegistryError::Corrupt {
        what: format!("{what}.{column}"),
        reason: e.to_string(),
    })
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// RFC 3339 UTC text of a Unix-milliseconds time, e.g. `2026-11-26T13:05:09.042Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_chosen_by_scheme() {
        assert_eq!(
            Backend::from_url("sqlite:///tmp/x.db"),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("mariadb://a:b@h:1/d"),
            Some(Backend::MySql)
        );
        assert_eq!(
            Backend::from_url("postgresql://h/d"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("redis://h"), None);
        assert_eq!(Backend::from_url("nonsense"), None);
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("mysql://weir:secret@127.0.0.1:13306/weir"),
            "mysql://weir:***@127.0.0.1:13306/weir"
        );
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_784_709_042), "2026-11-27T13:05:09.042Z");
    }
}
