//! End-to-end tests: nodes run as real processes and are driven by DCMTK's tools and by
//! dicom-ul's client, on 127.0.0.1 and free ports.

use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::{open_file, DefaultDicomObject};
use dicomnode_server::dimse::status;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::synthetic::{Modality, SyntheticSeries};
use dicomnode_server::uid::trim_uid;
use dicomnode_tests::{
    ct_contexts, dcmtk, example_exe, field, raw_ct_association, run, store_pdu, NodeProcess,
    RichState,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn store_node(out: &Path) -> NodeProcess {
    NodeProcess::start(
        &example_exe("store_node"),
        &["--port", "0", "--out", out.to_str().expect("utf-8 path")],
    )
}

/// Runs DCMTK's storescu against 127.0.0.1:`port` with `options` and `files`.
fn storescu<I, S>(
    port: u16,
    aec: &str,
    options: &[&str],
    files: I,
) -> (std::process::Output, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = dcmtk("storescu");
    c.args(options)
        .args(["-aec", aec, "127.0.0.1", &port.to_string()])
        .args(files);
    run(c)
}

fn test_node(out: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["--port", "0", "--out", out.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_test_node")), &args)
}

/// The records `test_node` wrote for a patient: (pid, cwd, SOP Instance UIDs).
fn runs_of(out: &Path, patient: &str) -> Vec<(u32, PathBuf, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir(out.join("runs")) else {
        return Vec::new();
    };
    let mut runs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{patient}-")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("a readable record");
        let mut lines = text.lines();
        let pid = lines
            .next()
            .and_then(|l| l.strip_prefix("pid="))
            .and_then(|p| p.parse().ok());
        let cwd = lines
            .next()
            .and_then(|l| l.strip_prefix("cwd="))
            .map(PathBuf::from);
        let _count = lines.next();
        let uids = lines
            .filter(|l| !l.is_empty() && !l.contains('='))
            .map(str::to_string)
            .collect();
        runs.push((pid.expect("pid line"), cwd.expect("cwd line"), uids));
    }
    runs
}

fn sop_uid(obj: &DefaultDicomObject) -> String {
    trim_uid(
        &obj.element(tags::SOP_INSTANCE_UID)
            .expect("SOPInstanceUID")
            .to_str()
            .expect("text"),
    )
    .to_string()
}

#[test]
fn echoscu_gets_success() {
    let mut node = NodeProcess::start(
        &example_exe("store_node"),
        &["--port", "0", "--out", "/nonexistent-unused"],
    );
    let (output, text) = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "STORE_NODE", "127.0.0.1", &node.port.to_string()]);
        c
    });
    assert!(output.status.success(), "echoscu failed: {text}");
    node.wait_for_log("association ended: released", WAIT);
}

#[test]
fn wrong_called_ae_title_is_rejected_at_association() {
    let mut node = NodeProcess::start(
        &example_exe("store_node"),
        &["--port", "0", "--out", "/nonexistent-unused"],
    );
    let port = node.port.to_string();
    let (output, text) = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "SOMEONE_ELSE", "127.0.0.1", &port]);
        c
    });
    assert!(
        !output.status.success(),
        "echoscu should be rejected: {text}"
    );
    assert!(
        text.contains("Rejected"),
        "DCMTK should report a rejection: {text}"
    );
    node.wait_for_log("association rejected: called AE title is not ours", WAIT);
    // The node keeps serving.
    let (output, text) = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "STORE_NODE", "127.0.0.1", &port]);
        c
    });
    assert!(output.status.success(), "{text}");
}

