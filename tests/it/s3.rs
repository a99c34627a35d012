//! The archive on a real S3-compatible server (SeaweedFS, started by `tests/stack`):
//! files named by their place in their directory's chain and written only if the
//! name is free, read back with pyarrow; `weir serve` killed while a file is between
//! its multipart upload and its conditional copy; the server restarted mid-stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt};
use weir::archive::{ArchiveConfig, ArchiveSink, Naming, S3Settings, S3Store, TMP_DIR};
use weir_integration::{Service, unique};

use crate::archive::{
    Expected, PipelineSetup, archive_pipeline, check_named, kill_test_config, pipeline_setup,
    read_back, restart_after_kill, serve_with, still_serving, through_an_outage,
};

/// Where the test server is and the keys it takes.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    key: String,
    secret: String,
}

impl Server {
    pub(crate) fn shared() -> Self {
        Self::at(Service::S3.addr())
    }

    fn at(endpoint: String) -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: load the test servers' variables with \
                     `eval \"$(tests/stack env)\"`, or run every test with `tests/run`"
                )
            })
        };
        Self {
            endpoint,
            bucket: var("WEIR_TEST_S3_BUCKET"),
            key: var("WEIR_TEST_S3_ACCESS_KEY"),
            secret: var("WEIR_TEST_S3_SECRET_KEY"),
        }
    }

    pub(crate) fn settings(&self, prefix: &str, multipart_mb: u64) -> S3Settings {
        S3Settings {
            url: format!("s3://{}/{prefix}", self.bucket),
            endpoint: self.endpoint.clone(),
            region: "us-east-1".into(),
            virtual_hosted: false,
            multipart_mb,
            credentials: Some((self.key.clone(), self.secret.clone())),
        }
    }

    /// A client of the test's own, to read back what the archive wrote.
    pub(crate) fn client(&self) -> Arc<AmazonS3> {
        // rustls with ring, as the service has it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_bucket_name(&self.bucket)
                .with_region("us-east-1")
                .with_access_key_id(&self.key)
                .with_secret_access_key(&self.secret)
                .with_client_options(ClientOptions::new().with_allow_http(true))
                .build()
                .expect("S3 client"),
        )
    }

    /// The variables a `weir serve` reads its credentials from.
    pub(crate) fn vars(&self) -> [(&str, &str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", self.key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.as_str()),
            ("AWS_REGION", "us-east-1"),
        ]
    }
}

async fn s3_sink(server: &Server, prefix: &str, config: ArchiveConfig) -> ArchiveSink {
    let handle = tokio::runtime::Handle::current();
    let settings = server.settings(prefix, config.s3_multipart_mb);
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(config.store_timeout_secs);
        let store = S3Store::new(&settings, handle, timeout).expect("S3 store");
        ArchiveSink::with_store(&config, Box::new(store))
    })
    .await
    .expect("join")
    .expect("archive sink")
}

/// Relative paths of every object under `prefix`.
async fn list(client: &AmazonS3, prefix: &str) -> Vec<String> {
    let base = ObjectPath::from(prefix);
    let mut listed = client.list(Some(&base));
    let mut paths = Vec::new();
    while let Some(meta) = listed.next().await {
        let location = meta.expect("list").location.to_string();
        paths.push(location[prefix.len() + 1..].to_owned());
    }
    paths.sort();
    paths
}

/// Copies every object under `prefix` into a fresh local directory.
pub(crate) async fn copy_from_s3(client: &AmazonS3, prefix: &str) -> (PathBuf, Vec<String>) {
    let local = std::env::temp_dir().join(unique("weir-s3-copy"));
    let paths = list(client, prefix).await;
    for path in &paths {
        let bytes = client
            .get(&ObjectPath::from(format!("{prefix}/{path}")))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("read");
        let target = local.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &bytes).unwrap();
    }
    (local, paths)
}

/// Reads the archive under `prefix` back with pyarrow and checks it: no temporary
/// object left, every row once, each directory's chain whole. Returns the paths.
async fn check_s3_archive(
    client: &AmazonS3,
    prefix: &str,
    expected: &Expected,
    topic: &str,
) -> Vec<String> {
    let (local, paths) = copy_from_s3(client, prefix).await;
    assert!(
        paths.iter().all(|p| !p.starts_with(TMP_DIR)),
        "no temporary objects left: {paths:?}"
    );
    let read = tokio::task::spawn_blocking(move || {
        let read = read_back(&local);
        let _ = std::fs::remove_dir_all(&local);
        read
    })
    .await
    .expect("join");
    check_named(&read, expected, topic, Naming::Position);
    paths
}

