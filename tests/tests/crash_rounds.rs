//! The write-ahead log under SIGKILL: ten rounds, each with four DCMTK storescu sending at
//! once and the node killed at a random moment (while it receives, flushes the log,
//! checkpoints, or runs a child), then restarted on the same data directory. In the end
//! every acknowledged instance was processed, none twice, and no temporary file is left.

use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::uid::trim_uid;
use dicomnode_tests::{dcmtk, files_under, NodeProcess};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

const WAIT: Duration = Duration::from_secs(90);

fn node(out: &Path, data: &Path) -> NodeProcess {
    NodeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_test_node")),
        &[
            "--port",
            "0",
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--attempts",
            "5",
            "--retry-backoff",
            "0.05",
        ],
    )
}

/// Each run that finished (its record has a non-zero end): its end (ns since the epoch)
/// and its SOP Instance UIDs.
fn finished_runs(out: &Path) -> Vec<(u128, Vec<String>)> {
    let mut runs = Vec::new();
    for path in files_under(&out.join("runs")) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let end = text
            .lines()
            .find_map(|l| l.strip_prefix("end="))
            .and_then(|v| v.parse::<u128>().ok())
            .unwrap_or(0);
        if end == 0 {
            continue;
        }
        runs.push((end, dicomnode_tests::record_uids(&text)));
    }
    runs
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn send(port: u16, dir: &Path) -> Child {
    let mut c = dcmtk("storescu");
    c.args([
        "-v",
        "-aec",
        "TEST_NODE",
        "+sd",
        "127.0.0.1",
        &port.to_string(),
    ])
    .arg(dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// The SOP Instance UIDs a storescu saw acknowledged.
fn acknowledged(sender: Child) -> Vec<String> {
    let output = sender.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let mut current: Option<PathBuf> = None;
    let mut uids = Vec::new();
    for line in text.lines() {
        if let Some(file) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(file));
        } else if line.contains("Received Store Response (Success)") {
            if let Some(file) = current.take() {
                let obj = open_file(&file).unwrap();
                let uid = obj
                    .element(tags::SOP_INSTANCE_UID)
                    .unwrap()
                    .to_str()
                    .unwrap();
                uids.push(trim_uid(&uid).to_string());
            }
        }
    }
    uids
}

#[test]
fn ten_rounds_of_sigkill_lose_no_acknowledged_instance_and_process_none_twice() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let mut acked: HashSet<String> = HashSet::new();
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos() as u64);
    eprintln!("seed {seed}");
    let mut kills: Vec<u128> = Vec::new();
    let mut node = node(out.path(), data.path());
    for round in 0..10u64 {
        let dirs: Vec<PathBuf> = (0..4)
            .map(|p| {
                let dir = input.path().join(format!("r{round}-p{p}"));
                // Every other patient is slow to process: kills land in children too.
                let id = if p % 2 == 0 {
                    format!("SLOW-{round}-{p}")
                } else {
                    format!("R{round}-{p}")
                };
                SyntheticSeries::ct(&id, 40)
                    .size(64, 64)
                    .write_to(&dir)
                    .unwrap();
                dir
            })
            .collect();
        let senders: Vec<Child> = dirs.iter().map(|d| send(node.port, d)).collect();
        // A pseudo-random moment between 100 ms and 1.5 s (xorshift of the seed).
        let mut x = seed ^ (round + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wait = 100 + x % 1400;
        std::thread::sleep(Duration::from_millis(wait));
        kills.push(now_ns());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(node.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        node.wait_for_exit(WAIT);
        for sender in senders {
            acked.extend(acknowledged(sender));
        }
        eprintln!(
            "round {round}: killed after {wait} ms, {} acknowledged so far",
            acked.len()
        );
        node = self::node(out.path(), data.path());
    }
    assert!(
        acked.len() > 100,
        "enough was acknowledged: {}",
        acked.len()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let processed: HashSet<String> = finished_runs(out.path())
            .into_iter()
            .flat_map(|(_, uids)| uids)
            .collect();
        if acked.is_subset(&processed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged instances were not processed; log:\n{}",
            acked.difference(&processed).count(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing is processed twice by runs that finished, except a batch whose child had
    // finished when the node was killed, before the node could record its success (a few
    // milliseconds: the child's report, one small fsync'd file). Such a run ended just
    // before a kill.
    std::thread::sleep(Duration::from_secs(1));
    let mut seen: HashMap<String, Vec<u128>> = HashMap::new();
    for (end, uids) in finished_runs(out.path()) {
        for uid in uids {
            seen.entry(uid).or_default().push(end);
        }
    }
    let window = 100_000_000u128; // 100 ms
    let mut again = 0;
    for (uid, mut ends) in seen {
        ends.sort_unstable();
        for earlier in &ends[..ends.len() - 1] {
            let killed_after = kills.iter().any(|k| *k >= *earlier && k - earlier < window);
            assert!(
                killed_after,
                "{uid} was processed twice, and no kill came within 100 ms of the first run's end"
            );
            again += 1;
        }
    }
    eprintln!("{again} instance(s) processed again after a kill within 100 ms of their run's end");
    assert!(
        files_under(&data.path().join("tmp")).is_empty(),
        "no temporary file is left"
    );
}
