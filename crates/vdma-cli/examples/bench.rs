//! `vdma bench` as an example binary, until the `vdma` command has the subcommand:
//! `cargo run --release -p vdma-cli --example bench -- --quick`.
//!
//! `bench-peer` as the first argument runs the peer process the bench starts (this program
//! again) for its "another process's memory" contender.

use std::process::ExitCode;

use clap::Parser;
use vdma_cli::bench::{self, BenchArgs, PEER_SUBCOMMAND};

/// Run the vdma performance suite.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(PEER_SUBCOMMAND) {
        bench::peer_main();
    }
    let cli = Cli::parse();
    match bench::run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vdma bench: {e}");
            ExitCode::FAILURE
        }
    }
}
