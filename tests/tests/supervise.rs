//! Supervising the children: every way a child can end, time and memory limits, process
//! groups, shutdown on signals, the concurrency limit, warm workers, and no deadlock.

use dicomnode_server::dimse::status;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::{ct_contexts, expect_failures, field, send_patient, NodeProcess};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn test_node(out: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["--port", "0", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_test_node")), &args)
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The PIDs of every child the node started, from its log.
fn child_pids(node: &NodeProcess) -> Vec<u32> {
    node.log()
        .lines()
        .filter(|l| l.contains("child started"))
        .filter_map(|l| field(l, "pid").and_then(|p| p.parse().ok()))
        .collect()
}

/// Each run's (pid, cwd, start, end) from the test node's records.
fn runs(out: &Path) -> Vec<(u32, PathBuf, u128, u128)> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(out.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_default()
                .to_string()
        };
        runs.push((
            value("pid=").parse().unwrap(),
            PathBuf::from(value("cwd=")),
            value("start=").parse().unwrap_or(0),
            value("end=").parse().unwrap_or(0),
        ));
    }
    runs
}

/// The largest number of runs that overlapped in time.
fn max_overlap(runs: &[(u32, PathBuf, u128, u128)]) -> usize {
    runs.iter()
        .map(|(_, _, start, _)| {
            runs.iter()
                .filter(|(_, _, s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn every_ending_is_told_apart_and_the_node_serves_on() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &[
            "--attempts",
            "1",
            "--time-limit",
            "2",
            "--memory-limit-mb",
            "512",
        ],
    );
    let cases = [
        ("SEGV-1", "child killed by signal 11 (SIGSEGV)"),
        ("EXIT3-1", "child exited with code 3 without a report"),
        ("MEM-1", "killed for memory: exceeded its limit of 512 MiB"),
        ("HANG-1", "timed out after 2 s"),
        (
            "PANIC-2",
            "processor panicked: deliberate panic for patient PANIC-2",
        ),
        (
            "FAIL-2",
            "process returned an error: deliberate failure for patient FAIL-2",
        ),
        ("ABORT-2", "child killed by signal 6 (SIGABRT)"),
    ];
    expect_failures(&mut node, &cases, WAIT);
    // The hung child's grandchild went with its process group.
    let grandchild: u32 = std::fs::read_to_string(out.path().join("HANG-1.grandchild"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !process_exists(grandchild),
        "grandchild {grandchild} survived"
    );
    send_patient(&node, "FINE-1", 1);
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=FINE-1"), "{line}");
    for pid in child_pids(&node) {
        assert!(!process_exists(pid), "child {pid} is still running");
    }
}

#[test]
fn sigterm_lets_running_work_finish_and_leaves_nothing_behind() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let mut node = test_node(
        out.path(),
        &[
            "--data-dir",
            data_dir,
            "--shutdown-grace",
            "10",
            "--max-children",
            "1",
        ],
    );
    send_patient(&node, "SLOW-1", 1);
    node.wait_for_log("child started", WAIT);
    // An association is sending when the signal comes.
    let held = SyntheticSeries::ct("HELD-1", 2).size(8, 8).build().unwrap();
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts()).unwrap();
    assert_eq!(association.store(&held[0]).unwrap(), status::SUCCESS);
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    node.wait_for_log("shutting down", WAIT);
    // The running association may finish; new ones are not accepted.
    assert_eq!(association.store(&held[1]).unwrap(), status::SUCCESS);
    association.release().unwrap();
    let status = node.wait_for_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", node.log());
    assert!(signalled.elapsed() < Duration::from_secs(10));
    let log = node.log();
    assert!(
        log.contains("processing finished") && log.contains("key=SLOW-1"),
        "{log}"
    );
    for pid in child_pids(&node) {
        assert!(!process_exists(pid), "child {pid} is still running");
    }
    // HELD-1 waited behind SLOW-1 (one child at a time) when the runner stopped: its
    // instances are stored, and processed at the next start.
    assert!(
        !log.contains("key=HELD-1}: dicomnode_server::runner: processing finished"),
        "{log}"
    );
    let mut node = test_node(out.path(), &["--data-dir", data_dir]);
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=HELD-1"), "{line}");
}

#[test]
fn sigterm_kills_a_child_that_outlives_the_grace_period() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &["--shutdown-grace", "1"]);
    send_patient(&node, "HANG-2", 1);
    let grandchild_file = out.path().join("HANG-2.grandchild");
    let start = Instant::now();
    while !grandchild_file.exists() {
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(20));
    }
    let grandchild: u32 = std::fs::read_to_string(&grandchild_file)
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = node.wait_for_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !process_exists(grandchild),
        "grandchild {grandchild} survived"
    );
    for pid in child_pids(&node) {
        assert!(!process_exists(pid), "child {pid} is still running");
    }
}

