//! Configuration changes without downtime, agent side: owns the rules of
//! what `haoscar config apply` may change on a running cluster (the service
//! resources; everything else needs a restart), the decision whether this
//! node's configuration is the cluster's, is merely behind (take the
//! replicated text), or differs (say so, never become active), and the
//! atomic rewrite of the local configuration file.

use haoscar_consensus::AppliedConfig;
use haoscar_types::config::{Config, ResourceKind};
use std::io::Write;
use std::path::Path;

/// What this node should do about the cluster's applied configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing applied yet, or this node runs it.
    Current,
    /// This node runs an earlier version: take `applied.text`.
    Adopt,
    /// This node's file is not a version the cluster had: report, wait.
    Differs(String),
}

/// Compares the digest of this node's resources with the cluster's record
/// (before the first `config apply` there is none: each node runs its file,
/// and differing files show as `config_mismatch` events).
pub fn verdict(ours: u64, applied: Option<&AppliedConfig>) -> Verdict {
    match applied {
        None => Verdict::Current,
        Some(a) if a.digest == ours => Verdict::Current,
        Some(a) if a.earlier.contains(&ours) => Verdict::Adopt,
        Some(a) => Verdict::Differs(format!(
            "this node's resources ({ours:016x}) are not the cluster's configuration version {} ({:016x}, applied by {}): \
             it will not be made active; install the cluster's resources or apply this file with `haoscar config apply`",
            a.version, a.digest, a.by
        )),
    }
}

/// The sections `config apply` must leave as they are, with what differs.
pub fn incompatible(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.cluster != new.cluster {
        out.push("[cluster]".to_string());
    }
    if old.api != new.api {
        out.push("[api]".to_string());
    }
    if old.paths != new.paths {
        out.push("[paths]".to_string());
    }
    if old.channels != new.channels {
        out.push("[[channel]]".to_string());
    }
    if old.nodes != new.nodes {
        out.push("[[node]]".to_string());
    }
    let vips = |c: &Config| {
        c.resources
            .iter()
            .filter(|r| matches!(r.kind, ResourceKind::Vip(_)))
            .cloned()
            .collect::<Vec<_>>()
    };
    if vips(old) != vips(new) {
        out.push("the vip resources".to_string());
    }
    if old.replicates != new.replicates {
        out.push("[[replicate]]".to_string());
    }
    out
}

/// Replaces `path` with `text` atomically (temporary file, fsync, rename,
/// fsync of the directory), keeping the mode of the old file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cluster.toml".into());
    let tmp = dir.join(format!(".{name}.haoscar-tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(digest: u64, earlier: Vec<u64>) -> AppliedConfig {
        AppliedConfig {
            version: 3,
            digest,
            text: String::new(),
            by: "root@head1".into(),
            at_unix_ms: 0,
            earlier,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(1, None), Verdict::Current);
        assert_eq!(verdict(1, Some(&applied(1, vec![]))), Verdict::Current);
        assert_eq!(verdict(1, Some(&applied(2, vec![1]))), Verdict::Adopt);
        match verdict(9, Some(&applied(2, vec![1]))) {
            Verdict::Differs(why) => assert!(why.contains("version 3"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn atomic_write_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("haoscar-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("cluster.toml");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
