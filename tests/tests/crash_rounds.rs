//! The write-ahead log under SIGKILL: ten rounds, each with four DCMTK storescu sending at
//! once and the node killed at a random moment (while it receives, flushes the log,
//! checkpoints, or runs a child), then restarted on the same data directory. In the end
//! every acknowledged instance was processed, none twice, and no temporary file is left.

use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::{dcmtk, files_under, NodeProcess};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

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

/// Each run that finished (its record has a non-zero end): its patient, its end (ns since
/// the epoch) and its SOP Instance UIDs.
fn finished_runs(out: &Path) -> Vec<(String, u128, Vec<String>)> {
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
        // `<patient>-<pid>-<n>.txt`
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let patient = name.rsplitn(3, '-').nth(2).unwrap_or_default().to_string();
        runs.push((patient, end, dicomnode_tests::record_uids(&text)));
    }
    runs
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
    dicomnode_tests::storescu_acknowledged(&text)
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
    let mut logs: Vec<String> = Vec::new();
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
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(node.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        node.wait_for_exit(WAIT);
        logs.push(node.log());
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
    dicomnode_tests::wait_until_processed(
        &node,
        &acked,
        || {
            finished_runs(out.path())
                .into_iter()
                .flat_map(|(_, _, uids)| uids)
                .collect()
        },
        WAIT,
    );
    // Nothing is processed twice by runs that finished, except a batch whose child had
    // finished when the node was killed, before the node recorded the success: the node's
    // log then has one "processing finished" for it, not two.
    std::thread::sleep(Duration::from_secs(1));
    logs.push(node.log());
    let mut runs_of: HashMap<String, usize> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (patient, _, uids) in finished_runs(out.path()) {
        *runs_of.entry(patient).or_default() += 1;
        for uid in uids {
            *seen.entry(uid).or_default() += 1;
        }
    }
    // The check below reads the log's lines for each patient: it must find them at all.
    let recorded_total = runs_of
        .keys()
        .filter(|patient| {
            logs.iter().flat_map(|log| log.lines()).any(|l| {
                l.contains(&format!("key={patient}}}")) && l.contains("processing finished")
            })
        })
        .count();
    assert!(
        recorded_total * 2 >= runs_of.len(),
        "successes recorded for {recorded_total} of {} patients",
        runs_of.len()
    );
    let mut again = 0;
    for (patient, runs) in runs_of.iter().filter(|(_, n)| **n > 1) {
        let recorded = logs
            .iter()
            .flat_map(|log| log.lines())
            .filter(|l| {
                l.contains(&format!("key={patient}}}")) && l.contains("processing finished")
            })
            .count();
        assert!(
            recorded <= 1,
            "patient {patient}: {runs} finished runs and {recorded} successes recorded: processed twice"
        );
        again += runs - 1;
    }
    eprintln!(
        "{again} batch(es) run again after a kill that came before their success was recorded; {} instances seen more than once",
        seen.values().filter(|n| **n > 1).count()
    );
    assert!(
        files_under(&data.path().join("tmp")).is_empty(),
        "no temporary file is left"
    );
}