#[test]
fn at_most_n_children_run_at_once() {
    for (limit, patients) in [(2usize, 6), (1, 3)] {
        let out = tempfile::tempdir().unwrap();
        let mut node = test_node(out.path(), &["--max-children", &limit.to_string()]);
        for p in 0..patients {
            send_patient(&node, &format!("SLOW-C{p}"), 1);
        }
        node.wait_for_count("processing finished", patients, WAIT);
        let runs = runs(out.path());
        assert_eq!(runs.len(), patients);
        assert_eq!(max_overlap(&runs), limit, "limit {limit}: {runs:?}");
        if limit == 2 {
            assert!(node
                .log()
                .contains("all children busy: the patient waits its turn"));
        }
    }
}

#[test]
fn a_warm_worker_takes_ten_patients_in_fresh_directories() {
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &[
            "--max-children",
            "1",
            "--warm-patients",
            "20",
            "--log-dir",
            logs.path().to_str().unwrap(),
        ],
    );
    for p in 0..10 {
        send_patient(&node, &format!("WARM-{p}"), 1);
    }
    node.wait_for_count("processing finished", 10, WAIT);
    let runs = runs(out.path());
    assert_eq!(runs.len(), 10);
    let pids: std::collections::HashSet<u32> = runs.iter().map(|r| r.0).collect();
    assert_eq!(pids.len(), 1, "one worker process: {pids:?}");
    assert!(!pids.contains(&node.pid()));
    let dirs: std::collections::HashSet<&PathBuf> = runs.iter().map(|r| &r.1).collect();
    assert_eq!(dirs.len(), 10, "a fresh working directory per patient");
    for dir in dirs {
        assert!(!dir.exists(), "{} should be removed", dir.display());
    }
    assert_eq!(node.log().matches("child started").count(), 1);
    // The processor's own log events arrive as records, in the patient's span.
    let log = node.log();
    let relayed = log
        .lines()
        .find(|l| l.contains("test processor starts") && l.contains("patient{key=WARM-3}"))
        .unwrap_or_else(|| panic!("no relayed record for WARM-3:\n{log}"));
    assert!(relayed.contains("child_target=test_node"), "{relayed}");
    assert!(relayed.contains("instances=1"), "{relayed}");
    // And the log also went to a rolling file.
    let files: Vec<_> = std::fs::read_dir(logs.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(text.contains("test processor starts"), "{text}");
}

#[test]
fn streams_and_children_together_do_not_deadlock() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), &["--max-children", "2"]);
    let start = Instant::now();
    // Eight associations streaming to eight patients while children start and finish.
    let address = node.address("TEST_NODE");
    let streams: Vec<_> = (0..8)
        .map(|s| {
            let address = address.clone();
            std::thread::spawn(move || {
                for round in 0..3 {
                    let patient = format!("STREAM-{s}-{round}");
                    let instances = SyntheticSeries::ct(&patient, 5)
                        .size(64, 64)
                        .build()
                        .unwrap();
                    let mut association =
                        StoreAssociation::open(&address, "SCU", &ct_contexts()).unwrap();
                    for instance in &instances {
                        assert_eq!(association.store(instance).unwrap(), status::SUCCESS);
                    }
                    association.release().unwrap();
                }
            })
        })
        .collect();
    for stream in streams {
        stream.join().unwrap();
    }
    // Then one hundred patients in a row.
    for p in 0..100 {
        send_patient(&node, &format!("ROW-{p}"), 1);
    }
    node.wait_for_count("processing finished", 124, Duration::from_secs(120));
    assert!(start.elapsed() < Duration::from_secs(120));
}

#[test]
fn a_warm_worker_is_replaced_after_its_patients_and_after_a_failure() {
    let out = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &[
            "--max-children",
            "1",
            "--warm-patients",
            "2",
            "--attempts",
            "1",
        ],
    );
    let pid_of = |node: &mut NodeProcess, patient: &str, finished: usize| {
        // "processing finished" or "processing failed".
        node.wait_for_count("processing f", finished, WAIT);
        let record = std::fs::read_dir(out.path().join("runs"))
            .unwrap()
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{patient}-"))
            })
            .unwrap();
        let text = std::fs::read_to_string(record.path()).unwrap();
        text.lines()
            .next()
            .unwrap()
            .trim_start_matches("pid=")
            .parse::<u32>()
            .unwrap()
    };
    send_patient(&node, "W-1", 1);
    let first = pid_of(&mut node, "W-1", 1);
    send_patient(&node, "W-2", 1);
    assert_eq!(
        pid_of(&mut node, "W-2", 2),
        first,
        "the worker takes its second patient"
    );
    send_patient(&node, "W-3", 1);
    let second = pid_of(&mut node, "W-3", 3);
    assert_ne!(second, first, "replaced after two patients");
    send_patient(&node, "FAIL-W", 1);
    assert_eq!(pid_of(&mut node, "FAIL-W", 4), second);
    send_patient(&node, "W-4", 1);
    assert_ne!(
        pid_of(&mut node, "W-4", 5),
        second,
        "replaced after a failure"
    );
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

