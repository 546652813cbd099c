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

/// Writes a fresh key to `path` (mode 0600). Only a regular file is ever
/// replaced (with `force`); the key is written to a private temporary file
/// in the same directory and moved into place atomically, so a reader never
/// sees a half-written key and, without `force`, an existing file is never
/// overwritten even if it appears meanwhile.
pub fn write_key(path: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => bail!(
            "{} exists and is not a regular file (a {}); refusing to write a key there",
            path.display(),
            describe(&meta.file_type())
        ),
        Ok(_) if !force => bail!(
            "{} already exists; refusing to overwrite the cluster key (use --force to replace it; every node then needs the new key)",
            path.display()
        ),
        _ => {}
    }
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let text = format!("{}\n", hex::encode(key));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("cluster.key"),
        std::process::id()
    ));
    let result = write_private(&tmp, text.as_bytes()).and_then(|()| {
        if force {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot move the key to {}", path.display()))
        } else {
            // link() fails if the destination exists: no overwrite race.
            std::fs::hard_link(&tmp, path)
                .with_context(|| format!("cannot create {}", path.display()))
        }
    });
    let _ = std::fs::remove_file(&tmp);
    result
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn describe(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}
