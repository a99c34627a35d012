//! Shared helpers for weir's integration tests.
//!
//! Every integration test talks to a real server on 127.0.0.1, started by
//! `tests/stack up` (or by `tests/run`, which starts them, runs every test and stops
//! what it started). The addresses reach the tests through environment variables
//! printed by `tests/stack env`. A test that does not find its server fails with a
//! message saying how to start it; none passes by skipping.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A server the integration tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Apache Kafka (KRaft); the variable holds `host:port` of the bootstrap broker.
    Kafka,
    /// HDFS; the variable holds the NameNode URL, `hdfs://host:port`.
    Hdfs,
    /// Redis; the variable holds a `redis://` URL.
    Redis,
    /// MariaDB; the variable holds a `mysql://` URL.
    MariaDb,
    /// PostgreSQL; the variable holds a `postgres://` URL.
    Postgres,
    /// An S3-compatible server (SeaweedFS); the variable holds its endpoint URL,
    /// `http://host:port` (bucket and keys: `WEIR_TEST_S3_BUCKET`,
    /// `WEIR_TEST_S3_ACCESS_KEY`, `WEIR_TEST_S3_SECRET_KEY`).
    S3,
    /// The cluster profile's three Kafka brokers; the variable holds their
    /// `host:port`s, comma-separated.
    KafkaCluster,
    /// The cluster profile's Redis Cluster; the variable holds its nodes'
    /// `redis://` URLs, comma-separated.
    RedisCluster,
}

impl Service {
    /// The environment variable that holds this service's address.
    pub fn var(self) -> &'static str {
        match self {
            Service::Kafka => "WEIR_TEST_KAFKA",
            Service::Hdfs => "WEIR_TEST_HDFS",
            Service::Redis => "WEIR_TEST_REDIS",
            Service::MariaDb => "WEIR_TEST_MARIADB",
            Service::Postgres => "WEIR_TEST_POSTGRES",
            Service::S3 => "WEIR_TEST_S3",
            Service::KafkaCluster => "WEIR_TEST_KAFKA_CLUSTER",
            Service::RedisCluster => "WEIR_TEST_REDIS_CLUSTER",
        }
    }

    /// The name `tests/stack` knows the service by.
    pub fn stack_name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::Hdfs => "namenode datanode",
            Service::Redis => "redis",
            Service::MariaDb => "mariadb",
            Service::Postgres => "postgres",
            Service::S3 => "s3",
            Service::KafkaCluster => "kafka1 kafka2 kafka3",
            Service::RedisCluster => "rcluster1 .. rcluster6",
        }
    }

    /// The service's address, after checking that something accepts connections there.
    ///
    /// # Panics
    /// When the variable is unset or nothing listens at the address, with a message
    /// that says how to start the service.
    pub fn addr(self) -> String {
        let how = match self {
            Service::KafkaCluster | Service::RedisCluster => {
                "start the cluster profile with `tests/stack up cluster` and load the addresses \
                 with `eval \"$(tests/stack env)\"`, or run every test with `tests/run`"
            }
            _ => {
                "start the test servers with `tests/stack up` and load their addresses with \
                 `eval \"$(tests/stack env)\"`, or run every test with `tests/run`"
            }
        };
        let value = std::env::var(self.var())
            .unwrap_or_else(|_| panic!("{} is not set: {how}", self.var()));
        let first = value.split(',').next().unwrap_or_default();
        let hostport = host_port(first)
            .unwrap_or_else(|| panic!("{}={value} has no host:port in it", self.var()));
        let reachable = hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
        assert!(
            reachable,
            "{:?} is not answering at {hostport} ({}): {how}; `tests/stack status` shows which \
             servers are up (service names: {})",
            self,
            self.var(),
            self.stack_name()
        );
        value
    }
}

/// `host:port` out of `scheme://user:pass@host:port/path` or a bare `host:port`.
pub fn host_port(value: &str) -> Option<String> {
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let hostport = rest.split(['/', '?']).next()?;
    hostport.contains(':').then(|| hostport.to_string())
}

/// A name no other test run uses, for topics, keys, tables and paths. The
/// clock alone is not enough: tests start in parallel, and two of them read
/// the same time where the clock is coarse, so a counter tells them apart.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Servers of a test's own: a second `tests/stack` in a scratch directory on
/// shifted ports, so that stopping or restarting them stalls no other test.
/// Dropped, it resumes what it stopped, stops its servers and removes the
/// directory.
#[derive(Debug)]
pub struct PrivateStack {
    dir: std::path::PathBuf,
    /// The port offset (`WEIR_STACK_PORT_OFFSET`): its servers listen on the
    /// shared stack's ports plus this.
    pub offset: u16,
    services: Vec<String>,
}

impl PrivateStack {
    /// Starts `services` (names of `tests/stack`) at an offset no other private
    /// stack of this process has, whose `probe` port (a shared-stack port, e.g.
    /// 19000 for the NameNode) is free once shifted.
    pub fn start(services: &[&str], probe: u16) -> Self {
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(700);
        let offset = loop {
            let offset = NEXT.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
            assert!(offset < 2_000, "no free port offset for a private stack");
            if std::net::TcpListener::bind(("127.0.0.1", probe + offset)).is_ok() {
                break offset;
            }
        };
        let stack = Self {
            dir: std::env::temp_dir().join(unique("weir-private-stack")),
            offset,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut up = vec!["up"];
        up.extend(services);
        let started = stack.run(&up);
        assert!(
            started.status.success(),
            "a private {services:?} did not start (`tests/stack install` fetches the jars): {}",
            String::from_utf8_lossy(&started.stderr)
        );
        stack
    }

    /// Runs `tests/stack` with `args` on this stack.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/stack"))
            .args(args)
            .env("WEIR_STACK_DIR", &self.dir)
            .env("WEIR_STACK_PORT_OFFSET", self.offset.to_string())
            .output()
            .expect("running tests/stack")
    }

    /// Runs `tests/stack` with `args` and fails the test if it fails.
    pub fn must(&self, args: &[&str]) {
        let done = self.run(args);
        assert!(
            done.status.success(),
            "tests/stack {args:?} failed (logs under {}): {}",
            self.dir.display(),
            String::from_utf8_lossy(&done.stderr)
        );
    }

    /// Sends `signal` (e.g. `-STOP`) to `service`'s process.
    pub fn signal(&self, service: &str, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join(service).join("pid"))
            .unwrap_or_else(|_| panic!("{service} has no pid file"));
        let done = std::process::Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .expect("kill");
        assert!(done.success(), "kill {signal} {service}");
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        // A test that failed while a server was stopped: let it stop for good.
        for service in &self.services {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(service).join("pid")) {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", pid.trim()])
                    .status();
            }
        }
        let mut down = vec!["down"];
        down.extend(self.services.iter().map(String::as_str));
        let _ = self.run(&down);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_is_found_in_every_url_shape() {
        assert_eq!(
            host_port("127.0.0.1:19092").as_deref(),
            Some("127.0.0.1:19092")
        );
        assert_eq!(
            host_port("redis://127.0.0.1:16379/").as_deref(),
            Some("127.0.0.1:16379")
        );
        assert_eq!(
            host_port("mysql://weir:weir@127.0.0.1:13306/weir").as_deref(),
            Some("127.0.0.1:13306")
        );
        assert_eq!(
            host_port("hdfs://127.0.0.1:19000").as_deref(),
            Some("127.0.0.1:19000")
        );
        assert_eq!(host_port("localhost"), None);
    }
}
