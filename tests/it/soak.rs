//! The exactly-once soak: a million events through `weir serve`, killed with
//! SIGKILL at random moments and started again, then every sink checked
//! against an independent count, event by event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use weir::registry::{MakeCurrent, PutMode, Registry};
use weir::runtime::{Runtime, RuntimeConfig};
use weir_integration::{Service, unique};

use crate::archive::{committed_if_any, copy_from_hdfs, serve, still_serving};

const EVENTS: u64 = 1_000_000;
const KILLS: usize = 10;

/// What the test made each event to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meant {
    /// For scenario `a` or `b` (index 0 or 1), matching its filter or not.
    Scenario(usize, bool),
    /// For the topic-bound `c`, which passes it through.
    Pass,
    /// For `c`, which traps on it: a dead letter.
    Trap,
}

/// Event `n`: a third for each scenario; `c`'s carry no `scenario_id` (it is
/// bound to the topic), and one in 997 of them makes its plugin trap.
fn event(n: u64, ids: &[String; 2]) -> (Vec<u8>, Meant) {
    match n % 3 {
        which @ (0 | 1) => {
            let age = 15 + n % 30;
            let value = json!({"scenario_id": ids[which as usize], "age": age, "seq": n});
            (
                serde_json::to_vec(&value).unwrap(),
                Meant::Scenario(which as usize, age > 20),
            )
        }
        _ if n % 997 == 2 => (br#"{"trap":true}"#.to_vec(), Meant::Trap),
        _ => (serde_json::to_vec(&json!({"seq": n})).unwrap(), Meant::Pass),
    }
}

/// A small deterministic generator for the kill moments (its seed is printed).
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, from: u64, to: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        from + (self.0 >> 33) % (to - from)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_through_ten_sigkills_are_each_accounted_for_once() {
    let brokers = Service::Kafka.addr();
    let hdfs = Service::Hdfs.addr();
    let u = unique("soak");
    let events_topic = format!("{u}-events");
    let dlq = format!("{u}-dlq");
    let outs = [
        format!("{u}-out-a"),
        format!("{u}-out-b"),
        format!("{u}-out-c"),
    ];
    crate::pipeline::create_topics(
        &brokers,
        &[&events_topic, &dlq, &outs[0], &outs[1], &outs[2]],
    )
    .await;

    let data = std::env::temp_dir().join(unique("weir-soak"));
    std::fs::create_dir_all(&data).expect("data dir");
    let registry_url = format!("sqlite://{}", data.join("registry.db").display());
    let registry = Registry::connect(
        &registry_url,
        Runtime::new(RuntimeConfig::default()).expect("runtime"),
    )
    .await
    .expect("registry");
    for (name, path) in [
        ("scenario", weir_artifacts::PLUGIN_SCENARIO),
        ("trap-at", weir_artifacts::FIXTURE_TRAP_AT),
    ] {
        let bytes = std::fs::read(path).expect("artifact");
        registry
            .upload_plugin(bytes, Some(name), "test", MakeCurrent::IfNew)
            .await
            .expect("upload");
    }
    let ids = [format!("{u}-a"), format!("{u}-b")];
    for (id, out) in ids.iter().zip(&outs) {
        let doc = json!({"scenario_id": id, "output_topic": out, "log_format": {"age": 1, "seq": 1},
                         "filters": [{"left": "age", "operator": ">", "right": 20}]});
        registry
            .put_scenario(doc, None, PutMode::Create, "test")
            .await
            .expect("scenario");
    }
    let c = format!("{u}-c");
    registry
        .put_scenario(
            json!({"scenario_id": c, "plugin": "trap-at", "output_topic": outs[2],
                   "source": [events_topic]}),
            None,
            PutMode::Create,
            "test",
        )
        .await
        .expect("scenario c");
    drop(registry);

    // The events, and where each one landed.
    let produced = Instant::now();
    let mut meant: HashMap<(i32, i64), Meant> = HashMap::with_capacity(EVENTS as usize);
    {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "500000")
            .create()
            .expect("producer");
        let mut tags: Vec<Meant> = Vec::with_capacity(EVENTS as usize);
        for n in 0..EVENTS {
            let (value, what) = event(n, &ids);
            tags.push(what);
            let mut record = BaseRecord::<(), _>::to(&events_topic).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(120))
            .expect("all events produced");
        // Read back where each went: the producer's reports do not say which is which,
        // so a plain consumer maps (partition, offset) to the event's `seq`.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("soak-map"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&events_topic]).expect("subscribe");
        let started = Instant::now();
        let mut traps: Vec<(i32, i64)> = Vec::new();
        while meant.len() + traps.len() < EVENTS as usize {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "events not read back"
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("consume");
            let at = (message.partition(), message.offset());
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("json");
            match value["seq"].as_u64() {
                Some(n) => {
                    meant.insert(at, tags[n as usize]);
                }
                None => traps.push(at),
            }
        }
        for at in traps {
            meant.insert(at, Meant::Trap);
        }
    }
    let ends: Vec<i64> = (0..3)
        .map(|p| meant.keys().filter(|(q, _)| *q == p).count() as i64)
        .collect();
    println!(
        "{EVENTS} events on 3 partitions {ends:?} in {:?}",
        produced.elapsed()
    );

    let root = format!("/weir-archive/{u}");
    let config = data.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\ndatabase = {registry_url:?}\nlisten = \"127.0.0.1:0\"\n\
             [pipeline]\nbrokers = {brokers:?}\ngroup_id = {u:?}\ntopics = [{events_topic:?}]\n\
             dlq_topic = {dlq:?}\ninstance = \"soak\"\n\
             [pipeline.kafka]\n\"session.timeout.ms\" = \"6000\"\n\
             [counters]\nredis = {redis:?}\nkey_prefix = {prefix:?}\n\
             [archive]\nroot = \"{hdfs}{root}\"\nmax_file_age_secs = 4\nidle_secs = 2\n",
            data = data.display().to_string(),
            redis = Service::Redis.addr(),
            prefix = format!("weirsoak-{u}"),
        ),
    )
    .unwrap();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill moments from seed {seed}");
    let mut moments = Moments(seed);
    let log = |i: usize| data.join(format!("serve-{i}.log"));
    for kill in 0..KILLS {
        let mut child = serve(&config, &log(kill));
        let wait = Duration::from_millis(moments.next_ms(1_500, 6_000));
        let started = Instant::now();
        while started.elapsed() < wait {
            still_serving(&mut child, started, &log(kill), "the kill moment");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        println!(
            "kill {} after {wait:?}: committed {:?}",
            kill + 1,
            committed_if_any(&brokers, &u, &events_topic, 3)
        );
    }
    // The last start runs until everything is committed, then stops on SIGTERM.
    let mut child = serve(&config, &log(KILLS));
    let want: Vec<Option<(i64, i64)>> = ends.iter().map(|&end| Some((end, end))).collect();
    let started = Instant::now();
    while committed_if_any(&brokers, &u, &events_topic, 3) != want {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not everything committed in 600 s: {:?}",
            committed_if_any(&brokers, &u, &events_topic, 3)
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "weir serve exited; log: {}",
            log(KILLS).display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(child.wait().expect("wait").success(), "clean exit");

    // Kafka: every record of the outputs and the dead letters, by source offset.
    let mut seen: HashMap<(i32, i64), Vec<&'static str>> = HashMap::with_capacity(meant.len());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("soak-read"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topics: Vec<&str> = outs
        .iter()
        .map(String::as_str)
        .chain([dlq.as_str()])
        .collect();
    consumer.subscribe(&topics).expect("subscribe");
    let started = Instant::now();
    let mut records = 0usize;
    let mut last_new = Instant::now();
    // Until every event has its record and nothing more came for 5 s (or, short
    // of that, nothing came for 30 s): duplicates would still arrive then.
    loop {
        let idle = last_new.elapsed();
        if (records >= meant.len() && idle > Duration::from_secs(5))
            || idle > Duration::from_secs(30)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "outputs not read"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("reading outputs");
        records += 1;
        last_new = Instant::now();
        let mut source = None;
        let mut partition = None;
        let mut dead = false;
        for header in message.headers().expect("headers").iter() {
            let value = std::str::from_utf8(header.value.unwrap_or_default()).unwrap();
            match header.key {
                "weir-source-offset" => source = Some(value.to_owned()),
                "weir-source-partition" => partition = Some(value.to_owned()),
                "weir-reason" => dead = true,
                _ => {}
            }
        }
        let source = source.expect("source offset header");
        let at = if dead {
            (partition.unwrap().parse().unwrap(), source.parse().unwrap())
        } else {
            let (p, o) = source.split_once(':').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        };
        seen.entry(at)
            .or_default()
            .push(if dead { "dead" } else { "output" });
    }
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    let mut wrong = 0u64;
    for (at, what) in &meant {
        let got = seen.get(at).map_or(&[][..], Vec::as_slice);
        let want = if *what == Meant::Trap {
            "dead"
        } else {
            "output"
        };
        match got {
            [] => lost += 1,
            [one] if *one == want => {}
            [_] => wrong += 1,
            more => duplicated += (more.len() - 1) as u64,
        }
    }
    let strays = seen.keys().filter(|at| !meant.contains_key(at)).count();
    println!("kafka: lost {lost}, duplicated {duplicated}, wrong kind {wrong}, strays {strays}");

    // Counters, against the independent count.
    let counters = crate::counters::counters_of(&format!("weirsoak-{u}"), &u).await;
    for (index, id) in ids.iter().enumerate() {
        let totals = counters.totals(id).await.expect("totals");
        let total = meant
            .values()
            .filter(|m| matches!(m, Meant::Scenario(i, _) if *i == index))
            .count() as u64;
        let matched = meant
            .values()
            .filter(|m| matches!(m, Meant::Scenario(i, true) if *i == index))
            .count() as u64;
        println!("counters {id}: {totals:?}; expected total {total}, matched {matched}");
        assert_eq!(
            (totals.total, totals.matched, totals.errors),
            (total, matched, 0),
            "{id}"
        );
    }
    let totals = counters.totals(&c).await.expect("totals");
    let traps = meant.values().filter(|m| **m == Meant::Trap).count() as u64;
    let passed = meant.values().filter(|m| **m == Meant::Pass).count() as u64;
    println!(
        "counters {c}: {totals:?}; expected total {}, errors {traps}",
        traps + passed
    );
    assert_eq!(
        (totals.total, totals.errors),
        (traps + passed, traps),
        "{c}"
    );

    // The archive: each output once, nothing else.
    let client = hdfs_native::ClientBuilder::new()
        .with_url(&hdfs)
        .build()
        .expect("HDFS client");
    let (local, paths) = copy_from_hdfs(&client, &root).await;
    assert!(
        paths.iter().all(|p| !p.starts_with(weir::archive::TMP_DIR)),
        "no temporary files left"
    );
    let python = std::env::var("WEIR_TEST_PYTHON").expect(
        "WEIR_TEST_PYTHON is not set: run the tests with `tests/run`, or `eval \"$(tests/stack env)\"`",
    );
    let script = "import sys, pyarrow.dataset as ds\n\
                  t = ds.dataset(sys.argv[1], format='parquet', exclude_invalid_files=False,\n\
                  \x20   partitioning=None).to_table(columns=['partition', 'offset'])\n\
                  p = t.column('partition').to_pylist(); o = t.column('offset').to_pylist()\n\
                  print('\\n'.join(f'{a} {b}' for a, b in zip(p, o)))\n";
    let output = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&local)
        .output()
        .expect("pyarrow");
    assert!(
        output.status.success(),
        "reading the archive: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows: HashMap<(i32, i64), u32> = HashMap::with_capacity(meant.len());
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let (p, o) = line.split_once(' ').unwrap();
        *rows
            .entry((p.parse().unwrap(), o.parse().unwrap()))
            .or_default() += 1;
    }
    let archive_duplicated: u64 = rows.values().map(|&n| u64::from(n - 1)).sum();
    let archive_lost = meant
        .iter()
        .filter(|(at, what)| **what != Meant::Trap && !rows.contains_key(at))
        .count();
    let archive_strays = rows
        .keys()
        .filter(|at| meant.get(at).is_none_or(|m| *m == Meant::Trap))
        .count();
    println!(
        "archive: lost {archive_lost}, duplicated {archive_duplicated}, strays {archive_strays}"
    );
    assert_eq!(
        (lost, duplicated, wrong, strays),
        (0, 0, 0, 0),
        "kafka: lost, duplicated, wrong kind, strays"
    );
    assert_eq!(
        (archive_lost, archive_duplicated, archive_strays),
        (0, 0, 0),
        "archive: lost, duplicated, strays"
    );
    let _ = std::fs::remove_dir_all(&local);
    let _ = std::fs::remove_dir_all(&data);
}