#[test]
fn storescu_two_patients_two_series_processed_once_and_written_equal() {
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut sent = Vec::new();
    for patient in ["E2E-A", "E2E-B"] {
        let ct = SyntheticSeries::ct(patient, 3).size(128, 128);
        let mr = ct.next_series(Modality::Mr, 2);
        sent.extend(ct.write_to(&input.path().join(patient)).unwrap());
        sent.extend(mr.write_to(&input.path().join(patient)).unwrap());
    }
    let mut node = store_node(out.path());
    let (output, text) = storescu(node.port, "STORE_NODE", &["+sd", "+r"], [input.path()]);
    assert!(output.status.success(), "storescu failed: {text}");
    let finished = node.wait_for_count("processing finished", 2, WAIT);

    // Each patient processed exactly once, successfully.
    for patient in ["E2E-A", "E2E-B"] {
        let lines: Vec<_> = finished
            .iter()
            .filter(|l| l.contains(&format!("key={patient}")))
            .collect();
        assert_eq!(lines.len(), 1, "{patient} processed once: {finished:?}");
        assert!(
            lines[0].contains("outcome=success: wrote 5 files"),
            "{}",
            lines[0]
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = node.log();
    assert_eq!(log.matches("processing finished").count(), 2, "{log}");

    // The children were other processes, and their working directories are gone.
    let started: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("child started"))
        .collect();
    assert_eq!(started.len(), 2);
    for line in started {
        let pid: u32 = field(line, "pid").unwrap().parse().unwrap();
        let node_pid: u32 = field(line, "node_pid").unwrap().parse().unwrap();
        assert_eq!(node_pid, node.pid());
        assert_ne!(pid, node.pid(), "the child is another process");
    }
    let workdirs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("child working directory"))
        .map(|l| field(l, "workdir").unwrap())
        .collect();
    assert_eq!(workdirs.len(), 2);
    for dir in workdirs {
        assert!(!Path::new(dir).exists(), "{dir} should be removed");
    }

    // Every file arrived, equal element by element, pixel data byte-equal.
    for path in &sent {
        let original = open_file(path).unwrap();
        let written = FileOutputPath::of(out.path(), &original);
        let copy = open_file(&written).unwrap_or_else(|e| panic!("{}: {e}", written.display()));
        assert_eq!(
            copy.meta().transfer_syntax(),
            original.meta().transfer_syntax()
        );
        let a: Vec<_> = original.iter().collect();
        let b: Vec<_> = copy.iter().collect();
        assert_eq!(
            a.len(),
            b.len(),
            "same number of elements in {}",
            written.display()
        );
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.header(), y.header());
            assert_eq!(x.value(), y.value(), "element {} differs", x.header().tag);
        }
        assert_eq!(
            original
                .element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap(),
            copy.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap()
        );
        // DCMTK parses what the node wrote.
        let (output, text) = run({
            let mut c = dcmtk("dcmdump");
            c.arg(&written);
            c
        });
        assert!(output.status.success(), "dcmdump failed: {text}");
    }
}

#[test]
fn instance_without_patient_id_is_refused_and_the_rest_is_processed() {
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let series = SyntheticSeries::ct("NOPID-OK", 3).size(16, 16);
    let paths = series.write_to(input.path()).unwrap();
    // Make the second file lose its PatientID.
    let mut bad = open_file(&paths[1]).unwrap();
    let bad_uid = sop_uid(&bad);
    bad.remove_element(tags::PATIENT_ID);
    bad.write_to_file(&paths[1]).unwrap();

    let mut node = test_node(out.path(), &[]);
    let (_output, text) = storescu(node.port, "TEST_NODE", &["-v", "--no-halt"], &paths);
    assert!(
        text.contains("Received Store Response (Error: DataSetDoesNotMatchSOPClass)"),
        "storescu should see status A900: {text}"
    );
    assert_eq!(
        text.matches("Received Store Response (Success)").count(),
        2,
        "{text}"
    );
    node.wait_for_log("processing finished", WAIT);
    let runs = runs_of(out.path(), "NOPID-OK");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].2.len(), 2, "the two good instances were processed");
    assert!(!runs[0].2.contains(&bad_uid));
    assert!(node
        .log()
        .contains("no patient key: PatientID (0010,0020) is missing or empty"));
}

