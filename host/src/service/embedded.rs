//! An in-process Kafka-protocol broker for a first run without Kafka: librdkafka's
//! mock cluster, reached over 127.0.0.1 like a real broker, so the pipeline runs
//! unchanged (consumer group, transactions, read_committed).
//!
//! It keeps at most about 100,000 messages or 5 MiB per partition (older ones
//! vanish) and nothing survives the process: it is for demos and first steps, not
//! for data anyone needs.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

/// The running embedded broker; stopped when dropped.
#[derive(Debug)]
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
#[error("embedded broker: {0}")]
pub struct EmbeddedError(String);

impl EmbeddedBroker {
    /// Starts a one-broker cluster with `topics` created (name, partitions).
    pub fn start(topics: &[(&str, i32)]) -> Result<Self, EmbeddedError> {
        let topics: Vec<(String, i32)> =
            topics.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        // The mock cluster is tied to the thread that made it; it lives until `stop`.
        let thread = std::thread::Builder::new()
            .name("weir-embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.to_string()));
                        return;
                    }
                };
                for (topic, partitions) in &topics {
                    if let Err(err) = cluster.create_topic(topic, *partitions, 1) {
                        let _ = ready_tx.send(Err(format!("creating topic {topic}: {err}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let _ = stop_rx.recv();
            })
            .map_err(|e| EmbeddedError(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| EmbeddedError("the broker thread ended before it was ready".into()))?
            .map_err(EmbeddedError)?;
        tracing::info!(bootstrap = %bootstrap, "embedded broker started (in-process, not durable)");
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `host:port` of the broker, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
