//! `vdma`: serve the sample dma-engine device, probe a vfio-user socket.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use vdma_cli::bench::{self, BenchArgs};
use vdma_cli::probe::{self, ProbeError};
use vdma_cli::serve::{self, DeviceKind, ServeOptions};
use vdma_user::client::{Client, ClientError};

/// User-space VFIO DMA: serve a device over vfio-user, or probe one.
#[derive(Debug, Parser)]
#[command(name = "vdma", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a device over vfio-user on a Unix socket.
    ///
    /// The socket is created with mode 0600; clients are served one after another until
    /// SIGINT or SIGTERM, which disconnects the client, removes the socket and exits 0. Logs
    /// go to stderr; RUST_LOG sets the level (default info).
    Serve(ServeArgs),
    /// Describe the device behind a vfio-user socket.
    ///
    /// Prints the negotiated version and capabilities, the device's regions and interrupt
    /// types, and its PCI config space as `lspci -vv` prints it (BARs are sized by writing
    /// all ones and restored). Exits non-zero if any step failed.
    Probe(ProbeArgs),
    /// Measure vdma against memcpy and vm-memory, side by side.
    ///
    /// Runs the whole suite in one process (each contender of a case in turn, round after
    /// round) and prints a table with the median time per operation, its spread, throughput,
    /// ratios to memcpy and vm-memory, and the targets met or missed. --quick takes under 30 s.
    Bench(BenchArgs),
    /// The memory-serving peer process `vdma bench` starts (not for direct use).
    #[command(name = "bench-peer", hide = true)]
    BenchPeer,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The socket to create.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The device to serve.
    #[arg(long, value_enum, default_value_t = DeviceArg::DmaEngine)]
    device: DeviceArg,
    /// PCI vendor id, hex (0x1234) or decimal.
    #[arg(long, value_name = "ID", value_parser = parse_id, default_value = "0x1234")]
    vendor_id: u16,
    /// PCI device id, hex (0xd3a0) or decimal.
    #[arg(long, value_name = "ID", value_parser = parse_id, default_value = "0xd3a0")]
    device_id: u16,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// The server's socket.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DeviceArg {
    /// The sample DMA engine.
    DmaEngine,
}

/// A 16-bit id: `0x`-prefixed hex, or decimal.
fn parse_id(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse::<u16>(),
    };
    parsed.map_err(|_| {
        format!("`{text}` is not a 16-bit id (hex with 0x, e.g. 0x1234, or decimal up to 65535)")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve_command(args),
        Command::Probe(args) => probe_command(args),
        Command::Bench(args) => bench_command(&args),
        Command::BenchPeer => bench::peer_main(),
    }
}

fn serve_command(args: ServeArgs) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let options = ServeOptions {
        socket: args.socket,
        device: match args.device {
            DeviceArg::DmaEngine => DeviceKind::DmaEngine,
        },
        vendor_id: args.vendor_id,
        device_id: args.device_id,
    };
    match serve::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vdma serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe_command(args: ProbeArgs) -> ExitCode {
    let client = match Client::connect(&args.socket) {
        Ok(client) => client,
        Err(source) => {
            let busy = matches!(source, ClientError::Timeout { .. });
            let e = ProbeError::Connect {
                path: args.socket.display().to_string(),
                source,
            };
            if busy {
                eprintln!(
                    "vdma probe: {e} (a server serves one client at a time: is another one connected?)"
                );
            } else {
                eprintln!("vdma probe: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let report = match probe::collect(&client) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("vdma probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    client.close();
    print!("{}", probe::render(&report));
    match report.errors() {
        0 => ExitCode::SUCCESS,
        n => {
            eprintln!("vdma probe: {n} step(s) failed (see the output)");
            ExitCode::FAILURE
        }
    }
}

fn bench_command(args: &BenchArgs) -> ExitCode {
    match bench::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vdma bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn ids_in_hex_or_decimal() {
        assert_eq!(parse_id("0x1234"), Ok(0x1234));
        assert_eq!(parse_id("0XD3A0"), Ok(0xd3a0));
        assert_eq!(parse_id("4660"), Ok(0x1234));
        assert_eq!(parse_id("65535"), Ok(0xffff));
        assert!(parse_id("65536").is_err());
        assert!(parse_id("0x10000").is_err());
        assert!(parse_id("").is_err());
        assert!(parse_id("0x").is_err());
        assert!(parse_id("-1").is_err());
        assert!(parse_id("12ab").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