#[test]
fn two_live_associations_for_one_patient_lead_to_one_processing_of_all() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    let instances = SyntheticSeries::ct("SHARED", 4)
        .size(16, 16)
        .build()
        .unwrap();
    let contexts = vec![(
        trim_uid(instances[0].meta().media_storage_sop_class_uid()).to_string(),
        trim_uid(instances[0].meta().transfer_syntax()).to_string(),
    )];
    let address = node.address("TEST_NODE");
    let mut first = StoreAssociation::open(&address, "SCU_ONE", &contexts).unwrap();
    let mut second = StoreAssociation::open(&address, "SCU_TWO", &contexts).unwrap();
    for (i, instance) in instances.iter().enumerate() {
        let association = if i % 2 == 0 { &mut first } else { &mut second };
        assert_eq!(association.store(instance).unwrap(), status::SUCCESS);
    }
    // The second ends while the first is still adding to the patient: no processing yet.
    second.release().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        runs_of(out.path(), "SHARED").is_empty(),
        "processed too early"
    );
    first.release().unwrap();
    node.wait_for_log("processing finished", WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let runs = runs_of(out.path(), "SHARED");
    assert_eq!(runs.len(), 1, "processed exactly once");
    assert_eq!(runs[0].2.len(), 4, "the processing saw every instance");
}

#[test]
fn a_panicking_processor_leaves_the_node_serving() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    let address = node.address("TEST_NODE");
    for patient in ["PANIC-1", "AFTER-PANIC"] {
        let instances = SyntheticSeries::ct(patient, 1).size(8, 8).build().unwrap();
        let contexts = vec![(
            "1.2.840.10008.5.1.4.1.1.2".to_string(),
            "1.2.840.10008.1.2.1".to_string(),
        )];
        let mut association = StoreAssociation::open(&address, "SCU", &contexts).unwrap();
        assert_eq!(association.store(&instances[0]).unwrap(), status::SUCCESS);
        association.release().unwrap();
        if patient == "PANIC-1" {
            let line = node.wait_for_log("processing failed", WAIT);
            assert!(
                line.contains("processor panicked: deliberate panic for patient PANIC-1 at tests/src/bin/test_node.rs"),
                "{line}"
            );
        }
    }
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=AFTER-PANIC"), "{line}");
    // The panicking child's working directory was removed too.
    let runs = runs_of(out.path(), "PANIC-1");
    assert_eq!(runs.len(), 1);
    assert!(
        !runs[0].1.exists(),
        "{} should be removed",
        runs[0].1.display()
    );
    assert_ne!(runs[0].0, node.pid());
}

#[test]
fn an_error_from_process_is_a_failure_and_the_data_is_kept() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    let instances = SyntheticSeries::ct("FAIL-1", 2).size(8, 8).build().unwrap();
    let contexts = vec![(
        "1.2.840.10008.5.1.4.1.1.2".to_string(),
        "1.2.840.10008.1.2.1".to_string(),
    )];
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &contexts).unwrap();
    for instance in &instances {
        assert_eq!(association.store(instance).unwrap(), status::SUCCESS);
    }
    association.release().unwrap();
    let line = node.wait_for_log("processing failed", WAIT);
    assert!(
        line.contains("process returned an error: deliberate failure for patient FAIL-1"),
        "{line}"
    );
    assert!(line.contains("instances=2"), "{line}");
    assert!(!node.log().contains("processing finished"));
}

#[test]
fn pipeline_state_arrives_equal_in_the_child() {
    let out = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_roundtrip_node")),
        &[out.path().to_str().unwrap()],
    );
    let instances = SyntheticSeries::ct("ROUND", 1).size(8, 8).build().unwrap();
    let contexts = vec![(
        "1.2.840.10008.5.1.4.1.1.2".to_string(),
        "1.2.840.10008.1.2.1".to_string(),
    )];
    let mut association =
        StoreAssociation::open(&node.address("ROUNDTRIP"), "SCU", &contexts).unwrap();
    assert_eq!(association.store(&instances[0]).unwrap(), status::SUCCESS);
    association.release().unwrap();
    node.wait_for_log("processing finished", WAIT);
    let bytes = std::fs::read(out.path().join("ROUND.state")).unwrap();
    let received: RichState = postcard::from_bytes(&bytes).unwrap();
    let sent = RichState::sample();
    assert_eq!(received.model, sent.model);
    assert_eq!(received.thresholds, sent.thresholds);
    assert_eq!(received.labels, sent.labels);
    assert_eq!(received.note, sent.note);
    assert_eq!(received.seed, sent.seed);
    assert_eq!(received.model_path, sent.model_path);
    assert_eq!(received.destination, sent.destination);
}

