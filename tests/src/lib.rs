//! Support for the end-to-end tests: starting nodes as real processes, calling DCMTK,
//! and the pipeline whose state the round-trip test ships to a child.

pub mod raw;

pub mod codecs;

pub mod pacs;
pub mod pki;
pub mod slurm;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A pipeline state with nested structs, collections, options, paths and an address: the
/// round-trip test checks that it arrives in the child equal, field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RichState {
    /// A nested struct.
    pub model: ModelSettings,
    /// A list.
    pub thresholds: Vec<f64>,
    /// A map.
    pub labels: HashMap<String, u16>,
    /// An absent option.
    pub note: Option<String>,
    /// A present option.
    pub seed: Option<u64>,
    /// A path.
    pub model_path: PathBuf,
    /// A DICOM address.
    pub destination: dicomnode_server::Address,
}

/// Nested settings of [`RichState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    /// A name with non-ASCII text.
    pub name: String,
    /// A signed integer.
    pub offset: i32,
    /// Nested further.
    pub layers: Vec<(String, u32)>,
}

impl RichState {
    /// The value the round-trip test sends.
    pub fn sample() -> Self {
        RichState {
            model: ModelSettings {
                name: "Ségmentation μ-model".into(),
                offset: -1024,
                layers: vec![("conv".into(), 3), ("dense".into(), 128)],
            },
            thresholds: vec![0.5, -1.25, 1e-9],
            labels: HashMap::from([("liver".into(), 1), ("spleen".into(), 2)]),
            note: None,
            seed: Some(u64::MAX - 7),
            model_path: PathBuf::from("/opt/models/ct v2/weights.bin"),
            destination: "PACS@127.0.0.1:4242"
                .parse()
                .expect("a valid address literal"),
        }
    }
}

/// The full path of a DCMTK tool (never the PATH one: pynetdicom installs namesakes).
pub fn dcmtk(tool: &str) -> Command {
    let mut command = Command::new(format!("/usr/bin/{tool}"));
    // Without it each C-STORE between DCMTK and a peer costs 45-90 ms here.
    command.env("TCP_NODELAY", "1");
    command
}

/// The directory of the workspace's build artefacts for this profile (e.g. target/debug).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// Builds the examples and the `dicomnode` tool once per test process (a no-op when fresh).
fn build_workspace_programs() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args([
            "build",
            "--quiet",
            "-p",
            "dicomnode-examples",
            "--examples",
            "-p",
            "dicomnode-cli",
            "--bins",
        ]);
        if profile_dir().ends_with("release") {
            command.arg("--release");
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the examples failed");
    });
}

/// The path of an example binary of `dicomnode-examples`.
pub fn example_exe(name: &str) -> PathBuf {
    build_workspace_programs();
    profile_dir().join("examples").join(name)
}

/// The path of the `dicomnode` command-line tool.
pub fn cli_exe() -> PathBuf {
    build_workspace_programs();
    profile_dir().join("dicomnode")
}

/// Moves the calling thread (and every process and thread it starts from now on) into a
/// network namespace of its own, with only a loopback interface, up.
///
/// For peers that cannot be told to listen on 127.0.0.1 only (DCMTK's storescp, Orthanc):
/// inside, "all interfaces" is the loopback interface. Needs root (CI runs as root).
pub fn isolated_network() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): these tests need root for a private network namespace");
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip (iproute2) runs");
    assert!(status.success(), "cannot bring the loopback interface up");
}

/// A free TCP port on 127.0.0.1 (free when asked; a peer that cannot take port 0 uses it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < timeout, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A peer process other than our node (storescp, Orthanc); killed by its PID when dropped.
pub struct PeerProcess {
    child: Child,
    /// Its DICOM port.
    pub port: u16,
}