pub(crate) async fn clean_up(client: &AmazonS3, prefix: &str) {
    for path in list(client, prefix).await {
        let _ = client
            .delete(&ObjectPath::from(format!("{prefix}/{path}")))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_through_the_pipeline_are_archived_once_on_s3() {
    let brokers = Service::Kafka.addr();
    let server = Server::shared();
    let u = unique("s3");
    let PipelineSetup {
        registry,
        events_topic,
        dlq,
        expected,
        ..
    } = pipeline_setup(&brokers, &u, 100_000).await;

    let prefix = format!("archive/{u}");
    // Some files go up in one PUT, the larger ones as multipart uploads.
    let sink = s3_sink(
        &server,
        &prefix,
        ArchiveConfig {
            s3_multipart_mb: 1,
            ..ArchiveConfig::default()
        },
    )
    .await;
    let config = archive_pipeline(&brokers, &u, (&events_topic, &dlq), 4096, 50);
    crate::pipeline::run_until(config, &registry, vec![Box::new(sink)], 100_000).await;

    let client = server.client();
    let paths = check_s3_archive(&client, &prefix, &expected, &events_topic).await;
    let hours: std::collections::BTreeSet<&str> = paths
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    assert_eq!(
        hours.len(),
        2 * 3,
        "two scenarios over three hours: {hours:?}"
    );
    clean_up(&client, &prefix).await;
}

/// Every file goes up as a multipart upload to `_tmp/`, then is copied under its
/// final name. Once five files are stored, `weir serve` is killed the moment such a
/// temporary object is seen;
/// the restart fences the partitions (deleting what was left) and the archive ends
/// with every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_serve_killed_during_a_multipart_upload_restarts_exactly_once_on_s3() {
    let brokers = Service::Kafka.addr();
    let server = Server::shared();
    let u = unique("s3kill");
    let total = 30_000i64;
    let PipelineSetup {
        registry,
        registry_url,
        events_topic,
        dlq,
        out,
        expected,
    } = pipeline_setup(&brokers, &u, total).await;
    drop(registry);
    let data = std::env::temp_dir().join(unique("weir-s3kill"));
    std::fs::create_dir_all(&data).expect("data dir");
    let prefix = format!("archive/{u}");
    let head = kill_test_config(&data, &registry_url, &brokers, &u, &events_topic, &dlq);
    let config = |archive: &str| {
        format!(
            "{head}[archive]\nroot = \"s3://{bucket}/{prefix}\"\ns3_endpoint = {endpoint:?}\n\
             s3_multipart_mb = 0\n{archive}\n",
            bucket = server.bucket,
            endpoint = server.endpoint,
        )
    };
    let first = data.join("first.toml");
    std::fs::write(
        &first,
        config("max_file_age_secs = 3600\nidle_secs = 3600\nmax_open_files = 2"),
    )
    .unwrap();
    let client = server.client();
    let mut child = serve_with(&first, &data.join("first.log"), &server.vars());
    let started = Instant::now();
    let tmp = format!("{prefix}/{TMP_DIR}");
    let mut stored = 0;
    let caught = loop {
        // Some files stored first, so offsets were committed before the kill.
        if stored < 5 {
            stored = list(&client, &prefix)
                .await
                .iter()
                .filter(|p| p.ends_with(".parquet"))
                .count();
        }
        let mid_put = list(&client, &tmp)
            .await
            .into_iter()
            .find(|p| p.ends_with(".parquet.tmp"));
        if let (true, Some(path)) = (stored >= 5, mid_put) {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            break path;
        }
        still_serving(
            &mut child,
            started,
            &data.join("first.log"),
            "no file seen between its upload and its copy",
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!("killed while {caught} was between its upload and its copy");
    restart_after_kill(
        &brokers,
        &u,
        &events_topic,
        &expected,
        &config("max_file_age_secs = 2\nidle_secs = 1"),
        &data,
        &server.vars(),
    )
    .await;

    check_s3_archive(&client, &prefix, &expected, &events_topic).await;
    let outputs = crate::pipeline::read_committed(&brokers, &[&out, &dlq], total as usize);
    assert_eq!(
        outputs.len(),
        total as usize,
        "each output once, no dead letters"
    );
    clean_up(&client, &prefix).await;
    let _ = std::fs::remove_dir_all(&data);
}

/// The S3 server stops mid-stream: cycles fail, consumption pauses, nothing is
/// committed past the files not stored; when it is back the pipeline catches up and
/// the archive holds every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_server_restarted_mid_stream_loses_nothing_and_doubles_nothing() {
    let brokers = Service::Kafka.addr();
    Service::S3.addr();
    // A server of the test's own, so restarting it leaves the shared one alone.
    let stack =
        tokio::task::spawn_blocking(|| weir_integration::PrivateStack::start(&["s3"], 19_900))
            .await
            .expect("join");
    let server = Server::at(format!("http://127.0.0.1:{}", 19_900 + stack.offset));
    let u = unique("s3restart");
    let total = 40_000i64;
    let PipelineSetup {
        registry,
        events_topic,
        dlq,
        expected,
        ..
    } = pipeline_setup(&brokers, &u, total).await;
    let prefix = format!("archive/{u}");
    let sink = s3_sink(
        &server,
        &prefix,
        ArchiveConfig {
            max_file_age_secs: 1,
            idle_secs: 1,
            store_timeout_secs: 5,
            ..ArchiveConfig::default()
        },
    )
    .await;
    let config = archive_pipeline(&brokers, &u, (&events_topic, &dlq), 500, 20);
    through_an_outage(
        config,
        registry,
        Box::new(sink),
        total,
        "S3",
        || stack.must(&["down", "s3"]),
        || stack.must(&["up", "s3"]),
    )
    .await;

    check_s3_archive(&server.client(), &prefix, &expected, &events_topic).await;
    tokio::task::spawn_blocking(move || drop(stack))
        .await
        .expect("join");
}