#[test]
fn sixteen_associations_at_once_are_all_served() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    let address = node.address("TEST_NODE");
    // All sixteen are established before any sends or releases.
    let mut associations: Vec<StoreAssociation> = (0..16)
        .map(|i| StoreAssociation::open(&address, &format!("SCU{i}"), &ct_contexts()).unwrap())
        .collect();
    let threads: Vec<_> = associations
        .drain(..)
        .enumerate()
        .map(|(i, mut association)| {
            std::thread::spawn(move || {
                let patient = format!("MANY-{i:02}");
                for instance in SyntheticSeries::ct(&patient, 3)
                    .size(32, 32)
                    .build()
                    .unwrap()
                {
                    assert_eq!(association.store(&instance).unwrap(), status::SUCCESS);
                }
                association.release().unwrap();
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    node.wait_for_count("processing finished", 16, WAIT);
    for i in 0..16 {
        let runs = runs_of(out.path(), &format!("MANY-{i:02}"));
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].2.len(), 3);
    }
    assert!(node.log().contains("live=16"), "sixteen were live at once");
}

#[test]
fn datasets_split_over_many_small_pdus_arrive_whole() {
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let paths = SyntheticSeries::ct("SMALL-PDU", 3)
        .size(128, 128)
        .write_to(input.path())
        .unwrap();
    let mut node = store_node(out.path());
    // 32 KiB of pixel data per instance in PDUs of at most 4 KiB.
    let (output, text) = storescu(node.port, "STORE_NODE", &["--max-send-pdu", "4096"], &paths);
    assert!(output.status.success(), "{text}");
    node.wait_for_log("processing finished", WAIT);
    for path in &paths {
        let original = open_file(path).unwrap();
        let written = FileOutputPath::of(out.path(), &original);
        let copy = open_file(&written).unwrap();
        assert_eq!(
            original
                .element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap(),
            copy.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap()
        );
    }
}

/// Where `store_node` writes an instance.
struct FileOutputPath;

impl FileOutputPath {
    fn of(out: &Path, instance: &DefaultDicomObject) -> PathBuf {
        dicomnode_server::FileOutput::path_for(out, instance).unwrap()
    }
}

#[test]
fn encapsulated_transfer_syntaxes_are_kept_as_received() {
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let paths = SyntheticSeries::ct("ENCAPSULATED", 2)
        .size(64, 64)
        .write_to(input.path())
        .unwrap();
    // One RLE Lossless file and one JPEG Lossless file, made by DCMTK.
    let rle = input.path().join("rle.dcm");
    let jpeg = input.path().join("jpeg.dcm");
    let (o, t) = run({
        let mut c = dcmtk("dcmcrle");
        c.arg(&paths[0]).arg(&rle);
        c
    });
    assert!(o.status.success(), "{t}");
    let (o, t) = run({
        let mut c = dcmtk("dcmcjpeg");
        c.arg(&paths[1]).arg(&jpeg);
        c
    });
    assert!(o.status.success(), "{t}");
    let mut node = store_node(out.path());
    // One association each, proposing the file's own compressed transfer syntax.
    for (option, file) in [("-xr", &rle), ("-xs", &jpeg)] {
        let (output, text) = storescu(node.port, "STORE_NODE", &["-v", "-R", option], [file]);
        assert!(output.status.success(), "{text}");
        assert!(
            !text.contains("-> Little Endian"),
            "sent as compressed: {text}"
        );
        assert_eq!(
            text.matches("Received Store Response (Success)").count(),
            1,
            "{text}"
        );
    }
    node.wait_for_count("processing finished", 2, WAIT);
    for (path, ts) in [
        (&rle, "1.2.840.10008.1.2.5"),
        (&jpeg, "1.2.840.10008.1.2.4.70"),
    ] {
        let original = open_file(path).unwrap();
        assert_eq!(trim_uid(original.meta().transfer_syntax()), ts);
        let copy = open_file(FileOutputPath::of(out.path(), &original)).unwrap();
        assert_eq!(
            trim_uid(copy.meta().transfer_syntax()),
            ts,
            "not transcoded"
        );
        // The compressed fragments are byte-equal.
        let a = original
            .element(tags::PIXEL_DATA)
            .unwrap()
            .value()
            .fragments()
            .unwrap()
            .to_vec();
        let b = copy
            .element(tags::PIXEL_DATA)
            .unwrap()
            .value()
            .fragments()
            .unwrap()
            .to_vec();
        assert_eq!(a, b);
    }
}

#[test]
fn a_peer_dropping_mid_transfer_disturbs_nothing_else() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    let address = node.address("TEST_NODE");
    let instances = SyntheticSeries::ct("DROPPER", 3)
        .size(64, 64)
        .build()
        .unwrap();

    // A well-behaved association, live while the other one drops.
    let mut steady = StoreAssociation::open(&address, "STEADY", &ct_contexts()).unwrap();
    let steady_instances = SyntheticSeries::ct("STEADY", 2)
        .size(16, 16)
        .build()
        .unwrap();
    assert_eq!(steady.store(&steady_instances[0]).unwrap(), status::SUCCESS);

    // The dropper: two instances acknowledged, then half of a third, then gone.
    let mut dropper = StoreAssociation::open(&address, "DROPPER", &ct_contexts()).unwrap();
    assert_eq!(dropper.store(&instances[0]).unwrap(), status::SUCCESS);
    assert_eq!(dropper.store(&instances[1]).unwrap(), status::SUCCESS);
    drop(dropper);
    let mut raw = raw_ct_association(&node, "DROPPER");
    let sop = sop_uid(&instances[2]);
    let mut dataset = Vec::new();
    instances[2].write_dataset(&mut dataset).unwrap();
    dataset.truncate(dataset.len() / 2);
    raw.send(&store_pdu(1, &sop, dataset, false)).unwrap();
    drop(raw);

    node.wait_for_count("association ended: connection lost", 2, WAIT);
    // The acknowledged instances are processed; the half-sent one is not among them.
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=DROPPER"), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    let runs = runs_of(out.path(), "DROPPER");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].2.len(), 2);
    assert!(!runs[0].2.contains(&sop));
    // The steady association goes on as if nothing happened.
    assert_eq!(steady.store(&steady_instances[1]).unwrap(), status::SUCCESS);
    steady.release().unwrap();
    node.wait_for_count("processing finished", 2, WAIT);
    assert_eq!(runs_of(out.path(), "STEADY")[0].2.len(), 2);
}

