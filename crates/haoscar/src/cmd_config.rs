//! `haoscar config check|show`: validate a configuration file and print every
//! problem, or print it normalised with defaults filled in.

use anyhow::{Context, Result};
use haoscar_resources::service;
use haoscar_types::config::{self, Loaded, ResourceKind};
use haoscar_types::diagnostic::{Diagnostic, Diagnostics, Severity};
use std::io::Write;
use std::path::{Path, PathBuf};
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
        let loaded = config::load(&file).and_then(|l| {
            // The OCF agents' own meta-data: required and unknown parameters.
            let extra = ocf_diagnostics(&file, &l);
            let mut diags: Vec<Diagnostic> = l.warnings.clone();
            diags.extend(extra);
            diags.sort_by_key(|d| (d.line, d.column));
            if diags.iter().any(|d| d.severity == Severity::Error) {
                Err(Diagnostics(diags))
            } else {
                Ok(Loaded {
                    warnings: diags,
                    ..l
                })
            }
        });
        match loaded {
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
                    // Watch lists are mentioned only when there are some.
                    let watched = config.watch_services().count();
                    let watch = if watched == 0 {
                        String::new()
                    } else {
                        format!(
                            ", {} in {}",
                            plural(watched, "watch service", "watch services"),
                            plural(config.watches.len(), "group", "groups")
                        )
                    };
                    println!(
                        "{}: ok: cluster {:?}, {} ({}, {}, {}), {}, {}{watch}, {}",
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

/// Checks each OCF resource's parameters against its agent's meta-data on
/// this machine: required ones missing and unknown ones are errors; an
/// agent not installed here is a warning (it may be on the heads only).
fn ocf_diagnostics(file: &Path, loaded: &Loaded) -> Vec<Diagnostic> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, r) in loaded.config.resources.iter().enumerate() {
        let ResourceKind::Ocf(o) = &r.kind else {
            continue;
        };
        let path = format!("resource[{i}]");
        let at = |field: &str| {
            loaded
                .locations
                .get(field)
                .or_else(|| loaded.locations.get(&path))
                .copied()
                .unwrap_or((0, 0))
        };
        let diag = |severity, field: String, message: String| {
            let (line, column) = at(&field);
            Diagnostic {
                severity,
                file: file.to_path_buf(),
                line,
                column,
                field,
                message,
            }
        };
        let (provider, agent) = o.provider_agent();
        let script = o.ocf_root.join("resource.d").join(provider).join(agent);
        if !script.is_file() {
            out.push(diag(
                Severity::Warning,
                format!("{path}.agent"),
                format!(
                    "OCF agent {provider}:{agent} is not installed on this machine ({}): its parameters were not checked",
                    script.display()
                ),
            ));
            continue;
        }
        let meta = rt.block_on(service::meta_data(&o.ocf_root, provider, agent));
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                out.push(diag(
                    Severity::Warning,
                    format!("{path}.agent"),
                    format!("cannot read the meta-data of {provider}:{agent}: {e}"),
                ));
                continue;
            }
        };
        for p in service::check_params(&meta, &o.params) {
            match &p {
                service::ParamProblem::Missing { name } => out.push(diag(
                    Severity::Error,
                    format!("{path}.params.{name}"),
                    format!("{provider}:{agent}: {p}"),
                )),
                service::ParamProblem::Unknown { name, .. } => out.push(diag(
                    Severity::Error,
                    format!("{path}.params.{name}"),
                    format!("{provider}:{agent}: {p}"),
                )),
            }
        }
    }
    out
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
