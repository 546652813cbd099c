//! `haoscar config check|show`: validate a configuration file and print every
//! problem, or print it normalised with defaults filled in.

use anyhow::Result;
use haoscar_types::config::{self, Loaded};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate configuration files; print every problem with its location.
    /// Exits 1 if any file has an error (2 with --strict and only warnings).
    Check {
        /// Files to check (default: /etc/haoscar/cluster.toml).
        files: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Print nothing for a valid file.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// Print the diagnostics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the configuration normalised: node ranges expanded, defaults filled in.
    Show {
        /// File to show (default: /etc/haoscar/cluster.toml).
        file: Option<PathBuf>,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Check {
            files,
            strict,
            quiet,
            json,
        } => check(files, strict, quiet, json),
        ConfigCommand::Show { file, json } => show(file, json),
    }
}

fn default_file(files: Vec<PathBuf>) -> Vec<PathBuf> {
    if files.is_empty() {
        vec![PathBuf::from(config::DEFAULT_CONFIG_PATH)]
    } else {
        files
    }
}

fn check(files: Vec<PathBuf>, strict: bool, quiet: bool, json: bool) -> Result<ExitCode> {
    let mut worst = ExitCode::SUCCESS;
    let mut all = Vec::new();
    for file in default_file(files) {
        match config::load(&file) {
            Ok(Loaded { config, warnings }) => {
                if strict && !warnings.is_empty() {
                    worst = ExitCode::from(2);
                }
                if json {
                    all.extend(warnings);
                    continue;
                }
                for w in &warnings {
                    println!("{w}");
                }
                if !quiet {
                    let heads = config.heads().count();
                    let voters = config.voters().count();
                    println!(
                        "{}: ok: cluster {:?}, {} nodes ({heads} heads, {} witnesses, {} computes), {} channels, {} resources, {} warning(s)",
                        file.display(),
                        config.cluster.name,
                        config.nodes.len(),
                        voters - heads,
                        config.nodes.len() - voters,
                        config.channels.len(),
                        config.resources.len(),
                        warnings.len()
                    );
                }
            }
            Err(diags) => {
                worst = ExitCode::FAILURE;
                if json {
                    all.extend(diags.0);
                    continue;
                }
                for d in &diags.0 {
                    println!("{d}");
                }
                let n = diags.errors().count();
                println!(
                    "{}: {n} error(s), {} warning(s)",
                    file.display(),
                    diags.warnings().count()
                );
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(worst)
}

fn show(file: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let file = file.unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    match config::load(&file) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&loaded.config)?);
            } else {
                print!("{}", loaded.config.to_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            eprintln!("{diags}");
            Ok(ExitCode::FAILURE)
        }
    }
}
