//! The registry used directly (as the pipeline and `weir serve` use it), on
//! SQLite, MariaDB and PostgreSQL: shipped plugins, concurrent writers,
//! migrations on an existing database.

use weir::registry::{MakeCurrent, PluginRef, PutMode, Registry};

use crate::api::{Database, TestDb, artifact, padded, runtime, variant};

async fn shipped_plugins_install_idempotently_and_keep_a_rollback(db: Database) {
    let test_db = TestDb::create(db).await;
    let registry = Registry::connect(&test_db.url, runtime()).await.unwrap();
    let scenario = artifact(weir_artifacts::PLUGIN_SCENARIO);
    let access_log = artifact(weir_artifacts::PLUGIN_ACCESS_LOG);
    let shipped: [(&str, &[u8]); 2] = [("scenario", &scenario), ("access-log", &access_log)];

    registry.install_shipped(&shipped).await.unwrap();
    let generation = registry.generation().await.unwrap();
    registry.install_shipped(&shipped).await.unwrap();
    assert_eq!(
        registry.generation().await.unwrap(),
        generation,
        "a second install changes nothing"
    );
    let names: Vec<String> = registry
        .list_plugins()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["access-log", "scenario"]);

    // An operator pushes a fix and rolls back to the shipped one; a restart
    // (install again) keeps the operator's choice.
    let fix = registry
        .upload_plugin(
            variant(&scenario, "fix"),
            Some("scenario"),
            "admin",
            MakeCurrent::Always,
        )
        .await
        .unwrap();
    assert_eq!(fix.version.version, 2);
    registry.rollback_plugin("scenario", 1).await.unwrap();
    registry.install_shipped(&shipped).await.unwrap();
    assert_eq!(
        registry.plugin("scenario").await.unwrap().current_version,
        1
    );

    // A new release ships new bytes: they become current.
    let release: [(&str, &[u8]); 1] = [("scenario", &variant(&scenario, "release-2"))];
    registry.install_shipped(&release).await.unwrap();
    assert_eq!(
        registry.plugin("scenario").await.unwrap().current_version,
        3
    );

    let (info, bytes) = registry
        .plugin_component(&PluginRef {
            name: "scenario".into(),
            version: None,
        })
        .await
        .unwrap();
    assert_eq!(info.version, 3);
    assert_eq!(bytes, variant(&scenario, "release-2"));
    registry.close().await;
    test_db.drop_database().await;
}

