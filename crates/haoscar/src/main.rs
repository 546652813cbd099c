//! The `haoscar` binary: command-line parsing and dispatch to the agent, the
//! configuration tools, the control-API client, the lab and the demo.

mod lab_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "haoscar", version, about = "High availability for Linux cluster head nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build and manage a real test cluster in network namespaces (root).
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
    /// Print the version.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Lab(cmd) => lab_cmd::run(cmd),
        Command::Version => {
            println!("haoscar {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
