//! Persistent boot ids: every start of a node's agent gets a boot id greater
//! than any it had before, even if the wall clock stepped backwards (NTP
//! step, drift, a wrong RTC) across the restart. Peers reject a boot id
//! lower than one they have seen as a replay from an older incarnation, so
//! a node whose clock went back would otherwise be cut off until its peers
//! restarted.

use crate::BootId;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file, in the agent's state directory, holding a node's last boot id
/// (named after the node, so nodes sharing a directory do not interfere).
pub fn boot_file(node: &str) -> String {
    format!("{node}.boot-id")
}

/// Returns this start's boot id: wall-clock milliseconds, or one more than
/// the last recorded boot id if that is not smaller, with a random nonce;
/// and records it durably (temporary file, fsync, rename, fsync of the
/// directory) before returning, so two starts can never reuse a value.
pub fn next_boot_id(state_dir: &Path, node: &str) -> std::io::Result<BootId> {
    let path = state_dir.join(boot_file(node));
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let started = match last {
        Some(last) if last >= now => last.saturating_add(1),
        _ => now,
    };
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{}.tmp{}", boot_file(node), std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{started}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(BootId {
        started_unix_ms: started,
        nonce: rand::random(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-boot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn boot_ids_always_increase_even_when_the_clock_went_back() {
        let dir = tempdir("mono");
        let first = next_boot_id(&dir, "h1").expect("first");
        let second = next_boot_id(&dir, "h1").expect("second");
        assert!(second > first);
        // The previous incarnation started "in the future" (clock stepped back since).
        let future = first.started_unix_ms + 3_600_000;
        std::fs::write(dir.join(boot_file("h1")), format!("{future}\n")).expect("write");
        let third = next_boot_id(&dir, "h1").expect("third");
        assert_eq!(third.started_unix_ms, future + 1);
        let recorded: u64 = std::fs::read_to_string(dir.join(boot_file("h1")))
            .expect("read")
            .trim()
            .parse()
            .expect("number");
        assert_eq!(recorded, future + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_garbled_record_falls_back_to_the_clock() {
        let dir = tempdir("garbled");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(boot_file("h1")), "not a number").expect("write");
        let id = next_boot_id(&dir, "h1").expect("boot");
        assert!(id.started_unix_ms > 1_700_000_000_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod concurrent_tests {
    use super::*;

    #[test]
    fn nodes_sharing_a_directory_do_not_interfere() {
        let dir = std::env::temp_dir().join(format!("haoscar-boot-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let handles: Vec<_> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|n| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|_| next_boot_id(&dir, n).map(|_| ()))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().expect("thread").is_ok());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
