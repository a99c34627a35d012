//! The whole job as its users run it: `weir serve` (the release binary, a
//! process of its own) against the real broker, Redis and a local Parquet
//! archive, draining a produced backlog of tracking events for scenario 5 (the
//! `scenario` plugin, outputs, counters, archive with files rolling by
//! default); and, on the same backlog and broker, the limit of the machine: a
//! bare rdkafka consume → produce passthrough (no transaction, no plugin, no
//! sinks) in this process.
//!
//! Run it with `benches/serve`, which builds what it needs and starts the
//! servers. Settings: `WEIR_BIN` (the weir binary; default
//! `target/release/weir`), `WEIR_BENCH_EVENTS` (the backlog, default
//! 1,000,000), `WEIR_BENCH_RATE` and `WEIR_BENCH_LATENCY_SECS` (the latency
//! phase, default 50,000 events/s for 10 s), `WEIR_BENCH_PERF=1` (record a
//! `perf` profile of weir while it drains, and print its top symbols),
//! `WEIR_BENCH_ARCHIVE` (more `[archive]` settings, as TOML lines),
//! `WEIR_BENCH_PIPELINE` (more `[pipeline]` settings, the same way).
//!
//! CPU time comes from `/proc/<pid>/stat` (user + system) of each process,
//! before and after each phase, so that figures compare across noisy runs.
//! Each phase prints one `key=value` line:
//!
//! - `backlog events=N bytes_per_event=B`
//! - `passthrough events=N seconds=S events_per_s=R cpu_us_per_event=C broker_cpu_us_per_event=K`
//! - `weir-serve events=N seconds=S events_per_s=R share_of_passthrough=X cpu_us_per_event=C broker_cpu_us_per_event=K redis_cpu_us_per_event=D`
//! - `weir-serve-machine idle_share=I steal_share=S`: the share of the
//!   machine's CPU time (all cores) that was idle, and that the hypervisor took,
//!   while weir drained, from `/proc/stat`: near 0 idle, the job is bound by CPU;
//!   well above, it waits (on the broker's answers, or one thread on another)
//! - `weir-serve-stages ...`: seconds the cycles spent per stage, from weir's
//!   `/metrics`
//! - `weir-serve-threads pipeline_cpu_us_per_event=.. sinks_.. kafka_client_..
//!   tokio_.. other_..`: weir's CPU per event by thread (the pipeline's, the
//!   sinks', librdkafka's, the async runtime's, the rest), from
//!   `/proc/<pid>/task/*/stat`: a change's cost shows here even when the
//!   machine's noise hides it in the throughput
//! - `weir-serve-runqueue pipeline_s=.. sinks_s=.. kafka_client_s=.. tokio_s=..`:
//!   seconds each thread group was ready to run but waited for a core while
//!   weir drained (`/proc/<pid>/task/*/schedstat`): a thread whose wall time is
//!   neither its CPU nor this waited on something else (the broker, a lock, a
//!   sleep)
//! - `weir-serve-latency rate=R events=N p50_ms=.. p99_ms=.. max_ms=..`: from
//!   the producer's send time (in the event) to a `read_committed` reader of
//!   the output topic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use serde_json::json;
use weir_benches::kafka::{
    create_topics, latencies, now_ms, percentile, producer, scenario_5, send,
};

/// Tracking event `i` of about 270 bytes: the pipeline bench's, with a user agent.
fn event(i: u64, sent_ms: i64) -> Vec<u8> {
    weir_benches::kafka::event("5", i, sent_ms, true)
}

const PARTITIONS: i32 = 3;
const TOKEN: &str = "bench-admin-token";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fail(message: &str) -> ! {
    eprintln!("weir-bench-serve: {message}");
    std::process::exit(2);
}

/// User + system CPU time of process `pid` so far, microseconds.
fn cpu_us(pid: u32, ticks_per_s: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| fail(&format!("reading /proc/{pid}/stat: {e}")));
    stat_cpu_us(&stat, ticks_per_s)
}

