//! Grouping and completion as a user meets them, with the test node (a real node process,
//! real associations): one batch per study, a study complete when its CT and PET of one
//! frame of reference went quiet, the maximum wait (process, discard), and completion
//! state surviving a restart.

use dicomnode_server::dicom_core::{DataElement, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::input::value_of;
use dicomnode_server::synthetic::{Modality, SyntheticSeries};
use dicomnode_server::uid::meta_uids;
use dicomnode_server::DicomInstance;
use dicomnode_tests::{files_under, NodeProcess};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sends `instances` on one association, proposing each one's SOP class and syntax.
fn store_all(node: &NodeProcess, instances: &[DicomInstance]) -> Vec<u16> {
    let contexts: BTreeSet<(String, String)> = instances
        .iter()
        .map(|i| {
            let (class, _, ts) = meta_uids(i.meta());
            (class.to_string(), ts.to_string())
        })
        .collect();
    let contexts: Vec<(String, String)> = contexts.into_iter().collect();
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &contexts).unwrap();
    let statuses = instances
        .iter()
        .map(|i| association.store(i).unwrap())
        .collect();
    association.release().unwrap();
    statuses
}

fn test_node(out: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["--port", "0", "--out", out.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_test_node")), &args)
}

/// Each record the test node wrote: (group, SOP Instance UIDs).
fn runs(out: &Path) -> Vec<(String, BTreeSet<String>)> {
    let mut runs = Vec::new();
    for path in files_under(&out.join("runs")) {
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("end=") || text.contains("end=0\n") {
            continue;
        }
        let group = text
            .lines()
            .find_map(|l| l.strip_prefix("group="))
            .unwrap_or_default()
            .to_string();
        let uids = text
            .lines()
            .skip(3)
            .filter(|l| !l.is_empty() && !l.contains('='))
            .map(str::to_string)
            .collect();
        runs.push((group, uids));
    }
    runs.sort();
    runs
}

fn wait_runs(out: &Path, count: usize, timeout: Duration) -> Vec<(String, BTreeSet<String>)> {
    let start = Instant::now();
    loop {
        let found = runs(out);
        if found.len() >= count {
            return found;
        }
        assert!(start.elapsed() < timeout, "{} of {count} runs", found.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn uids(instances: &[DicomInstance]) -> BTreeSet<String> {
    instances
        .iter()
        .map(|i| value_of(i, tags::SOP_INSTANCE_UID).unwrap())
        .collect()
}

/// A PET/CT study of `patient`: a CT and a PET series of one frame of reference.
fn pet_ct(patient: &str) -> (Vec<DicomInstance>, Vec<DicomInstance>) {
    let ct = SyntheticSeries::ct(patient, 3).size(8, 8);
    let pet = ct.next_series(Modality::Pet, 2);
    let ct = ct.build().unwrap();
    let mut pet = pet.build().unwrap();
    let frame = value_of(&ct[0], tags::FRAME_OF_REFERENCE_UID).unwrap();
    for instance in &mut pet {
        instance.put(DataElement::new(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            frame.as_str(),
        ));
    }
    (ct, pet)
}

#[test]
fn a_second_study_of_a_patient_is_a_batch_of_its_own() {
    let out = tempfile::tempdir().unwrap();
    let node = test_node(out.path(), &["--group-by", "study"]);
    let first = SyntheticSeries::ct("G1", 2).size(8, 8).build().unwrap();
    let second = SyntheticSeries::mr("G1", 3).size(8, 8).build().unwrap();
    let mut both = first.clone();
    both.extend(second.iter().cloned());
    // One association, two studies.
    assert!(store_all(&node, &both).iter().all(|&s| s == 0));
    let found = wait_runs(out.path(), 2, Duration::from_secs(20));
    let mut expected = vec![
        (
            value_of(&first[0], tags::STUDY_INSTANCE_UID).unwrap(),
            uids(&first),
        ),
        (
            value_of(&second[0], tags::STUDY_INSTANCE_UID).unwrap(),
            uids(&second),
        ),
    ];
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn a_study_is_complete_when_its_ct_and_pet_of_one_frame_went_quiet() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &["--group-by", "study", "--ct-pt-quiet-ms", "1000"],
    );
    let (ct, pet) = pet_ct("F1");
    assert!(store_all(&node, &ct).iter().all(|&s| s == 0));
    // The CT alone does not complete the study, and the log says why it waits.
    let line = node.wait_for_log("waiting:", Duration::from_secs(5));
    assert!(line.contains("a series of each of"), "{line}");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(runs(out.path()).is_empty(), "processed with the CT alone");
    let sent = Instant::now();
    assert!(store_all(&node, &pet).iter().all(|&s| s == 0));
    let found = wait_runs(out.path(), 1, Duration::from_secs(20));
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "{waited:?}: before the PET was quiet"
    );
    let mut all = uids(&ct);
    all.extend(uids(&pet));
    assert_eq!(found[0].1, all);
}

#[test]
fn the_maximum_wait_processes_or_discards_an_incomplete_group() {
    // Process: a CT whose PET never comes is processed with what is there.
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &[
            "--ct-pt-quiet-ms",
            "300",
            "--max-wait-ms",
            "1500",
            "--max-wait-policy",
            "process",
        ],
    );
    let (ct, _) = pet_ct("W1");
    let sent = Instant::now();
    assert!(store_all(&node, &ct).iter().all(|&s| s == 0));
    let found = wait_runs(out.path(), 1, Duration::from_secs(20));
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    assert_eq!(found[0].1, uids(&ct));
    let line = node.wait_for_log("maximum wait reached", Duration::from_secs(5));
    assert!(line.contains("processing with what is there"), "{line}");
    drop(node);

    // Discard, with a data directory: removed, logged, not processed.
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    let mut node = test_node(
        out.path(),
        &[
            "--ct-pt-quiet-ms",
            "300",
            "--max-wait-ms",
            "1000",
            "--max-wait-policy",
            "discard",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let (ct, _) = pet_ct("W2");
    assert!(store_all(&node, &ct).iter().all(|&s| s == 0));
    let line = node.wait_for_log("maximum wait reached", Duration::from_secs(20));
    assert!(line.contains("discarded"), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(runs(out.path()).is_empty());
    let left: Vec<_> = files_under(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn series_completion_survives_a_restart() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    let args = [
        "--group-by",
        "study",
        "--ct-pt-quiet-ms",
        "500",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut node = test_node(out.path(), &args);
    let (ct, pet) = pet_ct("R1");
    assert!(store_all(&node, &ct).iter().all(|&s| s == 0));
    node.wait_for_log("waiting:", Duration::from_secs(5));
    kill(Pid::from_raw(node.pid() as i32), Signal::SIGKILL).unwrap();
    node.wait_for_exit(Duration::from_secs(10));
    drop(node);
    let mut node = test_node(out.path(), &args);
    node.wait_for_log("data directory restored", Duration::from_secs(10));
    assert!(store_all(&node, &pet).iter().all(|&s| s == 0));
    let found = wait_runs(out.path(), 1, Duration::from_secs(20));
    let mut all = uids(&ct);
    all.extend(uids(&pet));
    assert_eq!(
        found[0].1, all,
        "the CT from before the restart and the PET"
    );
}
