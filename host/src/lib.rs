//! weir: the stream-processing host.
//!
//! # Layout
//!
//! - [`runtime`]: the plugin runtime, the `weir-runtime` crate (`runtime/`),
//!   re-exported. Loads WebAssembly components that implement
//!   `weir:plugin@0.1.0` (`wit/plugin.wit`), checks them, and runs batches of
//!   events through them under CPU, memory and output bounds. One `Runtime`
//!   per process; a `Plugin` per uploaded component; an `Instance` per
//!   configured scenario and worker. A crate of its own so that the SDK's
//!   `testing` layer uses it without building the rest of the host.
//!
//! - [`registry`]: the shared SQL state (SQLite, MariaDB or PostgreSQL):
//!   plugin versions, scenarios, members, and the generation number replicas
//!   poll to notice changes.
//! - [`api`]: the HTTP control plane (axum) over the registry, with bearer
//!   token roles and problem+json errors.
//! - [`archive`]: the exactly-once Parquet archive (HDFS, S3 or a local directory),
//!   a pipeline sink that writes one file per scenario, hour and partition per cycle.
//! - [`report`]: per scenario and day, events, matched and dead letters read
//!   from the archive by a query engine, for `weir report`.
//!
//! - [`collect`]: the front door, a public HTTP listener that turns tracking
//!   hits (a pixel, the Matomo tracking API) and JSON records into Kafka records,
//!   acknowledged by the broker before the client hears `2xx`.
//! - [`http`]: serving a router with connection limits (both listeners).
//! - [`generate`]: seeded generated traffic for `weir generate`.
//!
//! - [`alert`]: alert rules over the pipeline's figures, notifying webhooks.
//! - [`telemetry`]: every metric weir exports, recorded through the `metrics`
//!   facade into one Prometheus recorder per service (`GET /metrics`).
//!
//! - [`health`]: whether each dependency (registry, Kafka, Redis, archive) is
//!   reachable, the retry rule at start, and what `/readyz` and `/livez` say.
//! - [`logs`]: librdkafka's log lines through `tracing`, at most one a minute
//!   of each kind.
//!
//! - [`service`]: where the service is composed (broker, counters, archive,
//!   pipeline, demo), for `weir serve` and its tests alike.
//!
//! The `weir` binary (`src/main.rs`, commands in `src/cli/`) is a thin layer
//! over these modules.

pub mod aggregate;
pub mod alert;
pub mod api;
pub mod archive;
pub mod collect;
pub mod generate;
pub mod health;
pub mod http;
pub mod logs;
pub mod pipeline;
pub mod registry;
pub mod report;
pub mod service;
pub mod telemetry;
pub use weir_runtime as runtime;
