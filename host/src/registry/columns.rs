//! The archive's column types per scenario (`archive_columns`): learned once by the
//! first writer, read by every other (see `archive/columns.rs`). Not part of the
//! catalog the pipeline follows: learning a column bumps no generation.

use std::collections::BTreeMap;

use super::{Backend, Registry, RegistryError, db, get, now_ms};

/// Longest field name that gets a column of its own; longer ones stay in `extra`.
pub const MAX_COLUMN_NAME: usize = 255;

impl Registry {
    /// The archive column types learned for `scenario`: field name → type name.
    pub async fn archive_columns(
        &self,
        scenario: &str,
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        let rows =
            sqlx::query(self.sql("SELECT name, kind FROM archive_columns WHERE scenario_id = ?"))
                .bind(scenario.to_owned())
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading the archive's column types"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    get::<String>(row, "name", "archive_columns")?,
                    get::<String>(row, "kind", "archive_columns")?,
                ))
            })
            .collect()
    }

    /// Keeps the `proposed` column types of `scenario` where none is kept yet (the
    /// first writer wins, whatever the others propose), and returns every column
    /// type kept for it.
    pub async fn learn_archive_columns(
        &self,
        scenario: &str,
        proposed: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        let insert = match self.backend {
            Backend::Sqlite => "INSERT OR IGNORE INTO",
            Backend::MySql => "INSERT IGNORE INTO",
            Backend::Postgres => "INSERT INTO",
        };
        let conflict = match self.backend {
            Backend::Postgres => " ON CONFLICT (scenario_id, name) DO NOTHING",
            Backend::Sqlite | Backend::MySql => "",
        };
        let sql = format!(
            "{insert} archive_columns (scenario_id, name, kind, learned_at) VALUES (?, ?, ?, ?){conflict}"
        );
        let now = now_ms();
        for (name, kind) in proposed
            .iter()
            .filter(|(name, _)| name.len() <= MAX_COLUMN_NAME)
        {
            sqlx::query(self.sql(&sql))
                .bind(scenario.to_owned())
                .bind(name.clone())
                .bind(kind.clone())
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db("keeping the archive's column types"))?;
        }
        self.archive_columns(scenario).await
    }
}