#[test]
fn an_unparseable_data_set_gets_c000_and_the_association_goes_on() {
    use dicomnode_server::dicom_ul::Pdu;
    use dicomnode_server::dimse::Command;

    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    let mut raw = raw_ct_association(&node, "GARBAGE");
    let store = |raw: &mut dicomnode_server::dicom_ul::ClientAssociation<_>,
                 id: u16,
                 sop: &str,
                 data: Vec<u8>| {
        raw.send(&store_pdu(id, sop, data, true)).unwrap();
        match raw.receive().unwrap() {
            Pdu::PData { data } => Command::decode(&data[0].data).unwrap().status.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    // An element header announcing far more bytes than follow.
    let garbage = vec![0x08, 0x00, 0x18, 0x00, b'U', b'I', 0xff, 0x7f, b'1', b'.'];
    assert_eq!(
        store(&mut raw, 1, "1.2.3.4", garbage),
        status::CANNOT_UNDERSTAND
    );
    let good = &SyntheticSeries::ct("AFTER-GARBAGE", 1)
        .size(8, 8)
        .build()
        .unwrap()[0];
    let mut bytes = Vec::new();
    good.write_dataset(&mut bytes).unwrap();
    assert_eq!(store(&mut raw, 2, &sop_uid(good), bytes), status::SUCCESS);
    raw.release().unwrap();
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=AFTER-GARBAGE"), "{line}");
    assert!(node
        .log()
        .contains("C-STORE refused: cannot parse the data set"));
}

/// Sends one small CT instance for `patient` to the node and releases.
fn send_one(node: &NodeProcess, patient: &str) {
    let instance = &SyntheticSeries::ct(patient, 1).size(8, 8).build().unwrap()[0];
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts()).unwrap();
    assert_eq!(association.store(instance).unwrap(), status::SUCCESS);
    association.release().unwrap();
}

#[test]
fn a_child_printing_megabytes_does_not_block() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    send_one(&node, "LOUD-1");
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(
        line.contains("key=LOUD-1") && line.contains("outcome=success"),
        "{line}"
    );
    let log = node.log();
    // Logged up to its budget, and the rest counted in one line (see supervise.rs for
    // the bound on the log's size).
    assert!(
        log.contains(" 0 xxxx"),
        "the child's first lines are logged"
    );
    assert!(log.contains("stream=\"stderr\""));
    assert!(log.contains("went over its budget"), "{log}");
}

