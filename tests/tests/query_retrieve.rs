//! `dicomnode find`, `get` and `move` against real PACSs (Orthanc and DCMTK's dcmqrscp),
//! checked against DCMTK's findscu and against the files themselves.

use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_tests::pacs::{
    findscu_studies, study, study_uid, write_files as write, Dcmqrscp, DcmqrscpOptions, FoundStudy,
    Orthanc, OrthancOptions,
};
use dicomnode_tests::pki::Pki;
use dicomnode_tests::{cli_exe, dcmtk, files_under, free_port, isolated_network, run, PeerProcess};
use std::collections::BTreeSet;
use std::process::Command;

fn cli(args: &[&str]) -> (std::process::Output, String) {
    let mut command = Command::new(cli_exe());
    command.args(args);
    run(command)
}

#[test]
fn find_get_and_move_agree_with_findscu_and_the_files_on_orthanc_and_dcmqrscp() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    let a = study("QR1", "CT", "20230101", 3);
    let b = study("QR1", "MR", "20240202", 2);
    let other = study("QR2", "CT", "20240303", 1);
    let mut files = write(&dir.path().join("a"), &a);
    files.extend(write(&dir.path().join("b"), &b));
    files.extend(write(&dir.path().join("c"), &other));
    // A storescp that the PACSs know as STORESCP, for C-MOVE.
    let storescp_port = free_port();
    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).unwrap();
    let mut storescp = dcmtk("storescp");
    storescp
        .args(["-aet", "STORESCP", "-od"])
        .arg(&received)
        .arg(storescp_port.to_string());
    let _storescp = PeerProcess::start(storescp, storescp_port);

    let orthanc = Orthanc::start(OrthancOptions::new().modality(
        "storescp",
        "STORESCP",
        "127.0.0.1",
        storescp_port,
    ));
    orthanc.upload(&files);
    let dcmqrscp =
        Dcmqrscp::start(DcmqrscpOptions::new().host("STORESCP", "127.0.0.1", storescp_port));
    dcmqrscp.load(&files);

    for (name, address, port, ae) in [
        (
            "Orthanc",
            orthanc.address(),
            orthanc.dicom_port(),
            "ORTHANC",
        ),
        (
            "dcmqrscp",
            dcmqrscp.address(),
            dcmqrscp.port(),
            dcmqrscp.ae_title(),
        ),
    ] {
        let address = address.to_string();
        // C-FIND: the same studies and dates as DCMTK's findscu.
        let (output, text) = cli(&[
            "find",
            &address,
            "--json",
            "-k",
            "PatientID=QR1",
            "-k",
            "StudyDate",
        ]);
        assert!(output.status.success(), "{name}: find failed: {text}");
        let mut found: Vec<FoundStudy> = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                FoundStudy {
                    study_instance_uid: v["StudyInstanceUID"].as_str().unwrap().to_string(),
                    study_date: v["StudyDate"].as_str().map(str::to_string),
                }
            })
            .collect();
        found.sort();
        let reference = findscu_studies(port, ae, "QR1");
        assert_eq!(found, reference, "{name}: find differs from findscu");
        assert_eq!(found.len(), 2, "{name}: the patient's two studies");

        // C-GET: every instance of the study, byte for byte the same pixel data.
        let got = dir.path().join(format!("get-{name}"));
        let (output, text) = cli(&[
            "get",
            &address,
            "--study",
            &study_uid(&a),
            "--out",
            got.to_str().unwrap(),
            "-q",
        ]);
        assert!(output.status.success(), "{name}: get failed: {text}");
        assert!(text.contains("3 received, 0 failed"), "{name}: {text}");
        let mut got_files = files_under(&got);
        got_files.sort();
        assert_eq!(got_files.len(), 3, "{name}: {text}");
        for original in &a {
            let uid = original
                .meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0');
            let copy = got_files
                .iter()
                .map(|f| open_file(f).unwrap())
                .find(|f| {
                    f.meta()
                        .media_storage_sop_instance_uid()
                        .trim_end_matches('\0')
                        == uid
                })
                .unwrap_or_else(|| panic!("{name}: instance {uid} not retrieved"));
            assert_eq!(
                copy.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap(),
                original
                    .element(tags::PIXEL_DATA)
                    .unwrap()
                    .to_bytes()
                    .unwrap(),
                "{name}: pixel data of {uid}"
            );
        }

        // C-MOVE to storescp.
        for old in files_under(&received) {
            std::fs::remove_file(old).unwrap();
        }
        let (output, text) = cli(&[
            "move",
            &address,
            "--study",
            &study_uid(&b),
            "--destination",
            "STORESCP",
            "-q",
        ]);
        assert!(output.status.success(), "{name}: move failed: {text}");
        assert!(text.contains("2 completed, 0 failed"), "{name}: {text}");
        let moved: BTreeSet<String> = files_under(&received)
            .iter()
            .map(|f| {
                let obj = open_file(f).unwrap();
                obj.meta()
                    .media_storage_sop_instance_uid()
                    .trim_end_matches('\0')
                    .to_string()
            })
            .collect();
        let wanted: BTreeSet<String> = b
            .iter()
            .map(|i| {
                i.meta()
                    .media_storage_sop_instance_uid()
                    .trim_end_matches('\0')
                    .to_string()
            })
            .collect();
        assert_eq!(moved, wanted, "{name}: the study's instances moved");

        // A destination the PACS does not know: a failure, said so.
        let (output, text) = cli(&[
            "move",
            &address,
            "--study",
            &study_uid(&b),
            "--destination",
            "NOBODY",
            "-q",
        ]);
        assert_eq!(output.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains("C-MOVE with status"), "{name}: {text}");
    }

    // Nobody listening: a clear error, quickly.
    let nobody = format!("PACS@127.0.0.1:{}", free_port());
    let (output, text) = cli(&["find", &nobody, "-k", "PatientID=QR1", "--timeout", "5"]);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("cannot associate"), "{text}");
}

