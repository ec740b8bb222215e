//! Sending results on: plus_one's DICOM output against real peers (DCMTK storescp,
//! Orthanc), its failure classes, the `dicomnode` tool and the demo.
//!
//! Peers that cannot be told to listen on 127.0.0.1 only run in a private network
//! namespace of the test's own thread (see `isolated_network`).

use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::input::value_of;
use dicomnode_server::pixels;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::DicomInstance;
use dicomnode_tests::pacs::{Orthanc, OrthancOptions};
use dicomnode_tests::{
    cli_exe, dcmtk, example_exe, free_port, isolated_network, run, NodeProcess, PeerProcess,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn plus_one(dest: &str, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["--port", "0", "--ae-title", "PLUS_ONE", "--dest", dest];
    args.extend_from_slice(extra);
    NodeProcess::start(&example_exe("plus_one"), &args)
}

fn storescp(dir: &Path) -> PeerProcess {
    let port = free_port();
    let mut command = dcmtk("storescp");
    // DCMTK's own default, stated: a peer that takes PDUs of at most 16 KiB.
    command
        .args(["-aet", "STORESCP", "--max-pdu", "16384", "-od"])
        .arg(dir)
        .arg(port.to_string());
    PeerProcess::start(command, port)
}

/// Sends `paths` to a node with DCMTK's storescu; asserts every instance was stored.
fn storescu_all(port: u16, aec: &str, paths: &[PathBuf]) {
    let mut command = dcmtk("storescu");
    command
        .args(["-aec", aec, "127.0.0.1", &port.to_string()])
        .args(paths);
    let (output, text) = run(command);
    assert!(output.status.success(), "storescu failed: {text}");
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files
}

fn text(obj: &DicomInstance, tag: dicomnode_server::dicom_core::Tag) -> String {
    value_of(obj, tag).unwrap_or_default()
}

#[test]
fn plus_one_sends_a_derived_series_to_storescp() {
    isolated_network();
    let received = tempfile::tempdir().unwrap();
    let scp = storescp(received.path());
    let mut node = plus_one(&format!("STORESCP@127.0.0.1:{}", scp.port), &[]);
    let input = tempfile::tempdir().unwrap();
    let series = SyntheticSeries::ct("PLUS-1", 4).size(128, 128);
    let paths = series.write_to(input.path()).unwrap();
    storescu_all(node.port, "PLUS_ONE", &paths);
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(
        line.contains("sent 4 instances to STORESCP@127.0.0.1"),
        "{line}"
    );

    let originals: HashMap<String, DicomInstance> = paths
        .iter()
        .map(|p| open_file(p).unwrap())
        .map(|o| (text(&o, tags::INSTANCE_NUMBER), o))
        .collect();
    let files = files_in(received.path());
    assert_eq!(files.len(), 4, "{files:?}");
    let mut series_uids = Vec::new();
    for path in &files {
        let (output, dump) = run({
            let mut c = dcmtk("dcmdump");
            c.arg(path);
            c
        });
        assert!(
            output.status.success(),
            "dcmdump cannot parse {}: {dump}",
            path.display()
        );
        let derived = open_file(path).unwrap();
        let original = &originals[&text(&derived, tags::INSTANCE_NUMBER)];
        assert_eq!(text(&derived, tags::PATIENT_ID), "PLUS-1");
        assert_eq!(text(&derived, tags::STUDY_INSTANCE_UID), series.study_uid);
        assert_ne!(text(&derived, tags::SERIES_INSTANCE_UID), series.series_uid);
        assert!(originals
            .values()
            .all(|o| text(o, tags::SOP_INSTANCE_UID) != text(&derived, tags::SOP_INSTANCE_UID)));
        assert_eq!(text(&derived, tags::IMAGE_TYPE), "DERIVED\\SECONDARY");
        let before = pixels::rescaled(original).unwrap();
        let after = pixels::rescaled(&derived).unwrap();
        assert_eq!(before.len(), after.len());
        assert!(
            before.iter().zip(&after).all(|(b, a)| *a == b + 1.0),
            "values +1 exactly"
        );
        series_uids.push(text(&derived, tags::SERIES_INSTANCE_UID));
    }
    series_uids.dedup();
    assert_eq!(series_uids.len(), 1, "one new series");
}

#[test]
fn a_destination_that_is_down_is_retried_then_reported_and_the_data_kept() {
    let closed = free_port();
    let mut node = plus_one(
        &format!("NOBODY@127.0.0.1:{closed}"),
        &["--send-attempts", "3", "--send-backoff", "0.05"],
    );
    let instances = SyntheticSeries::ct("DOWN-1", 2).size(16, 16);
    let input = tempfile::tempdir().unwrap();
    storescu_all(
        node.port,
        "PLUS_ONE",
        &instances.write_to(input.path()).unwrap(),
    );
    let line = node.wait_for_log("processing failed", WAIT);
    assert!(
        line.contains(&format!("export failed: sending to NOBODY@127.0.0.1:{closed} failed (transient) after 3 attempt(s)")),
        "{line}"
    );
    assert!(
        line.contains("instances=2"),
        "the patient's data is kept: {line}"
    );
    let log = node.log();
    assert_eq!(log.matches("sending failed").count(), 3, "{log}");
    assert!(
        log.contains("Connection refused") || log.contains("connection refused"),
        "{log}"
    );
}

#[test]
fn a_destination_that_rejects_the_association_is_not_retried() {
    let out = tempfile::tempdir().unwrap();
    let destination = NodeProcess::start(
        &example_exe("store_node"),
        &["--port", "0", "--out", out.path().to_str().unwrap()],
    );
    // The store node only answers to STORE_NODE.
    let mut node = plus_one(
        &format!("WRONG_TITLE@127.0.0.1:{}", destination.port),
        &["--send-attempts", "5", "--send-backoff", "0.05"],
    );
    let input = tempfile::tempdir().unwrap();
    let paths = SyntheticSeries::ct("REJECT-1", 2)
        .size(16, 16)
        .write_to(input.path())
        .unwrap();
    storescu_all(node.port, "PLUS_ONE", &paths);
    let line = node.wait_for_log("processing failed", WAIT);
    assert!(
        line.contains("failed (permanent) after 1 attempt(s)"),
        "{line}"
    );
    assert!(line.contains("instances=2"), "{line}");
    assert_eq!(node.log().matches("sending failed").count(), 1);
}

#[test]
fn orthanc_sends_a_study_to_plus_one_and_receives_the_derived_series() {
    isolated_network();
    // The node's port must be known to Orthanc's configuration: take one first.
    let node_port = free_port();
    let orthanc = Orthanc::start(OrthancOptions::new().modality(
        "plusone",
        "PLUS_ONE",
        "127.0.0.1",
        node_port,
    ));
    let port = node_port.to_string();
    let dest = format!("ORTHANC@127.0.0.1:{}", orthanc.dicom_port());
    let args = ["--port", &port, "--ae-title", "PLUS_ONE", "--dest", &dest];
    let mut node = NodeProcess::start(&example_exe("plus_one"), &args);

    let input = tempfile::tempdir().unwrap();
    let paths = SyntheticSeries::ct("ORTHANC-1", 5)
        .size(64, 64)
        .write_to(input.path())
        .unwrap();
    let mut study = String::new();
    for answer in orthanc.upload(&paths) {
        study = answer["ParentStudy"].as_str().unwrap().to_string();
    }
    // Orthanc sends the study to the node through its REST API.
    orthanc.post_json("/modalities/plusone/store", study.as_bytes());
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("sent 5 instances to ORTHANC@"), "{line}");

    let start = Instant::now();
    loop {
        let series = orthanc.get_json(&format!("/studies/{study}/series"));
        let derived: Vec<&serde_json::Value> = series
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["MainDicomTags"]["SeriesDescription"] == "PLUS ONE")
            .collect();
        if derived.len() == 1 && derived[0]["Instances"].as_array().unwrap().len() == 5 {
            assert_eq!(
                series.as_array().unwrap().len(),
                2,
                "source and derived series"
            );
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "derived series not in Orthanc: {series}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_dicomnode_tool_echoes_stores_and_reports_failures() {
    let out = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_test_node")),
        &["--port", "0", "--out", out.path().to_str().unwrap()],
    );
    let address = format!("TEST_NODE@127.0.0.1:{}", node.port);
    let (output, text) = run({
        let mut c = Command::new(cli_exe());
        c.args(["echo", &address]);
        c
    });
    assert!(output.status.success(), "{text}");
    assert!(text.contains("status 0x0000"), "{text}");

    // A folder with a sub-folder, one file without PatientID, and one file that is not DICOM.
    let input = tempfile::tempdir().unwrap();
    let paths = SyntheticSeries::ct("CLI-1", 3)
        .size(16, 16)
        .write_to(&input.path().join("sub"))
        .unwrap();
    let mut bad = open_file(&paths[0]).unwrap();
    bad.remove_element(tags::PATIENT_ID);
    bad.write_to_file(&paths[0]).unwrap();
    std::fs::write(input.path().join("notes.txt"), "not DICOM").unwrap();
    let (output, text) = run({
        let mut c = Command::new(cli_exe());
        c.args(["store", "--quiet", &address]).arg(input.path());
        c
    });
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("4 files"), "{text}");
    assert!(text.contains("2  success (0x0000)"), "{text}");
    assert!(text.contains("1  failure (0xa900)"), "{text}");
    assert!(text.contains("1  not sent"), "{text}");
    node.wait_for_log("processing finished", WAIT);
}

