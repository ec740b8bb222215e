//! The with_priors example against real PACSs (Orthanc and DCMTK's dcmqrscp): prior
//! studies fetched by C-MOVE and C-GET; a PACS that is down, one that never answers, one
//! killed mid-retrieve, and a node killed mid-fetch.

use dicomnode_server::dicom_core::{DataElement, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::DicomInstance;
use dicomnode_tests::pacs::{
    storescu, study, study_uid, write_files as write, Dcmqrscp, DcmqrscpOptions, Orthanc,
    OrthancOptions,
};
use dicomnode_tests::{
    dcmtk, example_exe, files_under, free_port, isolated_network, run, NodeProcess,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Waits for `<out>/<patient>.json` and reads it.
fn wait_json(out: &Path, patient: &str, timeout: Duration) -> serde_json::Value {
    let path = out.join(format!("{patient}.json"));
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return serde_json::from_str(&text).expect("the JSON parses");
        }
        assert!(
            start.elapsed() < timeout,
            "no {} after {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The prior studies of patient P the tests load: four CT studies (2021–2024), an MR
/// study, and a CT study of another patient.
struct Priors {
    files: Vec<PathBuf>,
    ct: Vec<(String, String)>,
    /// The other patient's study.
    other: String,
}

fn load_priors(dir: &Path, patient: &str, per_study: u32) -> Priors {
    let mut files = Vec::new();
    let mut ct = Vec::new();
    for date in ["20210310", "20220310", "20230310", "20240310"] {
        let s = study(patient, "CT", date, per_study);
        ct.push((study_uid(&s), date.to_string()));
        files.extend(write(&dir.join(date), &s));
    }
    files.extend(write(&dir.join("mr"), &study(patient, "MR", "20240601", 2)));
    let other = study("OTHER", "CT", "20240601", 2);
    files.extend(write(&dir.join("other"), &other));
    // The newest first, as the node picks them.
    ct.reverse();
    Priors {
        files,
        ct,
        other: study_uid(&other),
    }
}

/// Sends a study to the node (DCMTK storescu), from files written into `dir`.
fn send(node_port: u16, dir: &Path, instances: &[DicomInstance]) {
    storescu(node_port, "PRIORS", &write(dir, instances));
}

/// Starts the with_priors example against `pacs`, listening on `port`.
fn with_priors(
    port: u16,
    out: &Path,
    pacs: &str,
    retrieval: &str,
    fetch_seconds: u64,
    extra: &[&str],
) -> NodeProcess {
    let port = port.to_string();
    let fetch = fetch_seconds.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--ae-title",
        "PRIORS",
        "--out",
        out.to_str().unwrap(),
        "--pacs",
        pacs,
        "--retrieval",
        retrieval,
        "--fetch-seconds",
        &fetch,
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(&example_exe("with_priors"), &args)
}

fn check_priors(json: &serde_json::Value, current: &str, expected: &[(String, String)], each: u64) {
    assert_eq!(json["current"], current, "{json}");
    assert_eq!(json["prior_status"], "ok", "{json}");
    let priors = json["priors"].as_array().expect("a list of priors");
    let got: Vec<(String, String, u64)> = priors
        .iter()
        .map(|p| {
            (
                p["study"].as_str().unwrap().to_string(),
                p["date"].as_str().unwrap().to_string(),
                p["instances"].as_u64().unwrap(),
            )
        })
        .collect();
    let wanted: Vec<(String, String, u64)> = expected
        .iter()
        .take(3)
        .map(|(uid, date)| (uid.clone(), date.clone(), each))
        .collect();
    assert_eq!(got, wanted, "the three newest CT priors, newest first");
}

#[test]
fn with_priors_moves_three_priors_from_orthanc_into_the_current_patient() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let node_port = free_port();
    let orthanc =
        Orthanc::start(OrthancOptions::new().modality("priors", "PRIORS", "127.0.0.1", node_port));
    let priors = load_priors(&dir.path().join("pacs"), "P1", 4);
    orthanc.upload(&priors.files);
    let mut node = with_priors(
        node_port,
        &out,
        &orthanc.address().to_string(),
        "move",
        60,
        &[],
    );
    let current = study("P1", "CT", "20250101", 3);
    let sent = Instant::now();
    send(node_port, &dir.path().join("current"), &current);
    let json = wait_json(&out, "P1", Duration::from_secs(60));
    eprintln!("current study stored to JSON written: {:?}", sent.elapsed());
    check_priors(&json, &study_uid(&current), &priors.ct, 4);
    // The moved instances were no patient of their own: one processing, of P1.
    std::thread::sleep(Duration::from_millis(500));
    let log = node.log();
    assert_eq!(
        log.matches("starting processing").count(),
        1,
        "one batch only:\n{log}"
    );
    assert!(log.contains("prior studies fetched"), "{log}");
    // A second study of the same patient is a batch of its own, with the first study
    // among its priors now that the PACS has it.
    orthanc.upload(&write(&dir.path().join("current-stored"), &current));
    std::fs::remove_file(out.join("P1.json")).unwrap();
    let second = study("P1", "CT", "20250601", 2);
    send(node_port, &dir.path().join("second"), &second);
    let json = wait_json(&out, "P1", Duration::from_secs(60));
    let mut expected = vec![(study_uid(&current), "20250101".to_string())];
    expected.extend(priors.ct.iter().cloned());
    assert_eq!(json["current"], study_uid(&second).as_str());
    assert_eq!(json["priors"][0]["study"], study_uid(&current).as_str());
    assert_eq!(json["priors"][0]["instances"], 3);
    node.wait_for_count("starting processing", 2, Duration::from_secs(10));
    // A C-MOVE to the node that names it as its originator but that no fetch waits for
    // (as after a restart): refused, never a patient of its own.
    let mut movescu = dcmtk("movescu");
    movescu.args(["-S", "-aet", "PRIORS", "-aec", "ORTHANC", "-aem", "PRIORS"]);
    movescu.args(["-k", "QueryRetrieveLevel=STUDY", "-k"]);
    movescu.arg(format!("StudyInstanceUID={}", priors.other));
    movescu.args(["127.0.0.1", &orthanc.dicom_port().to_string()]);
    let (_, text) = run(movescu);
    assert!(
        text.contains("Failed") || text.contains("Warning"),
        "{text}"
    );
    node.wait_for_log("no prior fetch waits for", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.log().matches("starting processing").count(), 2);
    assert!(!out.join("OTHER.json").exists());
}

#[test]
fn with_priors_gets_priors_from_dcmqrscp_with_c_get() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dcmqrscp = Dcmqrscp::start(DcmqrscpOptions::new());
    let priors = load_priors(&dir.path().join("pacs"), "P2", 3);
    dcmqrscp.load(&priors.files);
    let node_port = free_port();
    // Durable: each instance the C-GET brings streams to a file, fsynced, then placed.
    let data = dir.path().join("data");
    let _node = with_priors(
        node_port,
        &out,
        &dcmqrscp.address().to_string(),
        "get",
        60,
        &["--data-dir", data.to_str().unwrap()],
    );
    let current = study("P2", "CT", "20250101", 2);
    send(node_port, &dir.path().join("current"), &current);
    let json = wait_json(&out, "P2", Duration::from_secs(60));
    check_priors(&json, &study_uid(&current), &priors.ct, 3);
}

#[test]
fn a_pacs_that_is_down_or_never_answers_makes_priors_unavailable_in_bounded_time() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    // Down: nothing listens.
    let out = dir.path().join("down");
    let node_port = free_port();
    let nobody = format!("PACS@127.0.0.1:{}", free_port());
    let node = with_priors(node_port, &out, &nobody, "move", 30, &[]);
    let current = study("P3", "CT", "20250101", 2);
    send(node_port, &dir.path().join("c3"), &current);
    let json = wait_json(&out, "P3", Duration::from_secs(30));
    assert_eq!(json["priors"], serde_json::json!([]));
    let status = json["prior_status"].as_str().unwrap();
    assert!(
        status.starts_with("unavailable: cannot associate"),
        "{status}"
    );
    assert!(node.log().contains("prior studies unavailable"));
    drop(node);

    // Never answers: Orthanc stopped with SIGSTOP accepts connections and says nothing.
    let out = dir.path().join("silent");
    let orthanc = Orthanc::start(OrthancOptions::new());
    let pid = Pid::from_raw(orthanc.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let node_port = free_port();
    let _node = with_priors(
        node_port,
        &out,
        &orthanc.address().to_string(),
        "move",
        3,
        &[],
    );
    let current = study("P4", "CT", "20250101", 2);
    let sent = Instant::now();
    send(node_port, &dir.path().join("c4"), &current);
    let json = wait_json(&out, "P4", Duration::from_secs(30));
    let elapsed = sent.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    eprintln!("silent PACS: JSON after {elapsed:?}");
    assert_eq!(json["priors"], serde_json::json!([]));
    let status = json["prior_status"].as_str().unwrap();
    assert!(
        status.contains("did not finish the C-FIND within 3s"),
        "{status}"
    );
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
}

#[test]
fn a_pacs_killed_mid_retrieve_leaves_no_half_prior_and_no_stray_patient() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = dir.path().join("data");
    let node_port = free_port();
    let orthanc =
        Orthanc::start(OrthancOptions::new().modality("priors", "PRIORS", "127.0.0.1", node_port));
    // Large enough priors that the move takes a while.
    let mut files = Vec::new();
    for date in ["20230101", "20240101"] {
        let instances = SyntheticSeries::ct("P5", 200)
            .size(256, 256)
            .build()
            .unwrap();
        let mut instances = instances;
        for i in &mut instances {
            i.put(DataElement::new(tags::STUDY_DATE, VR::DA, date));
        }
        files.extend(write(&dir.path().join(date), &instances));
    }
    orthanc.upload(&files);
    let mut node = with_priors(
        node_port,
        &out,
        &orthanc.address().to_string(),
        "move",
        60,
        &["--data-dir", data.to_str().unwrap()],
    );
    let current = study("P5", "CT", "20250101", 2);
    send(node_port, &dir.path().join("current"), &current);
    // Kill the PACS once some prior instances (128 KiB each) arrived: the node wrote them
    // to its log.
    let start = Instant::now();
    let before = dicomnode_tests::bytes_written(node.pid());
    while dicomnode_tests::bytes_written(node.pid()) - before < 5 * 128 * 1024 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no prior arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(Pid::from_raw(orthanc.pid() as i32), Signal::SIGKILL).unwrap();
    let json = wait_json(&out, "P5", Duration::from_secs(60));
    assert_eq!(json["priors"], serde_json::json!([]), "{json}");
    assert!(
        json["prior_status"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{json}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = node.log();
    assert_eq!(log.matches("starting processing").count(), 1, "{log}");
    // Processed and deleted; nothing of the half prior left behind.
    node.wait_for_log("processing finished", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<PathBuf> = files_under(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert!(left.is_empty(), "left in the data directory: {left:?}");
}

#[test]
fn a_node_killed_while_fetching_fetches_again_after_a_restart() {
    isolated_network();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = dir.path().join("data");
    let node_port = free_port();
    let orthanc =
        Orthanc::start(OrthancOptions::new().modality("priors", "PRIORS", "127.0.0.1", node_port));
    let priors = load_priors(&dir.path().join("pacs"), "P6", 2);
    orthanc.upload(&priors.files);
    let pid = Pid::from_raw(orthanc.pid() as i32);
    // The PACS hangs: the fetch cannot end before the node is killed.
    kill(pid, Signal::SIGSTOP).unwrap();
    let data_arg = ["--data-dir", data.to_str().unwrap()];
    let mut node = with_priors(
        node_port,
        &out,
        &orthanc.address().to_string(),
        "move",
        60,
        &data_arg,
    );
    let current = study("P6", "CT", "20250101", 2);
    send(node_port, &dir.path().join("current"), &current);
    node.wait_for_log("fetching prior studies", Duration::from_secs(10));
    kill(Pid::from_raw(node.pid() as i32), Signal::SIGKILL).unwrap();
    node.wait_for_exit(Duration::from_secs(10));
    drop(node);
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(!out.join("P6.json").exists());
    let mut node = with_priors(
        node_port,
        &out,
        &orthanc.address().to_string(),
        "move",
        60,
        &data_arg,
    );
    let json = wait_json(&out, "P6", Duration::from_secs(60));
    check_priors(&json, &study_uid(&current), &priors.ct, 2);
    node.wait_for_log("prior studies fetched", Duration::from_secs(10));
    assert!(node.log().contains("fetching prior studies"));
}