#[test]
fn an_aborting_child_is_reported_with_its_signal_and_the_node_serves_on() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    send_one(&node, "ABORT-1");
    let line = node.wait_for_log("processing failed", WAIT);
    assert!(line.contains("child killed by signal 6"), "{line}");
    send_one(&node, "AFTER-ABORT");
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=AFTER-ABORT"), "{line}");
    // The aborted child could not clean up; the node removed its job directory.
    let runs = runs_of(out.path(), "ABORT-1");
    assert_eq!(runs.len(), 1);
    let workdir = &runs[0].1;
    assert!(!workdir.exists(), "{} should be removed", workdir.display());
}

#[test]
fn an_unreadable_command_aborts_the_association_and_the_node_serves_on() {
    use dicomnode_server::dicom_ul::pdu::{PDataValue, PDataValueType};
    use dicomnode_server::dicom_ul::Pdu;
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &[]);
    let mut raw = raw_ct_association(&node, "GIBBERISH");
    raw.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: true,
            data: vec![0xff; 12],
        }],
    })
    .unwrap();
    match raw.receive() {
        Ok(Pdu::AbortRQ { .. }) => {}
        other => panic!("expected an A-ABORT, got {other:?}"),
    }
    node.wait_for_log("aborted by the node: unreadable command", WAIT);
    send_one(&node, "AFTER-GIBBERISH");
    node.wait_for_log("processing finished", WAIT);
}

#[test]
fn only_allowed_calling_ae_titles_may_associate() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &["--allow-calling", "MODALITY1", "--allow-calling", "PACS"],
    );
    let port = node.port.to_string();
    let echo = |calling: &str| {
        let mut c = dcmtk("echoscu");
        c.args(["-aet", calling, "-aec", "TEST_NODE", "127.0.0.1", &port]);
        run(c)
    };
    let (output, text) = echo("STRANGER");
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("Rejected"), "{text}");
    node.wait_for_log("calling AE title is not on the allow list", WAIT);
    let (output, text) = echo("PACS");
    assert!(output.status.success(), "{text}");
}

#[test]
fn an_instance_larger_than_memory_allows_gets_out_of_resources() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &["--max-instance-mb", "1"]);
    let small = &SyntheticSeries::ct("BIG-1", 1)
        .size(512, 512)
        .build()
        .unwrap()[0];
    let big = &SyntheticSeries::ct("BIG-1", 1)
        .size(1024, 1024)
        .build()
        .unwrap()[0];
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts()).unwrap();
    assert_eq!(association.store(big).unwrap(), status::OUT_OF_RESOURCES);
    assert_eq!(association.store(small).unwrap(), status::SUCCESS);
    association.release().unwrap();
    node.wait_for_log("larger than the 1 MiB an instance may take in memory", WAIT);
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=BIG-1"), "{line}");
}
