//! The lab's persistent record, so that every CLI invocation (a separate
//! process) can operate on a lab: the state file `<dir>/lab.json` (spec, node
//! plan, supervisor pids), the marker file that makes a directory removable
//! by `down`, and the registry `/run/haoscar-lab/<name>` that maps a lab name
//! to its directory.

use crate::error::LabError;
use crate::spec::{default_dir, LabNode, LabSpec, DEFAULT_BASE_DIR};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Directory of the name -> lab directory registry.
pub const REGISTRY_DIR: &str = "/run/haoscar-lab";
/// The state file inside a lab directory.
pub const STATE_FILE: &str = "lab.json";
/// Marker file inside a lab directory; `down` only removes marked directories.
pub const MARKER_FILE: &str = ".haoscar-lab";

const STATE_VERSION: u32 = 1;

/// Everything a later process needs to know about a lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub version: u32,
    pub spec: LabSpec,
    pub nodes: Vec<LabNode>,
    /// Node name -> pid of its supervisor.
    pub supervisors: BTreeMap<String, i32>,
    /// Seconds since the epoch when `up` finished.
    pub created_unix: u64,
}

impl LabState {
    pub fn new(spec: LabSpec, nodes: Vec<LabNode>) -> LabState {
        LabState {
            version: STATE_VERSION,
            spec,
            nodes,
            supervisors: BTreeMap::new(),
            created_unix: 0,
        }
    }

    /// Writes the state file atomically.
    pub fn save(&self) -> Result<(), LabError> {
        let path = self.spec.dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes(), 0o644)
    }

    /// Reads `<dir>/lab.json`.
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let state: LabState = serde_json::from_str(&text).map_err(|e| LabError::State {
            path: path.clone(),
            message: format!("corrupt: {e}"),
        })?;
        if state.version != STATE_VERSION {
            return Err(LabError::State {
                path,
                message: format!(
                    "written by another version (format {}, expected {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }
}

/// The registry entry of a lab.
pub fn registry_path(name: &str) -> PathBuf {
    Path::new(REGISTRY_DIR).join(name)
}

/// Records that lab `name` lives in `dir`. Creating the entry is atomic
/// (`O_EXCL`), so of two concurrent `up` of the same name only one wins.
pub fn register(name: &str, dir: &Path) -> Result<(), LabError> {
    use std::io::Write;
    std::fs::create_dir_all(REGISTRY_DIR)
        .map_err(LabError::io(format!("creating {REGISTRY_DIR}")))?;
    let path = registry_path(name);
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(LabError::AlreadyExists {
                name: name.to_string(),
                what: format!("registered in {}", path.display()),
            })
        }
        Err(e) => return Err(LabError::io(format!("creating {}", path.display()))(e)),
    };
    writeln!(f, "{}", dir.display()).map_err(LabError::io(format!("writing {}", path.display())))
}

/// The directory of lab `name`: from the registry, else the default
/// directory if it is a lab directory.
pub fn locate(name: &str) -> Option<PathBuf> {
    if let Ok(text) = std::fs::read_to_string(registry_path(name)) {
        let dir = PathBuf::from(text.trim());
        if dir.is_absolute() {
            return Some(dir);
        }
    }
    let dir = default_dir(name);
    dir.join(MARKER_FILE).exists().then_some(dir)
}

/// Names of labs that have a registry entry or a default directory.
pub fn known_names() -> Vec<String> {
    let mut names = Vec::new();
    for base in [REGISTRY_DIR, DEFAULT_BASE_DIR] {
        if let Ok(rd) = std::fs::read_dir(base) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    if crate::spec::validate_name(n).is_ok() {
                        names.push(n.to_string());
                    }
                }
            }
        }
    }
    names
}

/// Whether `dir` carries the marker of lab `name`.
pub fn is_lab_dir(dir: &Path, name: &str) -> bool {
    std::fs::read_to_string(dir.join(MARKER_FILE)).is_ok_and(|t| t.trim() == name)
}

/// Creates `dir` (which must be absent or empty) and marks it as lab `name`'s.
pub fn create_lab_dir(dir: &Path, name: &str) -> Result<(), LabError> {
    if let Ok(mut rd) = std::fs::read_dir(dir) {
        if rd.next().is_some() && !is_lab_dir(dir, name) {
            return Err(LabError::InvalidSpec(format!(
                "directory {} exists and is not empty; choose another --dir",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    write_atomic(
        &dir.join(MARKER_FILE),
        format!("{name}\n").as_bytes(),
        0o644,
    )
}

/// Writes `bytes` to `path` through a temporary file and a rename, with `mode`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let ctx = || format!("writing {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(LabError::io(ctx()))?;
    f.write_all(bytes).map_err(LabError::io(ctx()))?;
    drop(f);
    // The mode given to open() is filtered by the umask; set it exactly.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(LabError::io(ctx()))?;
    std::fs::rename(&tmp, path).map_err(LabError::io(ctx()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip() {
        let dir = std::env::temp_dir().join(format!("haoscar-lab-state-{}", std::process::id()));
        let spec = LabSpec {
            dir: dir.clone(),
            ..LabSpec::named("rt", "/bin/true")
        };
        let nodes = spec.plan().expect("plan");
        let mut st = LabState::new(spec, nodes);
        st.supervisors.insert("head1".into(), 42);
        create_lab_dir(&dir, "rt").expect("dir");
        assert!(is_lab_dir(&dir, "rt"));
        assert!(!is_lab_dir(&dir, "other"));
        st.save().expect("save");
        assert_eq!(LabState::load(&dir).expect("load"), st);
        std::fs::write(dir.join(STATE_FILE), "{ not json").expect("write");
        assert!(matches!(LabState::load(&dir), Err(LabError::State { .. })));
        std::fs::write(dir.join("other"), "x").expect("write");
        assert!(create_lab_dir(&dir, "zz").is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
