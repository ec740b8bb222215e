//! Never lose an instance: durable storage, restart, failure policy, expiry, full disks.

use dicomnode_server::dicom_core::{DataElement, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dimse::status;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::{
    bytes_written, cli_exe, dcmtk, files_under, record_uids, run, store_all,
    wait_for_instance_files, NodeProcess,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Two attempts, 50 ms apart; maintenance (requeue adoption) every 200 ms.
const QUICK_RETRIES: [&str; 6] = [
    "--attempts",
    "2",
    "--retry-backoff",
    "0.05",
    "--maintenance-secs",
    "0.2",
];

fn test_node(out: &Path, data: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec![
        "--port",
        "0",
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_test_node")), &args)
}

/// Every SOP Instance UID the test node's children processed (over all its runs).
fn processed_uids(out: &Path) -> HashSet<String> {
    let mut uids = HashSet::new();
    for entry in std::fs::read_dir(out.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        uids.extend(record_uids(&text));
    }
    uids
}

/// Where each processing's batch came from (the `origin=` line of each run record).
fn origins(out: &Path) -> Vec<String> {
    let mut origins = Vec::new();
    for entry in std::fs::read_dir(out.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        origins.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("origin="))
                .map(str::to_string),
        );
    }
    origins
}

#[test]
fn sigkill_during_transfers_loses_no_acknowledged_instance() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let mut batches = Vec::new();
    for p in 0..4 {
        let dir = input.path().join(format!("p{p}"));
        SyntheticSeries::ct(&format!("CRASH-{p}"), 50)
            .size(256, 256)
            .write_to(&dir)
            .unwrap();
        batches.push(dir);
    }
    let node = test_node(out.path(), data.path(), &["--enough", "50"]);
    let port = node.port.to_string();
    let before = bytes_written(node.pid());
    // Four storescu at once, one association each.
    let senders: Vec<_> = batches
        .iter()
        .map(|dir| {
            let mut c = dcmtk("storescu");
            c.args(["-v", "-aec", "TEST_NODE", "+sd", "127.0.0.1", &port])
                .arg(dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    // Kill the node while they send: once it has written about 60 of the 200 instances
    // (128 KiB each), to its log or to files.
    let start = Instant::now();
    while bytes_written(node.pid()) - before < 60 * 128 * 1024 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(2));
    }
    let node_pid = node.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(node);

    // What each storescu saw acknowledged.
    let mut acknowledged = HashSet::new();
    for sender in senders {
        let output = sender.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        acknowledged.extend(dicomnode_tests::storescu_acknowledged(&text));
    }
    assert!(!acknowledged.is_empty(), "some instances were acknowledged");
    assert!(
        acknowledged.len() < 200,
        "the kill came before the end ({} acknowledged)",
        acknowledged.len()
    );

    // Restart on the same data directory: complete patients are processed at once; the
    // others wait, still stored. Make every patient complete enough to be processed.
    let mut node = test_node(out.path(), data.path(), &["--enough", "1"]);
    let restored = node.wait_for_log("data directory restored", WAIT);
    assert!(
        dicomnode_tests::field(&restored, "temp_files_removed").is_some(),
        "{restored}"
    );
    dicomnode_tests::wait_until_processed(
        &node,
        &acknowledged,
        || processed_uids(out.path()),
        WAIT,
    );
    assert!(
        files_under(&data.path().join("tmp")).is_empty(),
        "no temporary file is left"
    );
}

#[test]
fn hostile_patient_ids_stay_inside_the_data_directory_and_distinct() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &["--enough", "1000"]);
    let long = "Ä".repeat(300);
    let keys = [
        "../../etc",
        "/",
        "..",
        "a\0b",
        "line\nbreak\u{7}",
        long.as_str(),
        "患者",
        "PAT 1",
        "PAT_1",
    ];
    for key in keys {
        let mut instance = SyntheticSeries::ct("X", 1)
            .size(8, 8)
            .build()
            .unwrap()
            .remove(0);
        instance.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            "ISO_IR 192",
        ));
        instance.put(DataElement::new(tags::PATIENT_ID, VR::LO, key));
        assert_eq!(
            store_all(&node, &[instance]),
            vec![status::SUCCESS],
            "{key:?}"
        );
    }
    // An empty key is no patient key: refused, not stored under some name.
    let mut empty = SyntheticSeries::ct("X", 1)
        .size(8, 8)
        .build()
        .unwrap()
        .remove(0);
    empty.put(DataElement::new(tags::PATIENT_ID, VR::LO, ""));
    assert_eq!(
        store_all(&node, &[empty]),
        vec![status::DATA_SET_DOES_NOT_MATCH]
    );
    node.wait_for_count("association ended", keys.len() + 1, WAIT);

    let root = data.path().canonicalize().unwrap();
    wait_for_instance_files(&root.join("patients"), keys.len(), WAIT);
    let patients: Vec<PathBuf> = std::fs::read_dir(root.join("patients"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        patients.len(),
        keys.len(),
        "one distinct directory per key: {patients:?}"
    );
    let mut recorded = HashSet::new();
    for dir in &patients {
        let key = std::fs::read(dir.join("key")).unwrap();
        recorded.insert(String::from_utf8(key).unwrap());
    }
    let wanted: HashSet<String> = keys.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        recorded, wanted,
        "each original key is recorded beside its data"
    );
    for file in files_under(&root) {
        assert!(
            file.canonicalize().unwrap().starts_with(&root),
            "{}",
            file.display()
        );
    }
    // Nothing escaped: no file was created next to the data directory.
    let parent = root.parent().unwrap();
    assert!(!parent.join("etc").exists());
}

