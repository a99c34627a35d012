//! SQL through sqlx against MariaDB, PostgreSQL and SQLite: a table, a transaction
//! that commits and one that rolls back.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, AssertSqlSafe, Row};

/// Every statement here is built from constants and a table name this test made up.
fn safe(sql: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(sql)
}
use weir_integration::{Service, unique};

async fn exercise(pool: &AnyPool) {
    let table = unique("smoke").replace('-', "_");
    sqlx::query(safe(format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(64) NOT NULL)"
    )))
    .execute(pool)
    .await
    .expect("create table");

    let mut tx = pool.begin().await.expect("begin");
    for (id, name) in [(1, "scenario"), (2, "access-log"), (3, "구매")] {
        sqlx::query(safe(format!(
            "INSERT INTO {table} (id, name) VALUES ({id}, '{name}')"
        )))
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(safe(format!(
        "INSERT INTO {table} (id, name) VALUES (4, 'rolled back')"
    )))
    .execute(&mut *tx)
    .await
    .expect("insert");
    tx.rollback().await.expect("rollback");

    let rows = sqlx::query(safe(format!("SELECT id, name FROM {table} ORDER BY id")))
        .fetch_all(pool)
        .await
        .expect("select");
    let got: Vec<(i64, String)> = rows
        .iter()
        .map(|row| {
            // INTEGER is 32 bits in MariaDB and PostgreSQL, 64 in SQLite.
            let id = row
                .try_get::<i64, _>(0)
                .or_else(|_| row.try_get::<i32, _>(0).map(i64::from));
            (id.expect("id"), row.get(1))
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "scenario".into()),
            (2, "access-log".into()),
            (3, "구매".into())
        ],
        "committed rows, in order, with Korean text intact; the rolled-back row absent"
    );

    sqlx::query(safe(format!("DROP TABLE {table}")))
        .execute(pool)
        .await
        .expect("drop table");
}

async fn pool(url: &str) -> AnyPool {
    install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

#[tokio::test]
async fn mariadb_commits_and_rolls_back() {
    exercise(&pool(&Service::MariaDb.addr()).await).await;
}

#[tokio::test]
async fn postgres_commits_and_rolls_back() {
    exercise(&pool(&Service::Postgres.addr()).await).await;
}

#[tokio::test]
async fn sqlite_commits_and_rolls_back() {
    let dir = std::env::temp_dir().join(unique("weir-sqlite"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("registry.db").display());
    exercise(&pool(&url).await).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}
