//! De-identification as users run it: the `dicomnode deidentify`/`reidentify` commands on
//! folders, and a node that de-identifies each patient before sending to DCMTK's storescp.

use dicomnode_server::dicom_core::{DataElement, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::input::value_of;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::DicomInstance;
use dicomnode_tests::{
    cli_exe, dcmtk, example_exe, free_port, isolated_network, run, NodeProcess, PeerProcess,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn text(
    obj: &dicomnode_server::dicom_object::InMemDicomObject,
    tag: dicomnode_server::dicom_core::Tag,
) -> String {
    value_of(obj, tag).unwrap_or_default()
}

/// A patient's CT series with a recognisable name, accession number and a reference to
/// its first slice, written to `dir`; one slice says BurnedInAnnotation YES.
fn patient(dir: &Path, id: &str, slices: u32) -> Vec<PathBuf> {
    let mut instances = SyntheticSeries::ct(id, slices).size(8, 8).build().unwrap();
    let first = text(&instances[0], tags::SOP_INSTANCE_UID);
    for (k, obj) in instances.iter_mut().enumerate() {
        obj.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            "Smithers^Waylon",
        ));
        obj.put(DataElement::new(
            tags::ACCESSION_NUMBER,
            VR::SH,
            "ACC778899",
        ));
        obj.put(DataElement::new(
            tags::INSTITUTION_NAME,
            VR::LO,
            "Springfield General",
        ));
        if k > 0 {
            let item = dicomnode_server::dicom_object::InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    "1.2.840.10008.5.1.4.1.1.2",
                ),
                DataElement::new(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, first.as_str()),
            ]);
            obj.put(DataElement::new(
                tags::REFERENCED_IMAGE_SEQUENCE,
                VR::SQ,
                dicomnode_server::dicom_core::value::DataSetSequence::from(vec![item]),
            ));
        }
        if k == 1 {
            obj.put(DataElement::new(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    instances
        .iter()
        .enumerate()
        .map(|(k, obj)| {
            let path = dir.join(format!("{id}-{k}.dcm"));
            obj.write_to_file(&path).unwrap();
            path
        })
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walk(dir);
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// No byte of the identities is left in any file.
fn assert_no_identity(paths: &[PathBuf]) {
    for path in paths {
        let bytes = std::fs::read(path).unwrap();
        for secret in [
            "Smithers",
            "Waylon",
            "ACC778899",
            "Springfield",
            "DEID-P1",
            "DEID-P2",
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} still holds {secret}",
                path.display()
            );
        }
    }
}

/// Checks that de-identified instances are consistent: a new study UID for each original
/// one, references follow their instances.
fn assert_consistent(originals: &[PathBuf], deidentified: &[PathBuf]) {
    let before: Vec<DicomInstance> = originals.iter().map(|p| open_file(p).unwrap()).collect();
    let after: Vec<DicomInstance> = deidentified.iter().map(|p| open_file(p).unwrap()).collect();
    assert_eq!(before.len(), after.len());
    let studies: BTreeSet<String> = after
        .iter()
        .map(|o| text(o, tags::STUDY_INSTANCE_UID))
        .collect();
    let original_studies: BTreeSet<String> = before
        .iter()
        .map(|o| text(o, tags::STUDY_INSTANCE_UID))
        .collect();
    assert_eq!(studies.len(), original_studies.len());
    assert!(studies.is_disjoint(&original_studies));
    let sops: BTreeSet<String> = after
        .iter()
        .map(|o| text(o, tags::SOP_INSTANCE_UID))
        .collect();
    for obj in &after {
        assert_eq!(text(obj, tags::PATIENT_IDENTITY_REMOVED), "YES");
        if let Some(items) = obj
            .get(tags::REFERENCED_IMAGE_SEQUENCE)
            .and_then(|e| e.items())
        {
            let referenced = text(&items[0], tags::REFERENCED_SOP_INSTANCE_UID);
            assert!(
                sops.contains(&referenced),
                "a reference that follows its instance"
            );
        }
    }
}

#[test]
fn the_cli_deidentifies_folders_and_reidentifies_them_with_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let mut originals = patient(&input.join("a"), "DEID-P1", 3);
    originals.extend(patient(&input.join("b"), "DEID-P2", 2));
    let out = dir.path().join("out");
    let mapping = dir.path().join("mapping.jsonl");
    let mut command = Command::new(cli_exe());
    command
        .args([
            "deidentify",
            "--quiet",
            "--retain",
            "retain-long-modified-dates",
            "--mapping",
        ])
        .arg(&mapping)
        .args(["--pseudonym", "DEID-P1=SUBJECT-001"])
        .arg(&input)
        .arg(&out);
    let (status, output) = run(command);
    assert!(status.status.success(), "{output}");
    assert!(output.contains("5 de-identified"), "{output}");
    assert_eq!(
        output.matches("BurnedInAnnotation YES").count(),
        2,
        "{output}"
    );
    let written = files(&out);
    assert_eq!(written.len(), 5);
    for path in &written {
        // Named by the new UIDs: the input's names (here the PatientID) do not travel.
        let obj = open_file(path).unwrap();
        let want = out
            .join(text(&obj, tags::STUDY_INSTANCE_UID))
            .join(text(&obj, tags::SERIES_INSTANCE_UID))
            .join(format!("{}.dcm", text(&obj, tags::SOP_INSTANCE_UID)));
        assert_eq!(path, &want);
    }
    assert_no_identity(&written);
    assert_consistent(&originals, &written);
    for path in &written {
        let (status, dump) = run({
            let mut c = dcmtk("dcmdump");
            c.arg(path);
            c
        });
        assert!(
            status.status.success(),
            "DCMTK reads {}: {dump}",
            path.display()
        );
    }
    let first = written
        .iter()
        .map(|p| open_file(p).unwrap())
        .find(|o| text(o, tags::PATIENT_ID) == "SUBJECT-001")
        .expect("the chosen pseudonym");
    assert_eq!(text(&first, tags::PATIENT_ID), "SUBJECT-001");
    assert_eq!(
        text(&first, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED),
        "MODIFIED"
    );
    assert_ne!(text(&first, tags::STUDY_DATE), "20260101");
    assert_eq!(text(&first, tags::STUDY_DATE).len(), 8);

    let back = dir.path().join("back");
    let mut command = Command::new(cli_exe());
    command
        .args(["reidentify", "--quiet", "--mapping"])
        .arg(&mapping)
        .arg(&out)
        .arg(&back);
    let (status, output) = run(command);
    assert!(status.status.success(), "{output}");
    let restored_files: Vec<DicomInstance> =
        files(&back).iter().map(|p| open_file(p).unwrap()).collect();
    assert_eq!(restored_files.len(), originals.len());
    for original in &originals {
        let original = open_file(original).unwrap();
        let restored = restored_files
            .iter()
            .find(|r| text(r, tags::SOP_INSTANCE_UID) == text(&original, tags::SOP_INSTANCE_UID))
            .expect("every instance comes back under its own UID");
        for tag in [
            tags::PATIENT_ID,
            tags::PATIENT_NAME,
            tags::ACCESSION_NUMBER,
            tags::STUDY_DATE,
            tags::STUDY_INSTANCE_UID,
            tags::SERIES_INSTANCE_UID,
            tags::SOP_INSTANCE_UID,
            tags::FRAME_OF_REFERENCE_UID,
        ] {
            assert_eq!(text(restored, tag), text(&original, tag), "{tag}");
        }
        assert_eq!(text(restored, tags::PATIENT_IDENTITY_REMOVED), "NO");
    }
}