#[test]
fn the_demo_runs_end_to_end() {
    let (output, text) = run(Command::new(example_exe("demo")));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("received 100 derived instances"), "{text}");
    assert!(text.contains("checked: every pixel value +1"), "{text}");
    let out = text
        .lines()
        .find_map(|l| l.strip_prefix("output: "))
        .expect("the demo says where its files are");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn compressed_instances_go_decoded_to_a_peer_that_takes_only_native_ones() {
    use dicomnode_server::dispatch::StoreAssociation;
    isolated_network();
    let received = tempfile::tempdir().unwrap();
    // storescp by default accepts uncompressed transfer syntaxes only.
    let scp = storescp(received.path());
    let input = tempfile::tempdir().unwrap();
    let native = SyntheticSeries::ct("DECODED-1", 2)
        .size(32, 32)
        .write_to(input.path())
        .unwrap();
    let mut compressed = Vec::new();
    for (path, argv) in native.iter().zip([
        &["/usr/bin/dcmcjpeg", "+e1"][..],
        &["/usr/bin/gdcmconv", "--j2k"][..],
    ]) {
        let out = path.with_extension("compressed.dcm");
        let mut command = Command::new(argv[0]);
        command
            .env("TCP_NODELAY", "1")
            .args(&argv[1..])
            .arg(path)
            .arg(&out);
        let (status, text) = run(command);
        assert!(status.status.success(), "{text}");
        compressed.push(open_file(&out).unwrap());
    }
    let contexts: Vec<(String, String)> = compressed
        .iter()
        .map(|o| {
            (
                o.meta()
                    .media_storage_sop_class_uid()
                    .trim_end_matches('\0')
                    .to_string(),
                o.meta()
                    .transfer_syntax()
                    .trim_end_matches('\0')
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(contexts[0].1, "1.2.840.10008.1.2.4.70");
    assert_eq!(contexts[1].1, "1.2.840.10008.1.2.4.90");
    let address: dicomnode_server::Address =
        format!("STORESCP@127.0.0.1:{}", scp.port).parse().unwrap();
    let mut association = StoreAssociation::open(&address, "DICOMNODE", &contexts).unwrap();
    for instance in &compressed {
        assert_eq!(association.store(instance).unwrap(), 0x0000);
    }
    association.release().unwrap();
    let files = files_in(received.path());
    assert_eq!(files.len(), 2, "{files:?}");
    for path in files {
        let got = open_file(&path).unwrap();
        assert_eq!(
            got.meta().transfer_syntax().trim_end_matches('\0'),
            "1.2.840.10008.1.2.1"
        );
        let original = native
            .iter()
            .map(|p| open_file(p).unwrap())
            .find(|o| text(o, tags::SOP_INSTANCE_UID) == text(&got, tags::SOP_INSTANCE_UID))
            .expect("the same SOP instance");
        assert_eq!(
            pixels::stored(&got).unwrap(),
            pixels::stored(&original).unwrap()
        );
    }
}
