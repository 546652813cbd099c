//! Log set-up: `tracing` to stderr, filtered by `HAOSCAR_LOG` / `RUST_LOG`
//! (default `info` for the agent, `warn` for CLI commands), text or JSON.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

fn filter(default: &str) -> EnvFilter {
    std::env::var("HAOSCAR_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Logging for the agent: timestamps, targets, `info` by default.
pub fn init_agent(json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter("info,openraft=warn"))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Logging for short-lived CLI commands: warnings and errors only.
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("warn"))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}
