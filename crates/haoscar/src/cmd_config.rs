//! `haoscar config check|show`: validate a configuration file and print every
//! problem, or print it normalised with defaults filled in.

use anyhow::{Context, Result};
use haoscar_types::config::{self, Loaded};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate configuration files; print every problem with its location.
    /// Exits 1 if any file has an error (2 with --strict and only warnings).
    Check {
        /// Files to check (default: $HAOSCAR_CONFIG, else /etc/haoscar/cluster.toml).
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
    /// Validate FILE, distribute it to every node through the replicated
    /// state and apply only the difference (service resources).
    Apply {
        #[command(flatten)]
        agent: crate::cmd_ops::AgentArgs,
        /// The new configuration file.
        file: PathBuf,
    },
    /// Print the configuration normalised: node ranges expanded, defaults filled in.
    Show {
        /// File to show (default: $HAOSCAR_CONFIG, else /etc/haoscar/cluster.toml).
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
        ConfigCommand::Apply { agent, file } => crate::cmd_resource::apply(agent, file),
    }
}

/// The configuration to use when no file is named: `$HAOSCAR_CONFIG`, else
/// the default path.
fn default_path() -> PathBuf {
    std::env::var_os("HAOSCAR_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH))
}

fn default_file(files: Vec<PathBuf>) -> Vec<PathBuf> {
    if files.is_empty() {
        vec![default_path()]
    } else {
        files
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn check(files: Vec<PathBuf>, strict: bool, quiet: bool, json: bool) -> Result<ExitCode> {
    let mut worst = ExitCode::SUCCESS;
    let mut all = Vec::new();
    for file in default_file(files) {
        match config::load(&file) {
            Ok(Loaded {
                config, warnings, ..
            }) => {
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
                        "{}: ok: cluster {:?}, {} ({}, {}, {}), {}, {}, {}",
                        file.display(),
                        config.cluster.name,
                        plural(config.nodes.len(), "node", "nodes"),
                        plural(heads, "head", "heads"),
                        plural(voters - heads, "witness", "witnesses"),
                        plural(config.nodes.len() - voters, "compute node", "compute nodes"),
                        plural(config.channels.len(), "channel", "channels"),
                        plural(config.resources.len(), "resource", "resources"),
                        plural(warnings.len(), "warning", "warnings")
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
                println!(
                    "{}: {}, {}",
                    file.display(),
                    plural(diags.errors().count(), "error", "errors"),
                    plural(diags.warnings().count(), "warning", "warnings")
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
    let file = file.unwrap_or_else(default_path);
    match config::load(&file) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&loaded.config)?)
            } else {
                loaded.config.to_toml()
            };
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write the configuration to standard output")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            eprintln!("{diags}");
            Ok(ExitCode::FAILURE)
        }
    }
}
