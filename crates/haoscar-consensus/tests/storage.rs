//! Storage tests: openraft's conformance suite against the on-disk stores,
//! persistence across reopen, and torn-tail recovery of the log file.

mod common;

use std::fs::OpenOptions;

use common::TempDir;
use haoscar_consensus::storage::{self, LogStore, StateMachineStore, LOG_FILE};
use haoscar_consensus::{Command, NodeId, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = TempDir::new("suite");
        let (log, sm) = storage::open(dir.path()).map_err(|e| StorageError::IO {
            source: openraft::StorageIOError::write(openraft::AnyError::error(e.to_string())),
        })?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_conformance_suite() {
    common::init_tracing();
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::SetConfigVersion { digest: index }),
    }
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(0..)
        .await
        .expect("read")
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = TempDir::new("reopen");
    {
        let (mut log, _) = storage::open(dir.path()).expect("open");
        log.blocking_append((1..=5).map(|i| entry(1, i)))
            .await
            .expect("append");
        log.save_vote(&Vote::new_committed(3, 7))
            .await
            .expect("vote");
        log.save_committed(Some(log_id(1, 4)))
            .await
            .expect("committed");
        log.truncate(log_id(1, 5)).await.expect("truncate");
        log.blocking_append([entry(3, 5), entry(3, 6)])
            .await
            .expect("append");
    }
    let (mut log, _) = storage::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 6]);
    let e = log.try_get_log_entries(5..=5).await.expect("read");
    assert_eq!(e[0].log_id, log_id(3, 5));
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(3, 7))
    );
    assert_eq!(log.read_committed().await.expect("c"), Some(log_id(1, 4)));

    // Purge, then reopen: purged entries stay gone, the rest stay.
    log.purge(log_id(1, 3)).await.expect("purge");
    drop(log);
    let (mut log, _) = storage::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![4, 5, 6]);
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(st.last_log_id, Some(log_id(3, 6)));
    // Appending after a purge (the file was rewritten) still works.
    log.blocking_append([entry(3, 7)]).await.expect("append");
    drop(log);
    let (mut log, _) = storage::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn torn_tail_is_dropped_without_losing_earlier_entries() {
    let dir = TempDir::new("torn");
    {
        let (mut log, _) = storage::open(dir.path()).expect("open");
        log.blocking_append((1..=10).map(|i| entry(1, i)))
            .await
            .expect("append");
    }
    let path = dir.path().join(LOG_FILE);
    let full = std::fs::metadata(&path).expect("meta").len();
    // Cut the last record in the middle of its payload.
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open file");
    f.set_len(full - 5).expect("truncate");
    drop(f);
    let (mut log, report) = LogStore::open_with_report(dir.path()).expect("reopen");
    assert_eq!(report.entries, 9);
    assert!(report.dropped_tail_bytes > 0);
    assert_eq!(indexes(&mut log).await, (1..=9).collect::<Vec<_>>());
    // The file was cut back to the last good record: appending the lost
    // entry again and reopening gives a clean log.
    log.blocking_append([entry(1, 10), entry(1, 11)])
        .await
        .expect("append");
    drop(log);
    let (mut log, report) = LogStore::open_with_report(dir.path()).expect("reopen");
    assert_eq!(report.dropped_tail_bytes, 0);
    assert_eq!(indexes(&mut log).await, (1..=11).collect::<Vec<_>>());

    // A cut inside a record header (fewer than 12 bytes left) too.
    drop(log);
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open file");
    use std::io::Write;
    (&f).write_all(&[0, 0, 0]).expect("write");
    drop(f);
    let (mut log, report) = LogStore::open_with_report(dir.path()).expect("reopen");
    assert_eq!(report.dropped_tail_bytes, 3);
    assert_eq!(indexes(&mut log).await, (1..=11).collect::<Vec<_>>());
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), len);
}

#[tokio::test]
async fn corruption_before_the_tail_is_an_error() {
    let dir = TempDir::new("corrupt");
    {
        let (mut log, _) = storage::open(dir.path()).expect("open");
        log.blocking_append((1..=3).map(|i| entry(1, i)))
            .await
            .expect("append");
    }
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    // Flip a byte inside the first record's payload.
    bytes[8 + 12 + 3] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        LogStore::open(dir.path()),
        Err(storage::OpenError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn snapshot_restores_the_state_machine() {
    let dir = TempDir::new("snap");
    {
        let (_, mut sm) = storage::open(dir.path()).expect("open");
        sm.apply([
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Normal(Command::SetMaintenance {
                    node: "n1".into(),
                    on: true,
                }),
            },
            entry(1, 2),
        ])
        .await
        .expect("apply");
        let mut b = sm.get_snapshot_builder().await;
        let snap = b.build_snapshot().await.expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 2)));
    }
    let (_, mut sm) = storage::open(dir.path()).expect("reopen");
    let (applied, _) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 2)));
    let st = sm.state();
    assert!(st.in_maintenance("n1"));
    assert_eq!(st.config_digest, Some(2));
    assert!(sm.get_current_snapshot().await.expect("snap").is_some());
}

/// Regression (safety review): after a power loss a filesystem can keep a
/// file's new size without its data, leaving zeros at the end. That tail
/// was never reported durable and must be dropped, not refuse to open.
#[tokio::test]
async fn zero_filled_tail_is_dropped() {
    let dir = TempDir::new("zeros");
    {
        let (mut log, _) = storage::open(dir.path()).expect("open");
        log.blocking_append((1..=3).map(|i| entry(1, i)))
            .await
            .expect("append");
    }
    let path = dir.path().join(LOG_FILE);
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open file");
    use std::io::Write;
    (&f).write_all(&[0u8; 4096]).expect("write");
    drop(f);
    let (mut log, report) = LogStore::open_with_report(dir.path()).expect("reopen");
    assert_eq!(report.dropped_tail_bytes, 4096);
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3]);
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), len);
}
