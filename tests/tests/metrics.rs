//! The status listener against Prometheus's own tools: `promtool check metrics` accepts
//! what `/metrics` serves, and a real Prometheus server scrapes the node and its query API
//! returns the node's counters. `/status` says which patients wait and why.

use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::{cli_exe, dcmtk, example_exe, free_port, run, NodeProcess, PeerProcess};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_body()
        .read_to_string()
        .unwrap()
}

#[test]
fn prometheus_scrapes_the_nodes_counters() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let node = NodeProcess::start(
        &example_exe("store_node"),
        &[
            "--port",
            "0",
            "--out",
            dir.path().join("out").to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--http",
            &format!("127.0.0.1:{http}"),
        ],
    );
    // Four instances stored, one refused (no PatientID, which store_node requires).
    let input = dir.path().join("in");
    let mut paths = SyntheticSeries::ct("MET-1", 4)
        .size(8, 8)
        .write_to(&input)
        .unwrap();
    let mut nameless = SyntheticSeries::ct("MET-2", 1)
        .size(8, 8)
        .build()
        .unwrap()
        .remove(0);
    nameless.remove_element(tags::PATIENT_ID);
    let nameless_path = input.join("nameless.dcm");
    nameless.write_to_file(&nameless_path).unwrap();
    paths.push(nameless_path);
    let mut storescu = dcmtk("storescu");
    storescu
        .args(["-aec", "STORE_NODE", "127.0.0.1", &node.port.to_string()])
        .args(&paths);
    let _ = run(storescu); // exits non-zero for the refused instance

    let metrics = get(&format!("http://127.0.0.1:{http}/metrics"));
    assert!(
        metrics.contains("dicomnode_instances_received_total 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dicomnode_store_responses_total{status=\"0x0000\"} 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dicomnode_store_responses_total{status=\"0xA900\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dicomnode_quarantined_batches 0\n"),
        "{metrics}"
    );
    // promtool reads it from standard input and finds nothing to say.
    let mut promtool = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {} {}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("http://127.0.0.1:{http}/status"))).unwrap();
    assert!(status["patients_waiting"].is_array(), "{status}");

    // A real Prometheus, scraping every second.
    let web = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dicomnode\n    static_configs:\n      - targets: ['127.0.0.1:{http}']\n"
        ),
    )
    .unwrap();
    let mut command = Command::new("/usr/bin/prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"));
    let _prometheus = PeerProcess::start(command, web);
    let query =
        format!("http://127.0.0.1:{web}/api/v1/query?query=dicomnode_instances_received_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer: serde_json::Value = serde_json::from_str(
            &ureq::get(&query)
                .call()
                .ok()
                .and_then(|r| r.into_body().read_to_string().ok())
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string);
        if value.as_deref() == Some("4") {
            assert_eq!(answer["data"]["result"][0]["metric"]["job"], "dicomnode");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the counter: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn status_says_which_patients_wait_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    // plus_one waits for InstanceNumbers 1..=3 of a CT series: send two.
    let node = NodeProcess::start(
        &example_exe("plus_one"),
        &[
            "--port",
            "0",
            "--dest",
            "NOWHERE@127.0.0.1:9",
            "--slices",
            "3",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--http",
            &format!("127.0.0.1:{http}"),
        ],
    );
    let paths = SyntheticSeries::ct("WAIT-1", 3)
        .size(8, 8)
        .write_to(&dir.path().join("in"))
        .unwrap();
    let mut storescu = dcmtk("storescu");
    storescu
        .args(["-aec", "PLUS_ONE", "127.0.0.1", &node.port.to_string()])
        .args(&paths[..2]);
    assert!(run(storescu).0.status.success());
    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("http://127.0.0.1:{http}/status"))).unwrap();
    let patient = &status["patients_waiting"][0];
    assert_eq!(patient["patient"], "WAIT-1", "{status}");
    assert_eq!(patient["inputs"][0]["name"], "ct");
    assert_eq!(patient["inputs"][0]["instances"], 2);
    assert_eq!(patient["inputs"][0]["enough"], false);
    assert!(
        patient["inputs"][0]["rule"].as_str().unwrap().contains('3'),
        "{status}"
    );
    let metrics = get(&format!("http://127.0.0.1:{http}/metrics"));
    assert!(
        metrics.contains("dicomnode_patients_waiting 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dicomnode_instances_waiting 2\n"),
        "{metrics}"
    );

    // The same from the data directory, with the tool, beside the running node (once the
    // node, quiet, has written the logged instances' files).
    dicomnode_tests::wait_for_instance_files(
        &dir.path().join("data").join("patients"),
        2,
        std::time::Duration::from_secs(30),
    );
    let mut command = Command::new(cli_exe());
    command
        .args(["status", "--json", "--data-dir"])
        .arg(dir.path().join("data"));
    let (output, text) = run(command);
    assert!(output.status.success(), "{text}");
    let overview: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        overview["patients_waiting"][0]["patient"], "WAIT-1",
        "{text}"
    );
    assert_eq!(overview["patients_waiting"][0]["inputs"]["ct"], 2, "{text}");
    assert_eq!(overview["quarantined"].as_array().map(Vec::len), Some(0));
}

#[test]
fn status_shows_the_children_running_and_since_when() {
    use dicomnode_server::dimse::status;
    use dicomnode_server::dispatch::StoreAssociation;
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let node = NodeProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_test_node")),
        &[
            "--port",
            "0",
            "--out",
            dir.path().to_str().unwrap(),
            "--time-limit",
            "20",
            "--shutdown-grace",
            "0.5",
            "--http",
            &format!("127.0.0.1:{http}"),
        ],
    );
    // A patient whose processing hangs (until the time limit or the node's end).
    let instances = SyntheticSeries::ct("HANG-STATUS", 1)
        .size(8, 8)
        .build()
        .unwrap();
    let mut association = StoreAssociation::open(
        &node.address("TEST_NODE"),
        "SCU",
        &dicomnode_tests::ct_contexts(),
    )
    .unwrap();
    assert_eq!(association.store(&instances[0]).unwrap(), status::SUCCESS);
    association.release().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&get(&format!("http://127.0.0.1:{http}/status"))).unwrap();
        let running = &status["children_running"][0];
        if running["patient"] == "HANG-STATUS" && running["seconds"].as_f64().unwrap_or(0.0) > 0.5 {
            let metrics = get(&format!("http://127.0.0.1:{http}/metrics"));
            assert!(
                metrics.contains("dicomnode_children_running 1\n"),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no running child in {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node ends its hanging child's process group (and the grandchild in it) when it
    // stops.
    let grandchild: u32 = std::fs::read_to_string(dir.path().join("HANG-STATUS.grandchild"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(node);
    let gone = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{grandchild}")).exists()
        && !std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < gone,
            "the grandchild {grandchild} outlived the node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
