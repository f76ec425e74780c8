//! The `eventflow` binary: the command line with no projection registered (see the crate docs
//! to build one that can rebuild yours).

fn main() -> std::process::ExitCode {
    eventflow_cli::App::new().main()
}
