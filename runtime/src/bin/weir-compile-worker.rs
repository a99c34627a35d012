//! The compile worker on its own (`weir_runtime::compile`), for embedders
//! other than the `weir` binary (which runs it as `weir __compile-plugin`) and
//! for this crate's tests.

fn main() -> std::process::ExitCode {
    weir_runtime::compile::worker_main()
}
