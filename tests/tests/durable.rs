//! Never lose an instance: durable storage, restart, failure policy, expiry, full disks.

use dicomnode_server::dicom_core::{DataElement, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::dimse::status;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::uid::trim_uid;
use dicomnode_tests::{
    cli_exe, ct_contexts, dcmtk, files_under, raw_ct_association, record_uids, run, store_pdu,
    NodeProcess,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

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

fn send(node: &NodeProcess, instances: &[dicomnode_server::DicomInstance]) -> Vec<u16> {
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts()).unwrap();
    let statuses = instances
        .iter()
        .map(|i| association.store(i).unwrap())
        .collect();
    association.release().unwrap();
    statuses
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
    // Kill the node while they send.
    let start = Instant::now();
    while files_under(&data.path().join("patients")).len() < 60 && start.elapsed() < WAIT {
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
        let mut current = None;
        for line in text.lines() {
            if let Some(file) = line.strip_prefix("I: Sending file: ") {
                current = Some(PathBuf::from(file));
            } else if line.contains("Received Store Response (Success)") {
                let file = current.take().expect("a response follows a file");
                let obj = open_file(&file).unwrap();
                acknowledged.insert(
                    trim_uid(
                        &obj.element(tags::SOP_INSTANCE_UID)
                            .unwrap()
                            .to_str()
                            .unwrap(),
                    )
                    .to_string(),
                );
            }
        }
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
    let deadline = Instant::now() + WAIT;
    loop {
        let processed = processed_uids(out.path());
        if acknowledged.is_subset(&processed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged instances were not processed; log:\n{}",
            acknowledged.difference(&processed).count(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
        assert_eq!(send(&node, &[instance]), vec![status::SUCCESS], "{key:?}");
    }
    // An empty key is no patient key: refused, not stored under some name.
    let mut empty = SyntheticSeries::ct("X", 1)
        .size(8, 8)
        .build()
        .unwrap()
        .remove(0);
    empty.put(DataElement::new(tags::PATIENT_ID, VR::LO, ""));
    assert_eq!(send(&node, &[empty]), vec![status::DATA_SET_DOES_NOT_MATCH]);
    node.wait_for_count("association ended", keys.len() + 1, WAIT);

    let root = data.path().canonicalize().unwrap();
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
    send(
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
    let mut node = test_node(
        out.path(),
        data.path(),
        &[
            "--attempts",
            "2",
            "--retry-backoff",
            "0.05",
            "--maintenance-secs",
            "0.2",
        ],
    );
    let instances = SyntheticSeries::ct("FAIL-Q", 2).size(8, 8).build().unwrap();
    send(&node, &instances);
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
        send(&node, &instances);
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
    send(
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
    send(&node, &first.build().unwrap());
    node.wait_for_log("child started", WAIT);
    let second = first.next_series(dicomnode_server::synthetic::Modality::Ct, 3);
    send(&node, &second.build().unwrap());
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

/// Starts the test node with its data directory on a 1 MiB tmpfs, in a mount namespace of
/// its own (the test reads the directory through /proc/<pid>/root).
fn node_on_small_disk(out: &Path, data: &Path, watermark: &str) -> NodeProcess {
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{data}' && exec '{exe}' --port 0 --out '{out}' --data-dir '{data}' --enough 1000 --disk-watermark {watermark}",
        data = data.display(),
        exe = env!("CARGO_BIN_EXE_test_node"),
        out = out.display(),
    );
    NodeProcess::start(
        Path::new("/usr/bin/unshare"),
        &["--mount", "sh", "-c", &script],
    )
}

#[test]
fn a_full_disk_answers_out_of_resources_and_the_node_keeps_serving() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = node_on_small_disk(out.path(), data.path(), "1.0");
    let big = SyntheticSeries::ct("FULL-1", 3)
        .size(512, 512)
        .build()
        .unwrap();
    let statuses = send(&node, &big);
    assert_eq!(statuses[0], status::SUCCESS);
    assert!(
        statuses[1..].contains(&status::OUT_OF_RESOURCES),
        "{statuses:x?}"
    );
    node.wait_for_log("No space left on device", WAIT);
    // Nothing half-written is left, and the node still answers.
    let seen = PathBuf::from(format!(
        "/proc/{}/root{}",
        node.pid(),
        data.path().display()
    ));
    assert!(
        files_under(&seen.join("tmp")).is_empty(),
        "{:?}",
        files_under(&seen.join("tmp"))
    );
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts()).unwrap();
    assert_eq!(association.echo().unwrap(), status::SUCCESS);
    let small = SyntheticSeries::ct("FULL-2", 1).size(8, 8).build().unwrap();
    assert_eq!(association.store(&small[0]).unwrap(), status::SUCCESS);
    association.release().unwrap();
}

#[test]
fn above_the_disk_watermark_associations_are_refused_transiently() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = node_on_small_disk(out.path(), data.path(), "0.3");
    let big = SyntheticSeries::ct("MARK-1", 1)
        .size(512, 512)
        .build()
        .unwrap();
    assert_eq!(send(&node, &big), vec![status::SUCCESS]);
    let refused = StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts());
    let error = refused.err().expect("the association is refused");
    assert_eq!(
        error.kind(),
        dicomnode_server::SendFailure::Transient,
        "{error}"
    );
    node.wait_for_log("association refused (transient)", WAIT);
}

#[test]
fn a_one_gib_instance_is_streamed_to_disk_not_held_in_memory() {
    use dicomnode_server::dicom_object::meta::FileMetaTableBuilder;
    use std::io::Write;

    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    // A 16384 x 32768 16-bit image: 1 GiB of (sparse, zero) pixel data.
    let mut header = SyntheticSeries::ct("HUGE-1", 1)
        .size(8, 8)
        .build()
        .unwrap()
        .remove(0);
    header.put(DataElement::new(
        tags::ROWS,
        VR::US,
        dicomnode_server::dicom_core::PrimitiveValue::from(16384u16),
    ));
    header.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        dicomnode_server::dicom_core::PrimitiveValue::from(32768u16),
    ));
    header.remove_element(tags::PIXEL_DATA);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.1")
        .media_storage_sop_class_uid(header.meta().media_storage_sop_class_uid())
        .media_storage_sop_instance_uid(header.meta().media_storage_sop_instance_uid())
        .build()
        .unwrap();
    let path = input.path().join("huge.dcm");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&[0u8; 128]).unwrap();
    file.write_all(b"DICM").unwrap();
    meta.write(&mut file).unwrap();
    header.write_dataset(&mut file).unwrap();
    const SIZE: u32 = 1 << 30;
    file.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0])
        .unwrap();
    file.write_all(&SIZE.to_le_bytes()).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len + u64::from(SIZE)).unwrap();
    drop(file);

    let mut node = test_node(out.path(), data.path(), &["--enough", "2"]);
    let (output, text) = run({
        let mut c = dcmtk("storescu");
        c.args([
            "-v",
            "-aec",
            "TEST_NODE",
            "127.0.0.1",
            &node.port.to_string(),
        ])
        .arg(&path);
        c
    });
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Received Store Response (Success)"), "{text}");
    node.wait_for_log("association ended", WAIT);
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!(
        "peak RSS of the node while receiving 1 GiB: {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib < 100 * 1024, "peak RSS {peak_kib} KiB");
    let stored: u64 = files_under(&data.path().join("patients"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(
        stored > u64::from(SIZE),
        "the instance is on disk ({stored} bytes)"
    );
}

#[test]
fn concurrent_first_instances_of_a_new_patient_are_all_stored() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &["--enough", "1000"]);
    let address = node.address("TEST_NODE");
    let series = SyntheticSeries::ct("TOGETHER", 8)
        .size(8, 8)
        .build()
        .unwrap();
    let threads: Vec<_> = series
        .chunks(2)
        .map(|chunk| {
            let (address, chunk) = (address.clone(), chunk.to_vec());
            std::thread::spawn(move || {
                let mut association =
                    StoreAssociation::open(&address, "SCU", &ct_contexts()).unwrap();
                let statuses: Vec<u16> = chunk
                    .iter()
                    .map(|i| association.store(i).unwrap())
                    .collect();
                association.release().unwrap();
                statuses
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), vec![status::SUCCESS; 2]);
    }
    node.wait_for_count("association ended", 4, WAIT);
    let stored = files_under(&data.path().join("patients"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .count();
    assert_eq!(stored, 8);
}

#[test]
fn a_data_set_cut_off_by_a_dropped_connection_leaves_no_file() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &[]);
    let instance = &SyntheticSeries::ct("CUT-1", 1)
        .size(64, 64)
        .build()
        .unwrap()[0];
    let mut dataset = Vec::new();
    instance.write_dataset(&mut dataset).unwrap();
    let mut raw = raw_ct_association(&node, "CUTTER");
    let uid = trim_uid(instance.meta().media_storage_sop_instance_uid()).to_string();
    dataset.truncate(dataset.len() / 2);
    raw.send(&store_pdu(1, &uid, dataset, false)).unwrap();
    // Wait until the node has the partial file, then drop the connection.
    let start = Instant::now();
    while files_under(&data.path().join("tmp")).is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "the partial data set never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(raw);
    node.wait_for_log("association ended: connection lost", WAIT);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        files_under(&data.path().join("tmp")).is_empty(),
        "the partial file is removed"
    );
    assert!(files_under(&data.path().join("patients")).is_empty());
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
        send(&node, std::slice::from_ref(instance));
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
        send(
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
    let mut node = test_node(
        out.path(),
        data.path(),
        &[
            "--attempts",
            "2",
            "--retry-backoff",
            "0.05",
            "--maintenance-secs",
            "0.2",
        ],
    );
    send(
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
