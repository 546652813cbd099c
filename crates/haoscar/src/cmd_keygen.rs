//! `haoscar keygen`: write a new random cluster key (32 bytes as 64 hex
//! characters) with mode 0600, never overwriting an existing key unless told.

use anyhow::{bail, Context, Result};
use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the key.
    #[arg(default_value = haoscar_types::config::DEFAULT_SECRET_FILE)]
    pub file: PathBuf,
    /// Replace an existing key (every node then needs the new one).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: KeygenArgs) -> Result<ExitCode> {
    write_key(&args.file, args.force)?;
    println!(
        "wrote a new cluster key to {} (mode 0600); copy it to every node, e.g. scp -p {} other-node:{}",
        args.file.display(),
        args.file.display(),
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a fresh key to `path` (mode 0600).
pub fn write_key(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; refusing to overwrite the cluster key (use --force to replace it; every node then needs the new key)",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let text = format!("{}\n", hex::encode(key));
    // Write a private temporary file, then rename: never a half-written key.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if !force && path.exists() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{} appeared while writing; not overwriting it",
            path.display()
        );
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move the key to {}", path.display()))?;
    Ok(())
}
