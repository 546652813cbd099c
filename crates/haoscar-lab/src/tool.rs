//! Running the external tools the lab shells out to (`ip`, `nft`): locating
//! them, feeding stdin, checking the exit status and turning failures into
//! [`LabError::Command`] with the command line and its stderr.

use crate::error::LabError;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Finds `name` on `$PATH`, then in the sbin directories (which a non-login
/// root environment may lack on its path).
pub(crate) fn locate(name: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallback = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    from_path
        .into_iter()
        .chain(fallback)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `program args...` (with `stdin` fed to it if given) and returns its
/// stdout; a non-zero exit is an error carrying stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let path = locate(program);
    let shown = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(command = %shown, "running");
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                match program {
                    "ip" => " (install iproute2)",
                    "nft" => " (install nftables)",
                    _ => "",
                }
            } else {
                ""
            };
            LabError::Io {
                context: format!("cannot run `{shown}`{hint}"),
                source: e,
            }
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(LabError::io(format!("writing the input of `{shown}`")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("waiting for `{shown}`")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(text) = stdin {
            stderr.push_str("\ninput was:\n");
            stderr.push_str(text.trim_end());
        }
        Err(LabError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// Runs `ip -n <ns> -batch -` with `commands` (one per line).
pub(crate) fn ip_batch(ns: &str, commands: &[String]) -> Result<(), LabError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut text = commands.join("\n");
    text.push('\n');
    run("ip", &["-n", ns, "-batch", "-"], Some(&text)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr() {
        match run("sh", &["-c", "echo oops >&2; exit 3"], None) {
            Err(LabError::Command {
                command, stderr, ..
            }) => {
                assert_eq!(command, "sh -c echo oops >&2; exit 3");
                assert_eq!(stderr, "oops");
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        assert_eq!(run("sh", &["-c", "cat"], Some("hi")).expect("ok"), "hi");
    }
}
