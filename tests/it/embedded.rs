//! The embedded defaults of a first run: the in-process broker, SQLite, in-memory
//! counters, a local archive and the demo scenario, composed by
//! `weir::service::start` exactly as `weir serve` composes them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use weir::archive::ArchiveConfig;
use weir::pipeline::PipelineConfig;
use weir::registry::{MakeCurrent, PutMode, Registry};
use weir::runtime::{Runtime, RuntimeConfig};
use weir::service::{CountersSection, PipelinePlan, demo};
use weir_integration::unique;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_the_embedded_broker_and_counts_exactly() {
    let dir = std::env::temp_dir().join(unique("weir-embedded"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let registry = Registry::connect(
        &format!("sqlite://{}", dir.join("registry.db").display()),
        runtime,
    )
    .await
    .expect("registry");
    let bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("artifact");
    registry
        .upload_plugin(bytes, Some("scenario"), "test", MakeCurrent::IfNew)
        .await
        .expect("upload");
    registry
        .import_members(&demo::members())
        .await
        .expect("members");
    registry
        .put_scenario(demo::scenario(), None, PutMode::Create, "test")
        .await
        .expect("scenario 5");

    // No brokers, no Redis: the embedded broker and in-memory counters.
    let stop = CancellationToken::new();
    let plan = PipelinePlan {
        pipeline: PipelineConfig::default(),
        counters: CountersSection::default(),
        archive: ArchiveConfig {
            root: dir.join("archive").display().to_string(),
            ..ArchiveConfig::default()
        },
        collect: weir::collect::CollectConfig {
            listen: "127.0.0.1:0".into(),
            ..weir::collect::CollectConfig::default()
        },
        data_dir: dir.clone(),
        demo: false,
        demo_events: None,
        alerts: Default::default(),
    };
    let service = weir::service::start(plan, registry, Default::default(), stop.clone())
        .await
        .expect("service");
    let brokers = service.brokers.clone();

    // An independent count of what scenario 5 should match.
    let members: std::collections::HashMap<String, (u64, String)> = demo::members()
        .into_iter()
        .map(|m| {
            let age = m.attributes["age"].as_u64().unwrap();
            (
                m.member_id,
                (age, m.attributes["gender"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let events = 5_000u64;
    let mut matched = 0u64;
    let mut values = Vec::new();
    for i in 0..events {
        let value = demo::event(i, 1_795_000_000_000);
        let parsed: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let (age, gender) = &members[parsed["memberId"].as_str().unwrap()];
        matched += u64::from(*age > 20 && gender == "MALE" && parsed["h"].as_u64().unwrap() >= 9);
        values.push(value);
    }
    let sends = values.iter().map(|value| {
        producer.send(
            FutureRecord::<(), _>::to("weir.events").payload(value),
            Duration::from_secs(10),
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(e, _)| e).expect("produce");
    }

    let metrics = service.metrics.clone();
    let counters = service.counters.clone();
    let started = Instant::now();
    while metrics.events.load(Ordering::Relaxed) < events {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "handled {:?}",
            metrics.events
        );
        assert!(!service.ended(), "the pipeline stopped early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    service
        .finish(Duration::from_secs(30))
        .await
        .expect("drained");

    let totals = counters.totals(demo::SCENARIO_ID).await.expect("totals");
    assert_eq!(
        (totals.total, totals.matched, totals.errors),
        (events, matched, 0)
    );
    assert!(
        matched > 0 && matched < events,
        "the demo data matches some events, not all: {matched}"
    );
    assert_eq!(
        metrics.outputs.load(Ordering::Relaxed),
        events,
        "one output per event"
    );
}
