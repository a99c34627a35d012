//! The `weir` command: parses arguments, sets up logging, runs a subcommand
//! from `cli/`.

mod cli;

use clap::Parser;

/// mimalloc rather than the system allocator: the pipeline allocates and
/// frees per event, and glibc's malloc showed as a fifth of its profile
/// (`benches/serve`; docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `weir serve` compiles uploaded plugins in a child process of itself,
    // under a time and memory budget (weir_runtime::compile).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == weir::runtime::compile::WORKER_ARG)
    {
        return weir::runtime::compile::worker_main();
    }
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match args.command.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
