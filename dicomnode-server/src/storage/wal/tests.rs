//! The log's own tests: replay, torn records, consumption, placement, the ring.

use super::*;
use format::WholeRecord;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

fn info(n: usize) -> CommitInfo {
    CommitInfo {
        parts: Vec::new(),
        key: format!("P{n}"),
        input_dirs: vec!["in-any".into()],
        file_name: format!("1.2.{n}.dcm"),
        sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
        sop_instance: format!("1.2.{n}"),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
    }
}

/// The data set of instance `n`: `size` bytes.
fn data(n: usize, size: usize) -> Vec<u8> {
    let mut bytes = vec![(n % 251) as u8; size];
    for (i, byte) in bytes.iter_mut().enumerate().step_by(4093) {
        *byte = (i % 253) as u8;
    }
    bytes
}

/// A small ring for the tests: 4 segments of 1 MiB.
const SMALL: Geometry = Geometry {
    segments: 4,
    segment_bytes: 1 << 20,
};

fn open(dir: &Path, layout: &DiskLayout) -> (Arc<Wal>, usize) {
    Wal::open_shaped(dir, layout, SMALL).unwrap()
}

/// Logs instance `n` as the receive path does: parts while it arrives, then a commit;
/// returns the commit's LSN.
fn log(wal: &Wal, n: usize, size: usize) -> u64 {
    let bytes = data(n, size);
    let mut stream = wal.stream();
    while bytes.len() - stream.logged() >= PART_BYTES {
        let from = stream.logged();
        wal.append_part(&mut stream, &bytes[from..from + PART_BYTES])
            .unwrap();
    }
    wal.commit(stream, &bytes, info(n)).unwrap()
}

fn file_of(layout: &DiskLayout, n: usize) -> PathBuf {
    layout
        .patient_dir(&format!("P{n}"))
        .join("in-any")
        .join(format!("1.2.{n}.dcm"))
}

/// Changes a byte of the payload of the record at `lsn`, as a torn write would.
fn tear(dir: &Path, lsn: u64) {
    let (segment, offset) = SMALL.position(lsn);
    OpenOptions::new()
        .write(true)
        .open(dir.join("wal").join(format!("segment-{segment}")))
        .unwrap()
        .write_all_at(&[0xEE], offset + HEADER + 10)
        .unwrap();
}

/// The data set in instance `n`'s written file (after preamble, magic and meta).
fn data_set_in(layout: &DiskLayout, n: usize) -> Vec<u8> {
    let bytes = fs::read(file_of(layout, n)).unwrap();
    let info = info(n);
    let head = crate::storage::placing::part10_head(
        &info.sop_class,
        &info.sop_instance,
        &info.transfer_syntax,
    )
    .unwrap();
    assert_eq!(&bytes[..head.len()], &head[..]);
    bytes[head.len()..].to_vec()
}

#[test]
fn commits_are_written_once_at_start_up_and_a_torn_one_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::open(dir.path()).unwrap();
    {
        let (wal, replayed) = open(dir.path(), &layout);
        assert_eq!(replayed, 0);
        // A small one (its commit alone), a streamed one (parts and a commit), and
        // one cut off (parts, no commit).
        log(&wal, 0, 1000);
        log(&wal, 1, 3 * PART_BYTES + 123);
        let mut cut = wal.stream();
        wal.append_part(&mut cut, &data(2, PART_BYTES)).unwrap();
        // Nothing is written into files until asked: a crash now.
        assert!(!file_of(&layout, 0).exists());
    }
    let (wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 2);
    assert_eq!(data_set_in(&layout, 0), data(0, 1000));
    assert_eq!(data_set_in(&layout, 1), data(1, 3 * PART_BYTES + 123));
    assert!(!layout.patient_dir("P2").exists(), "no commit, no file");
    // Checkpointed at start-up: nothing again.
    drop(wal);
    let (wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 0);
    // Two commits, the second torn (a byte of its payload changed on disk).
    log(&wal, 7, 500);
    let second = wal.state().head;
    log(&wal, 8, 500);
    drop(wal);
    tear(dir.path(), second);
    let (_wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 1, "the torn record and what follows are dropped");
    assert!(file_of(&layout, 7).exists());
    assert!(!file_of(&layout, 8).exists());
}

#[test]
fn a_consumed_instance_is_not_written_back_but_one_sent_again_after_is() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::open(dir.path()).unwrap();
    {
        let (wal, _) = open(dir.path(), &layout);
        let one = log(&wal, 1, 100);
        let two = log(&wal, 2, 2 * PART_BYTES);
        // Instance 3 twice: the second replaced the first in its group.
        log(&wal, 3, 500);
        let three = log(&wal, 3, 600);
        wal.place_group("P1").unwrap();
        wal.place_group("P2").unwrap();
        wal.consume(vec![one, two, three]).unwrap();
        fs::remove_dir_all(layout.patients()).unwrap();
        // Sent again after its group was processed: a new instance of the next group.
        log(&wal, 2, 2 * PART_BYTES);
    }
    let (_wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 1);
    assert!(!layout.patient_dir("P1").exists());
    assert!(
        !layout.patient_dir("P3").exists(),
        "nor the one it replaced"
    );
    assert_eq!(data_set_in(&layout, 2), data(2, 2 * PART_BYTES));
}

