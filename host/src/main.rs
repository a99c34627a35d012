//! The `weir` command.

use clap::Parser;

/// weir: Kafka in, sandboxed WebAssembly scenario plugins, exact counters and a Parquet archive out.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
