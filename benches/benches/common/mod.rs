//! What the archive and report benches share: realistic partition batches.

use std::sync::Arc;

use weir::pipeline::catalog::Route;
use weir::pipeline::sink::{EventMeta, PartitionBatch, ScenarioBatch};
use weir::runtime::{Batch, EventInput, Runtime, RuntimeConfig};
use weir_benches::{SCENARIO_5, tracking_events};

/// Events per cycle, over all partitions.
pub const BATCH: usize = 4096;

/// Cycles of `BATCH` tracking events run through the `scenario` plugin (scenario 5),
/// each cycle spread over `partitions` partitions, and the bytes of the output
/// records. In each partition the events are `spacing_ms` apart, up to now.
pub fn cycles(
    events: usize,
    partitions: usize,
    spacing_ms: i64,
) -> (Vec<Vec<PartitionBatch>>, usize) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let bytes = std::fs::read(weir_artifacts::PLUGIN_SCENARIO).expect("plugin artifact");
    let plugin = runtime.load(&bytes).expect("load");
    let mut instance = plugin.instantiate(SCENARIO_5).expect("configure");
    let route = Arc::new(Route {
        id: "5".into(),
        plugin_version: plugin.info().version.clone(),
        plugin: plugin.clone(),
        plugin_label: "scenario@1".into(),
        config: SCENARIO_5.into(),
        sources: Vec::new(),
        output_topic: "unused".into(),
        enrich_by: None,
        shadow: None,
        canary: None,
    });
    let values = tracking_events(events, 42);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut output_bytes = 0;
    let mut out: Vec<Vec<PartitionBatch>> = Vec::new();
    let per_partition = BATCH / partitions;
    for (chunk_index, chunk) in values.chunks(per_partition).enumerate() {
        let partition = (chunk_index % partitions) as i32;
        let first = (chunk_index / partitions * per_partition) as i64;
        let mut batch = Batch::new("5", "bench", partition);
        let mut metas = Vec::new();
        for (i, value) in chunk.iter().enumerate() {
            let offset = first + i as i64;
            // Events `spacing_ms` apart in each partition, the last one now.
            let timestamp_ms =
                Some(now_ms - (events as i64 / partitions as i64 - offset) * spacing_ms);
            batch
                .push_event(EventInput {
                    offset,
                    value,
                    timestamp_ms,
                    ..EventInput::default()
                })
                .expect("push");
            metas.push(EventMeta {
                offset,
                timestamp_ms,
            });
        }
        let result = instance.process(&batch).expect("process");
        output_bytes += result.output_bytes();
        if partition == 0 {
            out.push(Vec::new());
        }
        out.last_mut().expect("a cycle").push(PartitionBatch {
            topic: "bench".into(),
            partition,
            first_offset: first,
            last_offset: first + chunk.len() as i64 - 1,
            processed_ms: now_ms,
            scenarios: vec![ScenarioBatch {
                scenario: route.id.clone(),
                plugin: route.plugin_label.clone(),
                events: metas,
                result,
            }],
            ..PartitionBatch::default()
        });
    }
    (out, output_bytes)
}