#[test]
fn what_the_processor_starts_cannot_reach_the_job_channel() {
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &[
            "--attempts",
            "1",
            "--time-limit",
            "2",
            "--max-children",
            "1",
            "--shutdown-grace",
            "30",
            "--work-root",
            work.path().to_str().unwrap(),
        ],
    );
    // A subprocess that reads its standard input to the end sees EOF at once.
    send_patient(&node, "STDIN-1", 1);
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=STDIN-1"), "{line}");
    // The node's own binary, started by the processor, prints its help: not a child.
    send_patient(&node, "SELF-1", 1);
    let lines = node.wait_for_count("processing finished", 2, WAIT);
    assert!(lines[1].contains("key=SELF-1"), "{}", node.log());
    // A grandchild in a session of its own keeps nothing of the child's: the patient
    // times out at the limit, and the one slot is free for the next patient at once.
    let sent = Instant::now();
    send_patient(&node, "ESCAPE-1", 1);
    let line = node.wait_for_log("processing failed", WAIT);
    let ended = sent.elapsed();
    assert!(line.contains("timed out after 2 s"), "{line}");
    assert!(
        ended < Duration::from_secs(5),
        "reported {ended:?} after sending"
    );
    let grandchild: u32 = std::fs::read_to_string(out.path().join("ESCAPE-1.grandchild"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        process_exists(grandchild),
        "the escaped grandchild lives on"
    );
    let next = Instant::now();
    send_patient(&node, "AFTER-1", 1);
    let lines = node.wait_for_count("processing finished", 3, WAIT);
    assert!(lines[2].contains("key=AFTER-1"), "{}", node.log());
    assert!(
        next.elapsed() < Duration::from_secs(5),
        "{:?}",
        next.elapsed()
    );
    // SIGTERM: the node exits promptly, not after the grace period.
    let stopping = Instant::now();
    signal(node.pid(), nix::sys::signal::Signal::SIGTERM);
    let status = node.wait_for_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    signal(grandchild, nix::sys::signal::Signal::SIGKILL);
    // Nothing of the node is left in its work root.
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_chatty_child_cannot_flood_the_log() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(
        out.path(),
        &[
            "--attempts",
            "1",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    );
    send_patient(&node, "CHATTY-1", 1);
    node.wait_for_log("processing failed", WAIT);
    node.wait_for_log("quarantined", WAIT);
    let log = node.log();
    assert!(
        log.len() < 2 << 20,
        "the node's log has {} bytes",
        log.len()
    );
    assert!(log.contains("went over its budget"), "{log}");
    let files = dicomnode_tests::files_under(&data.path().join("quarantine"));
    let record = files
        .iter()
        .find(|p| p.ends_with("failures.log"))
        .expect("a failure record");
    let text = std::fs::read_to_string(record).unwrap();
    assert!(
        text.len() < 64 * 1024,
        "a failure record of {} bytes",
        text.len()
    );
    assert!(
        text.contains("all of the child's output: output.attempt-1.log"),
        "{text}"
    );
    let full = record.with_file_name("output.attempt-1.log");
    let size = std::fs::metadata(&full).unwrap().len();
    assert!(size > 40 << 20, "the kept output has {size} bytes");
}

#[test]
fn work_directories_of_a_killed_node_are_removed_at_the_next_start() {
    let work = tempfile::tempdir().unwrap();
    let work_arg = work.path().to_str().unwrap().to_string();
    let dirs_of = |pid: u32| -> Vec<PathBuf> {
        std::fs::read_dir(work.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("dicomnode-node-{pid}-"))
            })
            .collect()
    };
    // A live node sharing the work root.
    let out_live = tempfile::tempdir().unwrap();
    let live = test_node(out_live.path(), &["--work-root", &work_arg]);
    // A node killed while its child runs.
    let out = tempfile::tempdir().unwrap();
    let mut killed = test_node(out.path(), &["--work-root", &work_arg]);
    send_patient(&killed, "HANG-9", 1);
    killed.wait_for_log("child started", WAIT);
    let grandchild_file = out.path().join("HANG-9.grandchild");
    let start = Instant::now();
    while !grandchild_file.exists() && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_pid = killed.pid();
    signal(killed_pid, nix::sys::signal::Signal::SIGKILL);
    killed.wait_for_exit(WAIT);
    assert_eq!(
        dirs_of(killed_pid).len(),
        1,
        "the killed node's directory is left"
    );
    assert_eq!(dirs_of(live.pid()).len(), 1);
    // The next node removes it, and leaves the live node's alone.
    let out_next = tempfile::tempdir().unwrap();
    let next = test_node(out_next.path(), &["--work-root", &work_arg]);
    assert!(
        dirs_of(killed_pid).is_empty(),
        "the killed node's directory survived"
    );
    assert_eq!(
        dirs_of(live.pid()).len(),
        1,
        "a live node's directory was removed"
    );
    assert_eq!(dirs_of(next.pid()).len(), 1);
    if let Ok(pid) = std::fs::read_to_string(&grandchild_file) {
        if let Ok(pid) = pid.trim().parse() {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