#[test]
fn records_an_earlier_run_left_beyond_a_torn_one_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::open(dir.path()).unwrap();
    let (wal, _) = open(dir.path(), &layout);
    log(&wal, 1, 300);
    let torn = wal.state().head;
    log(&wal, 2, 300);
    log(&wal, 3, 300);
    drop(wal);
    // Power lost: instance 2's record torn, instance 3's intact behind it.
    tear(dir.path(), torn);
    let (wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 1);
    fs::remove_dir_all(layout.patients()).unwrap();
    // This run's first record ends exactly where instance 3's begins; then a crash.
    assert_eq!(wal.state().head, torn);
    log(&wal, 4, 300);
    drop(wal);
    let (_wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 1, "instance 4 only, not the earlier run's 3");
    assert!(file_of(&layout, 4).exists());
    assert!(!file_of(&layout, 3).exists());
}

#[test]
fn a_full_ring_evicts_a_stalled_stream_which_then_logs_whole() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::open(dir.path()).unwrap();
    let (wal, _) = open(dir.path(), &layout);
    // A data set stalls after its first part.
    let stalled = data(9, 2 * PART_BYTES + 10);
    let mut stream = wal.stream();
    wal.append_part(&mut stream, &stalled[..PART_BYTES])
        .unwrap();
    // Others fill more than the ring meanwhile.
    for n in 0..60 {
        log(&wal, 100 + n, 100_000);
    }
    assert!(wal.state().open[&stream.id].evicted);
    wal.append_part(&mut stream, &stalled[PART_BYTES..2 * PART_BYTES])
        .unwrap();
    let commit = wal.commit(stream, &stalled, info(9)).unwrap();
    assert!(commit > SMALL.ring());
    // A crash: the replay writes it whole from its commit.
    drop(wal);
    std::fs::remove_dir_all(layout.patients()).ok();
    let (_wal, _) = open(dir.path(), &layout);
    assert_eq!(data_set_in(&layout, 9), stalled);
}

#[test]
fn a_group_is_written_on_demand_and_a_checkpoint_waits_for_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::open(dir.path()).unwrap();
    let (wal, _) = open(dir.path(), &layout);
    log(&wal, 1, 2 * PART_BYTES + 5);
    log(&wal, 2, 10);
    wal.place_group("P1").unwrap();
    assert_eq!(data_set_in(&layout, 1), data(1, 2 * PART_BYTES + 5));
    assert!(!file_of(&layout, 2).exists(), "another group's waits");
    // A stream still arriving holds the checkpoint before its first part.
    let mut open = wal.stream();
    wal.append_part(&mut open, &data(3, PART_BYTES)).unwrap();
    let first_part = wal.state().open[&open.id].first;
    log(&wal, 4, 10);
    wal.checkpoint().unwrap();
    assert!(
        file_of(&layout, 2).exists(),
        "a checkpoint writes every file"
    );
    assert!(file_of(&layout, 4).exists());
    assert_eq!(wal.state().checkpoint, first_part);
    let rest = data(3, PART_BYTES + 7);
    wal.commit(open, &rest, info(3)).unwrap();
    wal.checkpoint().unwrap();
    assert_eq!(data_set_in(&layout, 3), rest);
    assert!(!wal.pending());
}

#[test]
fn the_ring_wraps_after_checkpoints_and_concurrent_commits_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::open(dir.path()).unwrap();
    let (wal, _) = open(dir.path(), &layout);
    // More than the ring holds: checkpoints free it on the way.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for n in 0..40 {
                    log(&wal, t * 1000 + n, 100_000);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(wal.state().head > wal.geometry.ring());
    wal.checkpoint().unwrap();
    assert!(!wal.pending());
    assert_eq!(data_set_in(&layout, 3039), data(3039, 100_000));
}

#[test]
fn a_log_of_the_unrecorded_shape_is_replayed_then_reshaped() {
    let dir = tempfile::tempdir().unwrap();
    let layout = DiskLayout::open(dir.path()).unwrap();
    let wal_dir = dir.path().join("wal");
    fs::create_dir_all(&wal_dir).unwrap();
    // An earlier version's log: 4 segments of 16 MiB, a whole record at LSN 0.
    let old = Geometry::UNRECORDED;
    for n in 0..old.segments {
        let file = File::create(wal_dir.join(format!("segment-{n}"))).unwrap();
        file.set_len(old.segment_bytes).unwrap();
    }
    let whole = WholeRecord {
        key: "P9".into(),
        input_dirs: vec!["in-any".into()],
        file_name: "1.2.9.dcm".into(),
        bytes: b"a whole file".to_vec(),
    };
    let payload = postcard::to_allocvec(&whole).unwrap();
    let record = encode(Kind::Record, 0, 0, &[&payload]);
    OpenOptions::new()
        .write(true)
        .open(wal_dir.join("segment-0"))
        .unwrap()
        .write_all_at(&record, 0)
        .unwrap();
    let (wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 1);
    assert_eq!(fs::read(file_of(&layout, 9)).unwrap(), b"a whole file");
    assert_eq!(wal.geometry, SMALL);
    assert_eq!(
        fs::metadata(wal_dir.join("segment-0")).unwrap().len(),
        SMALL.segment_bytes
    );
    log(&wal, 10, 100);
    drop(wal);
    let (_wal, replayed) = open(dir.path(), &layout);
    assert_eq!(replayed, 1, "the new shape is read back");
}
