//! `haoscar lab ...`: command-line front end of the `haoscar-lab` library.

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Show the lab.
    Status,
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Status => Ok(()),
    }
}