/// User + system CPU time in a `/proc/.../stat` line, microseconds.
fn stat_cpu_us(stat: &str, ticks_per_s: u64) -> u64 {
    // The command name is in parentheses and may hold spaces: fields count
    // from the last `)`. utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    ticks * 1_000_000 / ticks_per_s
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100)
}

/// The machine's CPU time so far, from `/proc/stat`'s first line, in ticks:
/// (all, idle and waiting for I/O, stolen by the hypervisor).
fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat")
        .unwrap_or_else(|e| fail(&format!("reading /proc/stat: {e}")));
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    let all = (0..8).map(at).sum();
    (all, at(3) + at(4), at(7))
}

/// The pid `tests/stack` recorded for `service`.
fn stack_pid(service: &str) -> u32 {
    let dir = std::env::var("WEIR_STACK_DIR").unwrap_or_else(|_| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("0")
            .to_owned();
        format!("/tmp/weir-stack-{uid}")
    });
    let file = Path::new(&dir).join(service).join("pid");
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| {
            fail(&format!(
                "no pid of {service} in {}: start the servers with `tests/stack up kafka redis`",
                file.display()
            ))
        })
}

/// The thread groups of `weir serve` whose CPU is printed apart.
const THREADS: [&str; 4] = ["pipeline", "sinks", "kafka_client", "tokio"];

/// What each thread group of process `pid` ([`THREADS`], by the threads'
/// names) has had so far, microseconds: user + system CPU time, and time spent
/// runnable but waiting for a core (`/proc/.../schedstat`'s second field).
/// Threads that ended are not counted: the process's total has them.
fn thread_times_us(pid: u32, ticks_per_s: u64) -> [(u64, u64); THREADS.len()] {
    let mut groups = [(0, 0); THREADS.len()];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return groups;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let name = stat
            .find('(')
            .zip(stat.rfind(')'))
            .map_or("", |(from, to)| &stat[from + 1..to]);
        let group = match name {
            "weir-pipeline" => 0,
            "weir-sinks" => 1,
            _ if name.starts_with("rdk:") => 2,
            _ if name.starts_with("tokio-") => 3,
            _ => continue,
        };
        let waited_ns: u64 = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().nth(1).and_then(|f| f.parse().ok()))
            .unwrap_or(0);
        groups[group].0 += stat_cpu_us(&stat, ticks_per_s);
        groups[group].1 += waited_ns / 1_000;
    }
    groups
}

/// CPU of several processes, sampled together.
struct Cpu {
    ticks: u64,
    pids: Vec<u32>,
    at: Vec<u64>,
}

impl Cpu {
    fn start(ticks: u64, pids: Vec<u32>) -> Self {
        let at = pids.iter().map(|p| cpu_us(*p, ticks)).collect();
        Self { ticks, pids, at }
    }

    /// Microseconds of CPU per event of each process since the start.
    fn per_event(&self, events: u64) -> Vec<f64> {
        self.pids
            .iter()
            .zip(&self.at)
            .map(|(p, before)| (cpu_us(*p, self.ticks) - before) as f64 / events as f64)
            .collect()
    }
}

