//! Operating weir while a dependency is down: `weir serve` started with one of
//! Kafka, Redis, HDFS or MariaDB unreachable answers on its API at once,
//! `/readyz` names the missing one with 503, the log says once what it waits
//! for, and when the dependency comes the service turns ready and counts every
//! event produced meanwhile exactly once. A bad URL for each exits non-zero
//! naming it.
//!
//! A dependency is made unreachable, and then reachable, by a gate: weir is
//! given a port on 127.0.0.1 where nothing listens (connections are refused),
//! and later a forwarder to the real server opens on that port, as a server
//! starting there would.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_integration::{Service, host_port, unique};

use crate::api::{Database, TestDb};
use crate::window::{ADMIN, Serve};

/// A port where nothing listens until [`Gate::open`] forwards it to a server.
struct Gate {
    port: u16,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    fn closed() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        Self {
            port,
            forwarder: None,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Forwards every connection to `target` (`host:port`) from now on.
    async fn open(&mut self, target: String) {
        let listener = tokio::net::TcpListener::bind(self.addr())
            .await
            .expect("the gate's port is still free");
        self.forwarder = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
    }
}

/// `weir serve --demo --demo-events 0` (scenario 5 and its members, no
/// feed) with `config`, and the time its API took to answer.
fn launch(config: &str) -> (Serve, Duration) {
    let started = Instant::now();
    let serve = Serve::launch("weir-deps", config, &["--demo", "--demo-events", "0"]);
    (serve, started.elapsed())
}

fn text(weir: &Serve) -> String {
    std::fs::read_to_string(&weir.log).unwrap_or_default()
}

fn lines_with(weir: &Serve, words: &str) -> usize {
    text(weir).lines().filter(|l| l.contains(words)).count()
}

/// `GET path`: status and JSON body.
async fn get(weir: &Serve, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("http://{}{path}", weir.api))
        .bearer_auth(ADMIN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}; log: {}", weir.log.display()));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits up to `limit` for `GET path` to answer `status`; the last body.
async fn wait_for(weir: &mut Serve, path: &str, status: u16, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        assert!(
            weir.child.try_wait().unwrap().is_none(),
            "weir serve exited; log: {}",
            weir.log.display()
        );
        let (got, body) = get(weir, path).await;
        if got == status {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "GET {path} still answers {got}, not {status}, after {} s: {body}; log: {}",
            limit.as_secs(),
            weir.log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The dependency a test makes unreachable.
#[derive(Clone, Copy, PartialEq)]
enum Missing {
    Kafka,
    Redis,
    Hdfs,
    S3,
    MariaDb,
}

impl Missing {
    fn service(self) -> Service {
        match self {
            Missing::Kafka => Service::Kafka,
            Missing::Redis => Service::Redis,
            Missing::Hdfs => Service::Hdfs,
            Missing::S3 => Service::S3,
            Missing::MariaDb => Service::MariaDb,
        }
    }

    /// Its name in `/readyz`, and in the log's waiting line.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Missing::Kafka => ("kafka", "waiting for Kafka at"),
            Missing::Redis => ("redis", "waiting for Redis at"),
            Missing::Hdfs | Missing::S3 => ("archive", "waiting for the archive at"),
            Missing::MariaDb => ("registry", "waiting for the registry database at"),
        }
    }
}

/// `url` with its `host:port` replaced by the gate's.
fn through(url: &str, gate: &Gate) -> String {
    let real = host_port(url).expect("a host:port in the URL");
    url.replacen(&real, &gate.addr(), 1)
}

/// Starts `weir serve` with `missing` behind a closed gate and the other three
/// real; checks what it says while waiting, opens the gate, and checks that
/// the events produced meanwhile are counted exactly once.
async fn waits_for(missing: Missing) {
    const EVENTS: u64 = 300;
    let mut gate = Gate::closed();
    let real = missing.service().addr();
    let pick = |service: Service| {
        let url = service.addr();
        if service == missing.service() {
            through(&url, &gate)
        } else {
            url
        }
    };
    let db = TestDb::create(Database::MariaDb).await;
    let database = if missing == Missing::MariaDb {
        through(&db.url, &gate)
    } else {
        db.url.clone()
    };
    let brokers = Service::Kafka.addr();
    let topic = unique("deps-events");
    crate::pipeline::create_topics(&brokers, &[&topic]).await;
    let u = unique("deps");
    let archive = if missing == Missing::S3 {
        let bucket = std::env::var("WEIR_TEST_S3_BUCKET")
            .expect("WEIR_TEST_S3_BUCKET: load the variables with `eval \"$(tests/stack env)\"`");
        format!(
            "root = \"s3://{bucket}/{u}\"\ns3_endpoint = {:?}\n",
            pick(Service::S3)
        )
    } else {
        format!("root = \"{}/{u}\"\n", pick(Service::Hdfs))
    };
    let config = format!(
        "database = {database:?}\n\
         [pipeline]\nbrokers = {:?}\ngroup_id = {u:?}\ntopics = [{topic:?}]\n\
         dlq_topic = \"{u}-dlq\"\njournal_topic = \"{u}-journal\"\n\
         [pipeline.kafka]\n\"session.timeout.ms\" = \"6000\"\n\
         [counters]\nredis = {:?}\nkey_prefix = {u:?}\n\
         [archive]\n{archive}",
        pick(Service::Kafka),
        pick(Service::Redis),
    );
    let (mut weir, took) = launch(&config);
    let (name, waiting) = missing.names();

    // The API answers at once, and says what is missing.
    wait_for(&mut weir, "/readyz", 503, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(5),
        "the API answered after {took:?}; log: {}",
        weir.log.display()
    );
    let started = Instant::now();
    let down = loop {
        let (status, body) = get(&weir, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        let dependency = body["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned();
        if let Some(d) = dependency.filter(|d| d["state"] == "down") {
            break (d, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} never shown down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        down.0["target"].as_str().unwrap().contains(&gate.addr()),
        "{}",
        down.1
    );
    assert!(
        down.0["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{}",
        down.1
    );
    assert!(
        down.1["reason"].as_str().unwrap().contains(name),
        "the one-line reason names {name}: {}",
        down.1
    );
    let (live, body) = get(&weir, "/livez").await;
    assert_eq!(live, 200, "waiting on purpose is live: {body}");
    assert_eq!(body["pipeline"]["state"], "starting", "{body}");

    // Several retries later, still one line.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        lines_with(&weir, waiting),
        1,
        "one line while {name} is down; log: {}",
        weir.log.display()
    );
    assert!(
        text(&weir).contains(&gate.addr()),
        "the line says where: {}",
        weir.log.display()
    );
    let repeated = lines_with(&weir, "Connection refused") + lines_with(&weir, "Connect to");
    assert!(
        repeated <= 4,
        "librdkafka's repeats are limited ({repeated} lines); log: {}",
        weir.log.display()
    );

    // Events arrive meanwhile, straight to the real broker.
    let events = (0..EVENTS)
        .map(|i| (None, weir::service::demo::event(i, 1_700_000_000_000)))
        .collect();
    crate::pipeline::produce(&brokers, &topic, events).await;

    gate.open(host_port(&real).unwrap()).await;
    let ready = wait_for(&mut weir, "/readyz", 200, Duration::from_secs(120)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(
        ready["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "up"),
        "{ready}"
    );
    assert_eq!(
        lines_with(&weir, "is back after"),
        1,
        "once back, said once; log: {}",
        weir.log.display()
    );

    // Every event produced meanwhile is counted, once.
    let started = Instant::now();
    loop {
        let (status, stats) = get(&weir, "/api/scenarios/5/stats").await;
        if status == 200 && stats["total"].as_u64() == Some(EVENTS) {
            break;
        }
        assert!(
            status == 200 && stats["total"].as_u64().unwrap_or(0) <= EVENTS,
            "{status} {stats}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not all counted: {stats}; log: {}",
            weir.log.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, stats) = get(&weir, "/api/scenarios/5/stats").await;
    assert_eq!(stats["total"].as_u64(), Some(EVENTS), "none twice: {stats}");
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", weir.api))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("weir_dependency_up{{dependency=\"{name}\"}} 1")),
        "{metrics}"
    );
    drop(weir);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_at_start_is_waited_for_and_nothing_is_lost() {
    waits_for(Missing::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_is_waited_for_and_nothing_is_lost() {
    waits_for(Missing::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hdfs_unreachable_at_start_is_waited_for_and_nothing_is_lost() {
    waits_for(Missing::Hdfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_at_start_is_waited_for_and_nothing_is_lost() {
    waits_for(Missing::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_unreachable_at_start_is_waited_for_and_nothing_is_lost() {
    waits_for(Missing::MariaDb).await;
}

/// `weir serve` with `args` exits non-zero within 30 s; its stderr.
fn refused(args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(unique("weir-deps-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(crate::archive::weir_binary())
        .arg("serve")
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("WEIR_COLLECT__LISTEN", "127.0.0.1:0")
        .env_remove("WEIR_KAFKA")
        .env_remove("WEIR_REDIS")
        .env_remove("WEIR_DATABASE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir serve");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("weir serve {args:?} still runs after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text).unwrap();
    assert!(!status.success(), "{args:?} exited 0: {text}");
    let _ = std::fs::remove_dir_all(&dir);
    text
}

#[test]
fn a_bad_url_for_each_dependency_exits_non_zero_naming_it() {
    let text = refused(&["--kafka", "http://127.0.0.1:9092"]);
    assert!(text.contains("pipeline.brokers"), "{text}");
    let text = refused(&["--redis", "http://127.0.0.1:6379"]);
    assert!(text.contains("counters.redis"), "{text}");
    let text = refused(&["--archive", "ftp://bucket/weir"]);
    assert!(
        text.contains("archive.root") && text.contains("ftp"),
        "{text}"
    );
    let text = refused(&["--database", "oracle://db/weir"]);
    assert!(text.contains("database"), "{text}");
}

#[test]
fn refused_credentials_exit_at_once_rather_than_retrying() {
    let real = Service::MariaDb.addr();
    let hostport = host_port(&real).unwrap();
    let wrong = format!("mysql://weir_nobody:wrong-password@{hostport}/weir");
    let text = refused(&["--database", &wrong]);
    assert!(
        text.contains("Access denied") && text.contains("registry"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password"),
        "no password in the log: {text}"
    );
}

/// Two replicas of one group on a topic of one partition: the one given
/// nothing is ready too (it joined; there is nothing for it to consume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_no_partition_is_ready() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let brokers = Service::Kafka.addr();
    let u = unique("idle");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    for result in admin
        .create_topics(
            &[NewTopic::new(&u, 1, TopicReplication::Fixed(-1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topic")
    {
        result.expect("topic created");
    }
    let config = format!(
        "[pipeline]\nbrokers = {brokers:?}\ngroup_id = {u:?}\ntopics = [{u:?}]\n\
         dlq_topic = \"{u}-dlq\"\njournal_topic = \"{u}-journal\"\n"
    );
    let mut replicas = [
        Serve::launch("weir-idle", &config, &[]),
        Serve::launch("weir-idle", &config, &[]),
    ];
    for replica in &mut replicas {
        let ready = wait_for(replica, "/readyz", 200, Duration::from_secs(90)).await;
        assert_eq!(ready["pipeline"]["assigned"], true, "{ready}");
    }
}