async fn concurrent_uploads_get_distinct_consecutive_versions(db: Database) {
    let test_db = TestDb::create(db).await;
    let registry = Registry::connect(&test_db.url, runtime()).await.unwrap();
    let base = artifact(weir_artifacts::FIXTURE_PASSTHROUGH);
    let before = registry.generation().await.unwrap();
    let uploads = (0..6).map(|i| {
        let registry = registry.clone();
        let bytes = variant(&base, &format!("c{i}"));
        tokio::spawn(async move {
            registry
                .upload_plugin(bytes, None, "admin", MakeCurrent::Always)
                .await
                .map(|u| u.version.version)
        })
    });
    let mut versions = Vec::new();
    for upload in uploads {
        versions.push(upload.await.unwrap().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    assert_eq!(registry.generation().await.unwrap(), before + 6);
    registry.close().await;
    test_db.drop_database().await;
}

async fn reconnecting_keeps_the_data_and_migrations_run_once(db: Database) {
    let test_db = TestDb::create(db).await;
    let registry = Registry::connect(&test_db.url, runtime()).await.unwrap();
    registry
        .upload_plugin(
            artifact(weir_artifacts::FIXTURE_PASSTHROUGH),
            None,
            "admin",
            MakeCurrent::Always,
        )
        .await
        .unwrap();
    let generation = registry.generation().await.unwrap();
    registry.close().await;

    let again = Registry::connect(&test_db.url, runtime()).await.unwrap();
    assert_eq!(again.generation().await.unwrap(), generation);
    assert_eq!(again.list_plugins().await.unwrap().len(), 1);
    again.close().await;
    test_db.drop_database().await;
}

async fn components_larger_than_a_packet_round_trip(db: Database) {
    let test_db = TestDb::create(db).await;
    let registry = Registry::connect(&test_db.url, runtime()).await.unwrap();
    // 20 MiB: above MariaDB's default max_allowed_packet (16 MiB), below the
    // default upload limit (32 MiB).
    let padding: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let big = padded(&artifact(weir_artifacts::FIXTURE_PASSTHROUGH), &padding);
    let upload = registry
        .upload_plugin(big.clone(), Some("big"), "admin", MakeCurrent::Always)
        .await
        .unwrap();
    assert_eq!(upload.version.size_bytes, i64::try_from(big.len()).unwrap());
    let (_, bytes) = registry
        .plugin_component(&PluginRef {
            name: "big".into(),
            version: Some(1),
        })
        .await
        .unwrap();
    assert!(bytes == big, "the component comes back byte for byte");
    registry.delete_plugin("big", false).await.unwrap();
    assert!(registry.list_plugins().await.unwrap().is_empty());
    registry.close().await;
    test_db.drop_database().await;
}

async fn a_second_replica_sees_every_write_through_the_generation(db: Database) {
    let test_db = TestDb::create(db).await;
    let writer = Registry::connect(&test_db.url, runtime()).await.unwrap();
    let reader = Registry::connect(&test_db.url, runtime()).await.unwrap();
    let seen = reader.generation().await.unwrap();
    writer
        .upload_plugin(
            artifact(weir_artifacts::PLUGIN_SCENARIO),
            None,
            "admin",
            MakeCurrent::Always,
        )
        .await
        .unwrap();
    let after_upload = reader.generation().await.unwrap();
    assert!(after_upload > seen, "the reader notices the upload");
    let document = serde_json::json!({
        "scenario_id": "buy",
        "filters": [{"left": "e_n", "operator": "==", "right": "구매"}],
        "logical_operator": "AND"
    });
    writer
        .put_scenario(document, None, PutMode::Create, "admin")
        .await
        .unwrap();
    assert!(reader.generation().await.unwrap() > after_upload);
    let scenarios = reader.list_scenarios().await.unwrap();
    assert_eq!(scenarios.len(), 1);
    let spec = scenarios[0].spec().unwrap();
    assert_eq!(spec.plugin.name, "scenario");
    assert_eq!(spec.output_topic(), "weir.out.buy");
    assert_eq!(
        spec.plugin_config()["filters"][0]["right"],
        "구매",
        "Korean text survives the round trip"
    );
    writer.close().await;
    reader.close().await;
    test_db.drop_database().await;
}

/// Two replicas learn the archive columns of one scenario at once: the first to
/// write a column wins, the other gets its type back, and generations do not move.
async fn archive_column_types_are_learned_once_by_the_first_writer(db: Database) {
    let test_db = TestDb::create(db).await;
    let one = Registry::connect(&test_db.url, runtime()).await.unwrap();
    let other = Registry::connect(&test_db.url, runtime()).await.unwrap();
    let generation = one.generation().await.unwrap();
    let proposal = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, k)| ((*n).to_owned(), (*k).to_owned()))
            .collect()
    };
    let first = one
        .learn_archive_columns("5", &proposal(&[("x", "float64"), ("y", "int64")]))
        .await
        .unwrap();
    assert_eq!(first, proposal(&[("x", "float64"), ("y", "int64")]));
    let second = other
        .learn_archive_columns("5", &proposal(&[("x", "int64"), ("z", "string")]))
        .await
        .unwrap();
    assert_eq!(
        second,
        proposal(&[("x", "float64"), ("y", "int64"), ("z", "string")]),
        "x keeps the first writer's type"
    );
    assert_eq!(other.archive_columns("6").await.unwrap(), proposal(&[]));
    assert_eq!(one.generation().await.unwrap(), generation);
    one.close().await;
    other.close().await;
    test_db.drop_database().await;
}

macro_rules! on_every_database {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Database::Sqlite).await })*
        }
        mod mariadb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Database::MariaDb).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Database::Postgres).await })*
        }
    };
}

on_every_database!(
    shipped_plugins_install_idempotently_and_keep_a_rollback,
    concurrent_uploads_get_distinct_consecutive_versions,
    reconnecting_keeps_the_data_and_migrations_run_once,
    components_larger_than_a_packet_round_trip,
    a_second_replica_sees_every_write_through_the_generation,
    archive_column_types_are_learned_once_by_the_first_writer,
);