/// The bare limit: consume every record of `input` and produce its key and
/// value to `output`, no transaction, until `events` were delivered.
fn passthrough(brokers: &str, group: &str, input: &str, output: &str, events: u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // As weir's consumer: librdkafka's default (1 s) idles the fetcher
        // whenever its local queue is full, which a fast reader hits.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("passthrough consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let producer = producer(brokers);
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < events {
        assert!(
            Instant::now() < deadline,
            "passthrough: {seen} of {events} in 600 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("passthrough read");
            send(
                &producer,
                output,
                message.key(),
                message.payload().unwrap_or_default(),
            );
            seen += 1;
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// The value of `series` (its name and labels, as written) in a Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Serve {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Serve {
    async fn start(bin: &Path, config: &Path, log: &Path, base: String) -> Self {
        let log_file = std::fs::File::create(log).expect("log file");
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("starting {}: {e}", bin.display())));
        let serve = Self {
            child,
            base,
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            let live = serve.http.get(format!("{}/livez", serve.base)).send().await;
            if live.is_ok_and(|r| r.status().is_success()) {
                return serve;
            }
            if started.elapsed() > Duration::from_secs(60) {
                fail(&format!(
                    "weir serve did not answer in 60 s; see {}",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The text of `/metrics` (empty when it does not answer).
    async fn metrics(&self) -> String {
        let metrics = self.http.get(format!("{}/metrics", self.base));
        let Ok(answer) = metrics.bearer_auth(TOKEN).send().await else {
            return String::new();
        };
        answer.text().await.unwrap_or_default()
    }

    /// `weir_events_total` from `/metrics`.
    async fn events(&self) -> u64 {
        metric(&self.metrics().await, "weir_events_total").map_or(0, |v| v as u64)
    }

    /// The seconds the pipeline thread spent per stage of its cycles
    /// (`weir_cycle_stage_seconds_sum`), and the cycles, as `key=value` pairs.
    async fn stages(&self) -> String {
        let text = self.metrics().await;
        let mut said = Vec::new();
        for stage in [
            "gather",
            "route",
            "plugin",
            "produce",
            "commit",
            "sinks",
            "sinks_wait",
        ] {
            let series = format!("weir_cycle_stage_seconds_sum{{stage=\"{stage}\"}}");
            if let Some(v) = metric(&text, &series) {
                said.push(format!("{stage}_s={v:.2}"));
            }
        }
        let cycles = metric(&text, "weir_cycles_total").unwrap_or(0.0);
        said.push(format!("cycles={cycles}"));
        said.join(" ")
    }

    /// Scenario 5's events in the counters.
    async fn counted(&self) -> u64 {
        let stats = self
            .http
            .get(format!("{}/api/scenarios/5/stats", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await;
        let Ok(stats) = stats else { return 0 };
        let text = stats.text().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        body["total"].as_u64().unwrap_or(0)
    }

    /// Waits until the shipped `scenario` plugin is in the registry (weir
    /// compiles its shipped plugins after it starts answering).
    async fn until_plugin(&self, name: &str) {
        let started = Instant::now();
        loop {
            let answer = self
                .http
                .get(format!("{}/api/plugins/{name}", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return;
            }
            if started.elapsed() > Duration::from_secs(120) {
                fail(&format!("no `{name}` plugin after 120 s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn put_scenario(&self, scenario: serde_json::Value) {
        let answer = self
            .http
            .put(format!("{}/api/scenarios/5", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(scenario.to_string())
            .send()
            .await
            .expect("PUT scenario");
        let status = answer.status();
        if !status.is_success() {
            fail(&format!(
                "the scenario was refused ({status}): {}",
                answer.text().await.unwrap_or_default()
            ));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `perf record` of `pid` until stopped, to `out`.
fn perf_record(pid: u32, out: &Path) -> Child {
    Command::new("perf")
        .args(["record", "-F", "199", "--call-graph", "dwarf,16384", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("perf: {e} (apt install linux-perf)")))
}

fn perf_report(mut perf: Child, data: &Path) {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
    let report = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--stdio",
            "--sort",
            "dso,symbol",
            "-i",
        ])
        .arg(data)
        .output();
    if let Ok(report) = report {
        let text = String::from_utf8_lossy(&report.stdout);
        println!(
            "perf-profile (self time, top symbols; `perf report -i {}` for more):",
            data.display()
        );
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .take(40)
        {
            println!("  {}", line.trim());
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let var = |name: &str, how: &str| {
        std::env::var(name).unwrap_or_else(|_| fail(&format!("{name} is not set: {how}")))
    };
    let start_servers = "start the servers with `tests/stack up kafka redis` and `eval \"$(tests/stack env)\"`, or run `benches/serve`";
    let brokers = var("WEIR_TEST_KAFKA", start_servers);
    let redis = var("WEIR_TEST_REDIS", start_servers);
    let bin = std::env::var("WEIR_BIN").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/weir"),
        PathBuf::from,
    );
    if !bin.exists() {
        fail(&format!(
            "no weir binary at {}: build it with `cargo build --release -p weir` or run `benches/serve`",
            bin.display()
        ));
    }
    let events: u64 = env_or("WEIR_BENCH_EVENTS", 1_000_000);
    let rate: u64 = env_or("WEIR_BENCH_RATE", 50_000);
    let latency_secs: u64 = env_or("WEIR_BENCH_LATENCY_SECS", 10);
    let profile = std::env::var("WEIR_BENCH_PERF").is_ok_and(|v| v == "1");
    // More `[archive]` settings, as TOML lines (`zstd_level = 1`), to compare.
    let archive_more = std::env::var("WEIR_BENCH_ARCHIVE").unwrap_or_default();
    // More `[pipeline]` settings, the same way (`batch_max_events = 65536`).
    let pipeline_more = std::env::var("WEIR_BENCH_PIPELINE").unwrap_or_default();
    let ticks = clock_ticks();
    let (broker_pid, redis_pid) = (stack_pid("kafka"), stack_pid("redis"));

    let tag = format!("serve-bench-{}-{}", std::process::id(), now_ms());
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let (input, idle, pass_out, out, dlq) = (
        format!("{tag}-in"),
        format!("{tag}-idle"),
        format!("{tag}-pass"),
        format!("{tag}-out"),
        format!("{tag}-dlq"),
    );
    create_topics(
        &brokers,
        &[&input, &idle, &pass_out, &out, &dlq],
        PARTITIONS,
    )
    .await;

    // The backlog, produced once and drained by both.
    let producer = producer(&brokers);
    let sent = now_ms();
    let mut bytes = 0usize;
    for i in 0..events {
        let value = event(i, sent);
        bytes += value.len();
        send(
            &producer,
            &input,
            Some(format!("m{}", i % 1000).as_bytes()),
            &value,
        );
    }
    producer
        .flush(Duration::from_secs(300))
        .expect("flush the backlog");
    drop(producer);
    println!(
        "backlog events={events} bytes_per_event={}",
        bytes as u64 / events
    );

    // The limit: the bare passthrough.
    let cpu = Cpu::start(ticks, vec![std::process::id(), broker_pid]);
    let started = Instant::now();
    {
        let (brokers, input, pass_out, group) = (
            brokers.clone(),
            input.clone(),
            pass_out.clone(),
            format!("{tag}-pass"),
        );
        tokio::task::spawn_blocking(move || {
            passthrough(&brokers, &group, &input, &pass_out, events)
        })
        .await
        .expect("passthrough");
    }
    let pass_seconds = started.elapsed().as_secs_f64();
    let pass_rate = events as f64 / pass_seconds;
    let used = cpu.per_event(events);
    println!(
        "passthrough events={events} seconds={pass_seconds:.2} events_per_s={pass_rate:.0} \
         cpu_us_per_event={:.2} broker_cpu_us_per_event={:.2}",
        used[0], used[1]
    );

    // weir serve: scenario 5 bound to the backlog's topic once it runs.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let group = format!("{tag}-weir");
    let config = dir.join("weir.toml");
    let mut file = std::fs::File::create(&config).expect("config");
    write!(
        file,
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\n\
         [api]\nadmin_token = \"{TOKEN}\"\n\
         [pipeline]\nbrokers = {brokers:?}\ngroup_id = {group:?}\ntopics = [{idle:?}]\n\
         dlq_topic = {dlq:?}\njournal_topic = \"{tag}-journal\"\n{pipeline_more}\n\
         [counters]\nredis = {redis:?}\nkey_prefix = {tag:?}\n\
         [archive]\nroot = {archive:?}\n{archive_more}\n\
         [collect]\nenabled = false\n",
        data = dir.join("data").display().to_string(),
        archive = dir.join("archive").display().to_string(),
    )
    .expect("write config");
    drop(file);
    let log = dir.join("weir.log");
    let serve = Serve::start(&bin, &config, &log, base).await;
    serve.until_plugin("scenario").await;
    let weir_pid = serve.child.id();
    let perf_data = dir.join("perf.data");
    let cpu = Cpu::start(ticks, vec![weir_pid, broker_pid, redis_pid]);
    let threads_before = thread_times_us(weir_pid, ticks);
    let machine_before = machine_ticks();
    let started = Instant::now();
    serve
        .put_scenario({
            let mut scenario = scenario_5(&out);
            scenario["source"] = json!([input]);
            scenario
        })
        .await;
    let perf = profile.then(|| perf_record(weir_pid, &perf_data));
    let mut said = Instant::now();
    while serve.events().await < events {
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "weir-bench-serve: weir handled {} of {events} events",
                serve.events().await
            );
            said = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(900) {
            fail(&format!(
                "weir handled {} of {events} in 900 s; see {}",
                serve.events().await,
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Done when the counters hold every event too. (The consumer offsets
    // trail the archive's open files by design; the journal covers them.)
    loop {
        let counted = serve.counted().await;
        if counted >= events {
            break;
        }
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!("weir-bench-serve: weir counted {counted} of {events} events");
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let used = cpu.per_event(events);
    let threads_after = thread_times_us(weir_pid, ticks);
    let machine_after = machine_ticks();
    if let Some(perf) = perf {
        perf_report(perf, &perf_data);
    }
    let weir_rate = events as f64 / seconds;
    println!(
        "weir-serve events={events} seconds={seconds:.2} events_per_s={weir_rate:.0} \
         share_of_passthrough={:.2} cpu_us_per_event={:.2} broker_cpu_us_per_event={:.2} \
         redis_cpu_us_per_event={:.2}",
        weir_rate / pass_rate,
        used[0],
        used[1],
        used[2]
    );

    let all = (machine_after.0 - machine_before.0).max(1) as f64;
    println!(
        "weir-serve-machine idle_share={:.2} steal_share={:.2}",
        (machine_after.1 - machine_before.1) as f64 / all,
        (machine_after.2 - machine_before.2) as f64 / all
    );
    println!("weir-serve-stages {}", serve.stages().await);
    // Each thread group's share of weir's CPU per event, and what is left
    // (threads that ended meanwhile, and any other).
    let mut named = 0.0;
    let mut line = String::from("weir-serve-threads");
    let mut waits = String::from("weir-serve-runqueue");
    for (i, group) in THREADS.iter().enumerate() {
        let per_event = (threads_after[i].0 - threads_before[i].0) as f64 / events as f64;
        named += per_event;
        line.push_str(&format!(" {group}_cpu_us_per_event={per_event:.2}"));
        let waited = (threads_after[i].1 - threads_before[i].1) as f64 / 1e6;
        waits.push_str(&format!(" {group}_s={waited:.2}"));
    }
    println!(
        "{line} other_cpu_us_per_event={:.2}",
        (used[0] - named).max(0.0)
    );
    println!("{waits}");

    // Latency at a steady rate, read back read_committed.
    let latencies = {
        let (brokers, group) = (brokers.clone(), format!("{tag}-reader"));
        tokio::task::spawn_blocking(move || {
            latencies(
                &brokers,
                (&input, &out, &group),
                (rate, latency_secs),
                |i, now| (Some(format!("m{}", i % 1000).into_bytes()), event(i, now)),
            )
        })
        .await
        .expect("latency run")
    };
    println!(
        "weir-serve-latency rate={rate} events={} p50_ms={} p99_ms={} max_ms={}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    serve.stop();
    let _ = std::fs::remove_dir_all(dir.join("archive"));
}