impl PeerProcess {
    /// Starts `command`, which listens on `port`, and waits for the port.
    pub fn start(mut command: Command, port: u16) -> PeerProcess {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the peer starts");
        let peer = PeerProcess { child, port };
        wait_for_port(port, Duration::from_secs(30));
        peer
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node started as a real process; killed (by its PID) when dropped.
pub struct NodeProcess {
    child: Child,
    log: PathBuf,
    /// The port it listens on.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts `exe` with `args` (which must make it listen on 127.0.0.1, port 0), waits for
    /// its "listening on" line and returns it.
    pub fn start(exe: &Path, args: &[&str]) -> NodeProcess {
        Self::start_with_env(exe, args, &[])
    }

    /// As [`NodeProcess::start`], with these environment variables set.
    pub fn start_with_env(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("node.log");
        let file = std::fs::File::create(&log).expect("a log file");
        let err = file.try_clone().expect("a second handle");
        let child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("DICOMNODE_CHILD")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut node = NodeProcess {
            child,
            log,
            port: 0,
            _dir: dir,
        };
        let line = node.wait_for_log("listening on 127.0.0.1:", Duration::from_secs(20));
        let port = line
            .rsplit("listening on 127.0.0.1:")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        node.port = port;
        node
    }

    /// The node's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Waits until a log line contains `needle`; returns that line. Panics with the log
    /// after `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_count(needle, 1, timeout)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Waits until `count` log lines contain `needle`; returns them.
    pub fn wait_for_count(&mut self, needle: &str, count: usize, timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let log = self.log();
            let lines: Vec<String> = log
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect();
            if lines.len() >= count {
                return lines;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node exited ({status}) while waiting for {needle:?}; log:\n{log}");
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for {count} x {needle:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the node to exit by itself; panics with its log after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > timeout {
                panic!("the node did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `AE@127.0.0.1:port` for the node.
    pub fn address(&self, ae_title: &str) -> dicomnode_server::Address {
        dicomnode_server::Address {
            tls: None,
            ae_title: ae_title.into(),
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }
}

impl Drop for NodeProcess {
    /// SIGTERM first, so that the node removes its work directory as it would in
    /// production; SIGKILL if it has not exited within 2 s (a test left a child hanging).
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion; returns its output (stdout and stderr as text).
pub fn run(mut command: Command) -> (Output, String) {
    let output = command.output().expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

/// The value of `key=` in a log line (the value ends at a space).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!(" {key}=");
    let start = line.find(&pattern)? + pattern.len();
    line[start..].split_whitespace().next()
}

/// Presentation contexts for CT Image Storage in Explicit VR Little Endian.
pub fn ct_contexts() -> Vec<(String, String)> {
    vec![(
        "1.2.840.10008.5.1.4.1.1.2".to_string(),
        "1.2.840.10008.1.2.1".to_string(),
    )]
}

/// Sends `instances` to a test node (`TEST_NODE`) on one association calling as `SCU`;
/// returns their statuses.
pub fn store_all(node: &NodeProcess, instances: &[dicomnode_server::DicomInstance]) -> Vec<u16> {
    let mut association = dicomnode_server::dispatch::StoreAssociation::open(
        &node.address("TEST_NODE"),
        "SCU",
        &ct_contexts(),
    )
    .expect("the test node accepts the association");
    let statuses = instances
        .iter()
        .map(|i| association.store(i).expect("a C-STORE response"))
        .collect();
    association.release().expect("the release is answered");
    statuses
}

/// Sends a synthetic CT series of `count` 8x8 slices for `patient` to a test node and
/// checks that each instance got success.
pub fn send_patient(node: &NodeProcess, patient: &str, count: u32) {
    let instances = dicomnode_server::synthetic::SyntheticSeries::ct(patient, count)
        .size(8, 8)
        .build()
        .expect("a synthetic series");
    let statuses = store_all(node, &instances);
    assert!(
        statuses
            .iter()
            .all(|s| *s == dicomnode_server::dimse::status::SUCCESS),
        "{patient}: {statuses:04X?}"
    );
}

/// Sends each patient (one instance) in turn and checks that its processing failed with
/// the given words, in that order, on the node's "processing failed" lines.
pub fn expect_failures(node: &mut NodeProcess, cases: &[(&str, &str)], timeout: Duration) {
    for (i, (patient, said)) in cases.iter().enumerate() {
        send_patient(node, patient, 1);
        let lines = node.wait_for_count("processing failed", i + 1, timeout);
        let line = &lines[i];
        assert!(
            line.contains(patient) && line.contains(said),
            "{patient}: {line}"
        );
    }
}

/// Waits until every UID of `acknowledged` is among those `processed` returns; panics
/// with how many are missing and the node's log after `timeout`.
pub fn wait_until_processed(
    node: &NodeProcess,
    acknowledged: &std::collections::HashSet<String>,
    processed: impl Fn() -> std::collections::HashSet<String>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = processed();
        if acknowledged.is_subset(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged instances were not processed; log:\n{}",
            acknowledged.difference(&done).count(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The instance files (`.dcm`) below `dir` once there are `count` of them: a node with
/// a write-ahead log writes them from the log when it is quiet (a checkpoint). Panics
/// with how many there were after `timeout`.
pub fn wait_for_instance_files(dir: &Path, count: usize, timeout: Duration) -> Vec<PathBuf> {
    let start = Instant::now();
    loop {
        let files: Vec<PathBuf> = files_under(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .collect();
        if files.len() == count {
            return files;
        }
        assert!(
            start.elapsed() < timeout,
            "{} of {count} instance files in {}",
            files.len(),
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bytes process `pid` has passed to `write` so far (`wchar` of /proc/PID/io): how far
/// a node has got writing what it receives, to its log or to files.
pub fn bytes_written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: ").map(str::to_string))
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// The SOP Instance UIDs listed in a record the test node wrote (the lines after pid,
/// cwd and count that are not `name=value`, such as `origin=`).
pub fn record_uids(record: &str) -> Vec<String> {
    record
        .lines()
        .skip(3)
        .filter(|l| !l.is_empty() && !l.contains('='))
        .map(str::to_string)
        .collect()
}

/// A dicom-ul association proposing CT Image Storage in Explicit VR LE as context 1, for
/// tests that need to send what a well-behaved SCU never would.
pub fn raw_ct_association(
    node: &NodeProcess,
    calling: &str,
) -> dicomnode_server::dicom_ul::ClientAssociation<std::net::TcpStream> {
    dicomnode_server::dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title(calling.to_string())
        .called_ae_title("TEST_NODE")
        .with_presentation_context("1.2.840.10008.5.1.4.1.1.2", vec!["1.2.840.10008.1.2.1"])
        .establish(("127.0.0.1", node.port))
        .unwrap()
}

/// One P-DATA PDU holding a C-STORE request for `sop` and `data` as its data set fragment.
pub fn store_pdu(
    id: u16,
    sop: &str,
    data: Vec<u8>,
    data_is_last: bool,
) -> dicomnode_server::dicom_ul::Pdu {
    use dicomnode_server::dicom_ul::pdu::{PDataValue, PDataValueType};
    let command = dicomnode_server::dimse::store_request(id, "1.2.840.10008.5.1.4.1.1.2", sop);
    let fragment = |value_type, is_last, data| PDataValue {
        presentation_context_id: 1,
        value_type,
        is_last,
        data,
    };
    dicomnode_server::dicom_ul::Pdu::PData {
        data: vec![
            fragment(PDataValueType::Command, true, command),
            fragment(PDataValueType::Data, data_is_last, data),
        ],
    }
}

/// The SOP Instance UIDs that DCMTK `storescu -v` saw acknowledged with success, read
/// from its output (each "Sending file" line names the file the next response is for).
pub fn storescu_acknowledged(output: &str) -> Vec<String> {
    let mut current: Option<PathBuf> = None;
    let mut uids = Vec::new();
    for line in output.lines() {
        if let Some(file) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(file));
        } else if line.contains("Received Store Response (Success)") {
            if let Some(file) = current.take() {
                let obj = dicomnode_server::dicom_object::open_file(&file)
                    .expect("storescu sent a readable file");
                let uid = dicomnode_server::input::value_of(
                    &obj,
                    dicomnode_server::dicom_dictionary_std::tags::SOP_INSTANCE_UID,
                )
                .expect("the file has a SOP Instance UID");
                uids.push(dicomnode_server::uid::trim_uid(&uid).to_string());
            }
        }
    }
    uids
}