#[test]
fn a_flaky_processor_is_retried_then_its_data_deleted() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        data.path(),
        &["--attempts", "3", "--retry-backoff", "0.1"],
    );
    store_all(
        &node,
        &SyntheticSeries::ct("FLAKY-1", 2)
            .size(8, 8)
            .build()
            .unwrap(),
    );
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("attempt=3"), "{line}");
    assert_eq!(node.log().matches("processing failed").count(), 2);
    assert!(files_under(&data.path().join("processing")).is_empty());
    assert!(files_under(&data.path().join("patients")).is_empty());
    assert!(files_under(&data.path().join("quarantine")).is_empty());
}

#[test]
fn a_failing_processor_is_quarantined_and_requeue_brings_it_back() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &QUICK_RETRIES);
    let instances = SyntheticSeries::ct("FAIL-Q", 2).size(8, 8).build().unwrap();
    store_all(&node, &instances);
    node.wait_for_log("the patient is quarantined", WAIT);
    let quarantined = files_under(&data.path().join("quarantine"));
    assert_eq!(
        quarantined
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .count(),
        2,
        "{quarantined:?}"
    );
    let failures = quarantined
        .iter()
        .find(|p| p.ends_with("failures.log"))
        .unwrap();
    let record = std::fs::read_to_string(failures).unwrap();
    assert!(record.contains("attempt 1 of 2 failed"), "{record}");
    assert!(record.contains("attempt 2 of 2 failed"), "{record}");
    assert!(
        record.contains("deliberate failure for patient FAIL-Q"),
        "{record}"
    );

    let (output, text) = run({
        let mut c = Command::new(cli_exe());
        c.args(["quarantine", "--data-dir"]).arg(data.path());
        c
    });
    assert!(
        output.status.success() && text.contains("\"FAIL-Q\": 2 files"),
        "{text}"
    );

    // The cause is fixed; a person puts the patient back.
    std::fs::write(out.path().join("heal"), "").unwrap();
    let (output, text) = run({
        let mut c = Command::new(cli_exe());
        c.args(["requeue", "--data-dir"])
            .arg(data.path())
            .arg("FAIL-Q");
        c
    });
    assert!(output.status.success(), "{text}");
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=FAIL-Q"), "{line}");
    assert!(files_under(&data.path().join("quarantine")).is_empty());
    let handed = node.wait_for_count("patient has enough", 2, WAIT);
    assert!(
        handed[0].contains("cause=association ended") && handed[1].contains("cause=requeued"),
        "{handed:#?}"
    );
    assert!(
        origins(out.path()).iter().any(|o| o == "requeued"),
        "{:?}",
        origins(out.path())
    );
}

#[test]
fn a_complete_patient_left_on_disk_is_processed_at_start_up() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let instances = SyntheticSeries::ct("LEFT-1", 3).size(8, 8).build().unwrap();
    {
        let mut node = test_node(out.path(), data.path(), &["--enough", "4"]);
        store_all(&node, &instances);
        node.wait_for_log("association ended", WAIT);
    }
    assert!(processed_uids(out.path()).is_empty());
    let mut node = test_node(out.path(), data.path(), &["--enough", "3"]);
    let line = node.wait_for_log("data directory restored", WAIT);
    assert!(
        line.contains("ready=1") && line.contains("instances=3"),
        "{line}"
    );
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=LEFT-1"), "{line}");
    assert_eq!(processed_uids(out.path()).len(), 3);
    let line = node.wait_for_log("patient has enough", WAIT);
    assert!(line.contains("cause=restored"), "{line}");
    assert_eq!(origins(out.path()), ["restored from the data directory"]);
}