#[test]
fn find_and_get_over_tls_with_orthanc() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("qr");
    let (server_cert, server_key) = pki.issue("orthanc", false);
    let (client_cert, client_key) = pki.issue("dicomnode", false);
    let orthanc = Orthanc::start(
        OrthancOptions::new()
            .setting("DicomTlsEnabled", serde_json::json!(true))
            .setting("DicomTlsCertificate", serde_json::json!(server_cert))
            .setting("DicomTlsPrivateKey", serde_json::json!(server_key))
            .setting("DicomTlsTrustedCertificates", serde_json::json!(pki.ca()))
            .setting("DicomTlsRemoteCertificateRequired", serde_json::json!(true)),
    );
    let a = study("TLS1", "CT", "20230101", 2);
    orthanc.upload(&write(&dir.path().join("a"), &a));
    let address = orthanc.address().to_string();
    let tls = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--tls".to_string(),
            "--tls-ca".to_string(),
            pki.ca().display().to_string(),
            "--tls-cert".to_string(),
            client_cert.display().to_string(),
            "--tls-key".to_string(),
            client_key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let mut find = vec!["find".to_string(), address.clone(), "--json".to_string()];
    find.extend(tls(&["-k", "PatientID=TLS1", "--timeout", "20"]));
    let args: Vec<&str> = find.iter().map(String::as_str).collect();
    let (output, text) = cli(&args);
    assert!(output.status.success(), "find over TLS failed: {text}");
    assert!(text.contains(&study_uid(&a)), "{text}");
    let got = dir.path().join("got");
    let mut get = vec!["get".to_string(), address.clone()];
    get.extend(tls(&[
        "--study",
        &study_uid(&a),
        "--out",
        got.to_str().unwrap(),
        "-q",
    ]));
    let args: Vec<&str> = get.iter().map(String::as_str).collect();
    let (output, text) = cli(&args);
    assert!(output.status.success(), "get over TLS failed: {text}");
    assert_eq!(files_under(&got).len(), 2, "{text}");
    // Plain TCP to the TLS port: refused, said so.
    let (output, text) = cli(&["find", &address, "-k", "PatientID=TLS1", "--timeout", "10"]);
    assert_eq!(output.status.code(), Some(2), "{text}");
}
