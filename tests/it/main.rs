//! Integration tests against real servers, one module per area.
//!
//! Run them with `tests/run` (starts the servers, runs every test, stops what it
//! started), or start the servers once with `tests/stack up`, then
//! `eval "$(tests/stack env)" && cargo test -p weir-integration`.

mod api;
mod archive;
mod authors;
mod cluster;
mod collect;
mod counters;
mod deps;
mod embedded;
mod faults;
mod hdfs;
mod kafka;
mod pipeline;
mod redis;
mod registry;
mod report;
mod s3;
mod soak;
mod sql;
mod window;