#[test]
fn a_patient_that_never_gets_enough_expires() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // Expiry after about 0.5 s, looked at every 0.1 s.
    let mut node = test_node(
        out.path(),
        data.path(),
        &[
            "--enough",
            "10",
            "--expiry-days",
            "0.000006",
            "--maintenance-secs",
            "0.1",
            "--expiry-action",
            "quarantine",
        ],
    );
    store_all(
        &node,
        &SyntheticSeries::ct("STALE-1", 2)
            .size(8, 8)
            .build()
            .unwrap(),
    );
    let line = node.wait_for_log("patient expired without enough instances", WAIT);
    assert!(
        line.contains("key=STALE-1") || line.contains("patient=STALE-1"),
        "{line}"
    );
    assert!(files_under(&data.path().join("patients")).is_empty());
    assert_eq!(
        files_under(&data.path().join("quarantine"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .count(),
        2
    );
}

#[test]
fn instances_arriving_during_processing_wait_for_the_next_batch() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &[]);
    // SLOW-: the test node sleeps in process (see test_node), so the second batch arrives while the first runs.
    let first = SyntheticSeries::ct("SLOW-1", 2).size(8, 8);
    store_all(&node, &first.build().unwrap());
    node.wait_for_log("child started", WAIT);
    let second = first.next_series(dicomnode_server::synthetic::Modality::Ct, 3);
    store_all(&node, &second.build().unwrap());
    let lines = node.wait_for_count("processing finished", 2, WAIT);
    assert_eq!(lines.len(), 2);
    let mut counts: Vec<usize> = std::fs::read_dir(out.path().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| record_uids(&std::fs::read_to_string(e.path()).unwrap()).len())
        .collect();
    counts.sort();
    assert_eq!(counts, vec![2, 3], "two batches, not mixed");
}

#[test]
fn a_quiet_period_gathers_instances_sent_one_association_each() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &["--quiet-secs", "2"]);
    // Enough is "at least 1": without a quiet period each association would start its
    // own processing.
    let series = SyntheticSeries::ct("QUIET-1", 4)
        .size(8, 8)
        .build()
        .unwrap();
    for instance in &series {
        store_all(&node, std::slice::from_ref(instance));
    }
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=QUIET-1"), "{line}");
    let line = node.wait_for_log("patient has enough", WAIT);
    assert!(line.contains("cause=quiet period"), "{line}");
    let origin = origins(out.path());
    assert!(
        origin.len() == 1 && origin[0].starts_with("association from SCU at 127.0.0.1:"),
        "{origin:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(node.log().matches("processing finished").count(), 1);
    assert_eq!(
        processed_uids(out.path()).len(),
        4,
        "one processing saw all four"
    );
}

#[test]
fn failed_attempts_count_across_a_restart() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let args = ["--attempts", "2", "--retry-backoff", "600"];
    {
        let mut node = test_node(out.path(), data.path(), &args);
        store_all(
            &node,
            &SyntheticSeries::ct("FAIL-R", 1).size(8, 8).build().unwrap(),
        );
        node.wait_for_log("processing will be retried", WAIT);
        // The node dies (dropped: killed) while the retry waits.
    }
    let mut node = test_node(out.path(), data.path(), &args);
    let line = node.wait_for_log("processing failed", WAIT);
    assert!(
        line.contains("attempt=2"),
        "the second attempt, not a first again: {line}"
    );
    node.wait_for_log("the patient is quarantined", WAIT);
}

#[test]
fn a_requeued_patient_gets_every_attempt_again() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &QUICK_RETRIES);
    store_all(
        &node,
        &SyntheticSeries::ct("FAIL-AGAIN", 1)
            .size(8, 8)
            .build()
            .unwrap(),
    );
    node.wait_for_log("the patient is quarantined", WAIT);
    let (output, text) = run({
        let mut c = Command::new(cli_exe());
        c.args(["requeue", "--data-dir"]).arg(data.path());
        c
    });
    assert!(output.status.success(), "{text}");
    let quarantined = node.wait_for_count("the patient is quarantined", 2, WAIT);
    assert_eq!(quarantined.len(), 2);
    let failed: Vec<String> = node
        .log()
        .lines()
        .filter(|l| l.contains("processing failed"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        failed.len(),
        4,
        "two attempts before and two after the requeue: {failed:#?}"
    );
    assert!(failed[2].contains("attempt=1") && failed[3].contains("attempt=2"));
    // The records of the first round are kept as history.
    let history = files_under(&data.path().join("quarantine"))
        .into_iter()
        .find(|p| p.ends_with("history.log"))
        .expect("a history of the first round");
    assert!(std::fs::read_to_string(history)
        .unwrap()
        .contains("attempt 2 of 2 failed"));
}
