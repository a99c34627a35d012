//! Command-line interface: one module per command group. `anyhow` lives here
//! and in `main.rs` only.

mod capture;
mod client;
mod generate;
mod plugin;
mod report;
mod scaffold;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// weir: Kafka in, sandboxed WebAssembly scenario plugins, exact counters and a Parquet archive out.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub(crate) struct Cli {
    /// More log output on stderr (repeat for more); `RUST_LOG` overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Work with plugins (WebAssembly components).
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Create, change and inspect scenarios on a weir server.
    #[command(subcommand)]
    Scenario(client::ScenarioCommand),
    /// Import and inspect members (user attributes) on a weir server.
    #[command(subcommand)]
    Member(client::MemberCommand),
    /// Run the service: the pipeline, the collector and the control plane API.
    Serve(serve::ServeArgs),
    /// Send generated traffic to the collector or to Kafka.
    Generate(generate::GenerateArgs),
    /// Write records of a topic (or the dead-letter topic) as JSON Lines that
    /// `weir plugin test` and `weir plugin diff` read.
    Capture(capture::CaptureArgs),
    /// The pipeline's health on a weir server: events/s, lag, failing sinks,
    /// quarantines, alerts firing.
    Status(client::StatusArgs),
    /// Per scenario and day (or hour): events, matched, success ratio, dead
    /// letters and top values, from the archive; written back under
    /// `reports/daily/`.
    Report(report::ReportArgs),
}

impl Command {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Plugin(command) => command.run(),
            Command::Scenario(command) => command.run(),
            Command::Member(command) => command.run(),
            Command::Serve(args) => args.run(),
            Command::Generate(args) => args.run(),
            Command::Capture(args) => args.run(),
            Command::Status(args) => args.run(),
            Command::Report(args) => args.run(),
        }
    }
}

/// Logs go to stderr so that command output on stdout stays parseable.
pub(crate) fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    // librdkafka repeats its errors while a broker is down: one a minute of
    // each kind passes (weir::logs).
    let filter =
        tracing_subscriber::filter::FilterExt::and(filter, weir::logs::ClientLogFilter::default());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
}