#[test]
fn a_node_deidentifies_each_patient_before_sending_on() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).unwrap();
    let port = free_port();
    let mut scp = dcmtk("storescp");
    scp.args(["-aet", "RESEARCH", "-od"])
        .arg(&received)
        .arg(port.to_string());
    let _scp = PeerProcess::start(scp, port);
    let mapping = dir.path().join("mapping.jsonl");
    let mut node = NodeProcess::start(
        &example_exe("deidentify_node"),
        &[
            "--port",
            "0",
            "--dest",
            &format!("RESEARCH@127.0.0.1:{port}"),
            "--mapping",
            mapping.to_str().unwrap(),
            "--retain",
            "retain-patient-characteristics",
        ],
    );
    let mut originals = patient(&dir.path().join("p1"), "DEID-P1", 3);
    originals.extend(patient(&dir.path().join("p2"), "DEID-P2", 2));
    let mut storescu = dcmtk("storescu");
    storescu
        .args(["-aec", "DEIDENTIFY", "127.0.0.1", &node.port.to_string()])
        .args(&originals);
    let (status, output) = run(storescu);
    assert!(status.status.success(), "{output}");
    node.wait_for_count("processing finished", 2, Duration::from_secs(60));
    let arrived = files(&received);
    assert_eq!(arrived.len(), 5, "{arrived:?}");
    assert_no_identity(&arrived);
    assert_consistent(&originals, &arrived);
    let by_pseudonym: BTreeMap<String, usize> = arrived.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(text(&open_file(p).unwrap(), tags::PATIENT_ID))
            .or_default() += 1;
        m
    });
    assert_eq!(
        by_pseudonym.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([2, 3])
    );
    assert!(
        by_pseudonym.keys().all(|k| k.starts_with("ANON-")),
        "{by_pseudonym:?}"
    );
    // Retained patient characteristics: the sex stays.
    assert_eq!(
        text(&open_file(&arrived[0]).unwrap(), tags::PATIENT_SEX),
        "O"
    );
    // The mapping the children wrote re-identifies what arrived.
    let back = dir.path().join("back");
    let mut command = Command::new(cli_exe());
    command
        .args(["reidentify", "--quiet", "--mapping"])
        .arg(&mapping)
        .arg(&received)
        .arg(&back);
    let (status, output) = run(command);
    assert!(status.status.success(), "{output}");
    let restored: BTreeSet<String> = files(&back)
        .iter()
        .map(|p| text(&open_file(p).unwrap(), tags::SOP_INSTANCE_UID))
        .collect();
    let wanted: BTreeSet<String> = originals
        .iter()
        .map(|p| text(&open_file(p).unwrap(), tags::SOP_INSTANCE_UID))
        .collect();
    assert_eq!(restored, wanted);
}
