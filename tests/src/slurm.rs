//! A real one-machine Slurm cluster for integration tests: Debian's `slurm-wlm` (Slurm
//! 22.05) and `munge`, run as root without systemd or cgroups.
//!
//! [`SlurmCluster::start`] writes a `slurm.conf` of its own into a fresh temporary
//! directory (state, spool, pid files, logs and the job-completion log all inside it), with
//! free TCP ports for `SlurmctldPort` and `SlurmdPort`, and starts `slurmctld` and `slurmd`
//! in the foreground (`-D`) as children of the test process; dropping the cluster ends them
//! by PID, then every process left from its jobs, then removes the directory. Clients (and a
//! node under test) reach the cluster with `SLURM_CONF` set to [`SlurmCluster::conf`];
//! [`SlurmCluster::command`] sets it.
//!
//! Several clusters may run at once, in one test process or in several: each has its own
//! ports, directories and configuration. They all use the host name (`hostname -s`) as
//! `NodeName` (checked by hand: two clusters with the same node name, on different ports and
//! spool directories, run jobs side by side). `munged` is a system daemon that every cluster
//! shares: [`SlurmCluster::start`] starts it once if `munge -n | unmunge` fails, and it keeps
//! running after the tests, like a system service.
//!
//! What the configuration settles (measured on this machine; `shared/notes/
//! slurm-observed.md` has the details and the raw outputs):
//!
//! - A job without `--mem` gets `DefMemPerCPU` (half the node's memory per CPU), so two
//!   one-CPU jobs can run at once on the node's 2 CPUs.
//! - Memory limits are enforced without cgroups by `jobacct_gather/linux` sampling every
//!   second with `OverMemoryKill`: a job over its `--mem` is killed with SIGKILL within about
//!   a second and ends as `FAILED` with `ExitCode=0:9` (not `OUT_OF_MEMORY`, which needs
//!   cgroups); its output file holds `... exceeded memory limit (N > M), being killed`.
//! - Time limits are counted in whole minutes (`-t 0:05` is a 1-minute limit), and slurmctld
//!   checks them every 30 s (a compiled-in period, no setting shortens it): a job with a
//!   1-minute limit ends as `TIMEOUT` 60 to 90 s after it started. `KillWait=2` leaves 2 s
//!   between SIGTERM and SIGKILL.
//! - Finished jobs stay visible to `scontrol show job` for `MinJobAge=300` s (then up to
//!   60 s more until the purge runs); `jobcomp/filetxt` keeps one line per finished job in
//!   [`SlurmCluster::jobcomp_log`] for good (`sacct -c` reads it; plain `sacct` does not
//!   work: accounting storage is off).
//! - `batch_sched_delay=0`: a submitted batch job starts within about a second (the default
//!   delays it up to 3 s).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the daemons may take until the node is idle.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `munged` may take to answer after it was started.
const MUNGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How many times [`SlurmCluster::start`] tries again with other ports when a daemon finds
/// its port taken (another test took it between our check and the daemon's bind).
const PORT_ATTEMPTS: usize = 3;

/// The job states after which a job does not change any more.
pub const FINAL_STATES: &[&str] = &[
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
];

/// A running one-node Slurm cluster of its own (slurmctld and slurmd as child processes);
/// stopped, with every process of its jobs, and its directory removed, when dropped.
pub struct SlurmCluster {
    slurmctld: Child,
    slurmd: Child,
    conf: PathBuf,
    node_name: String,
    slurmctld_port: u16,
    slurmd_port: u16,
    // Last: removed after `drop` has ended every process that may write into it.
    dir: tempfile::TempDir,
}

impl SlurmCluster {
    /// Starts a cluster with the default configuration (see the module documentation) and
    /// waits until its node is idle. Makes sure `munged` runs first.
    pub fn start() -> Result<SlurmCluster, String> {
        Self::start_with(&[])
    }

    /// As [`SlurmCluster::start`], with these `slurm.conf` settings replacing the defaults
    /// of the same name or added to them (e.g. `[("MinJobAge", "5")]`, `[("KillWait", "10")]`).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<SlurmCluster, String> {
        ensure_munged()?;
        let mut attempt = 1;
        loop {
            match Self::try_start(settings) {
                Ok(cluster) => return Ok(cluster),
                Err(StartError::PortTaken(message)) if attempt < PORT_ATTEMPTS => {
                    tracing::warn!("slurm: a port was taken, starting again: {message}");
                    attempt += 1;
                }
                Err(StartError::PortTaken(message) | StartError::Other(message)) => {
                    return Err(message)
                }
            }
        }
    }

    fn try_start(settings: &[(&str, &str)]) -> Result<SlurmCluster, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("slurm-")
            .tempdir()
            .map_err(|e| StartError::Other(format!("a temporary directory: {e}")))?;
        for sub in ["state", "spool"] {
            std::fs::create_dir(dir.path().join(sub))
                .map_err(|e| StartError::Other(format!("creating {sub} in the cluster: {e}")))?;
        }
        let node_name = short_hostname().map_err(StartError::Other)?;
        let slurmctld_port = crate::free_port();
        let mut slurmd_port = crate::free_port();
        while slurmd_port == slurmctld_port {
            slurmd_port = crate::free_port();
        }
        let conf = dir.path().join("slurm.conf");
        let text = config_text(
            dir.path(),
            &node_name,
            slurmctld_port,
            slurmd_port,
            memory_mib().map_err(StartError::Other)?,
            settings,
        );
        std::fs::write(&conf, text)
            .map_err(|e| StartError::Other(format!("writing {}: {e}", conf.display())))?;

        let slurmctld = spawn_daemon(
            "/usr/sbin/slurmctld",
            &["-D", "-f"],
            &conf,
            &dir.path().join("slurmctld.stderr"),
        )
        .map_err(StartError::Other)?;
        let slurmd = match spawn_daemon(
            "/usr/sbin/slurmd",
            &["-D", "-N", &node_name, "-f"],
            &conf,
            &dir.path().join("slurmd.stderr"),
        ) {
            Ok(child) => child,
            Err(message) => {
                stop_child(slurmctld);
                return Err(StartError::Other(message));
            }
        };
        let mut cluster = SlurmCluster {
            slurmctld,
            slurmd,
            conf,
            node_name,
            slurmctld_port,
            slurmd_port,
            dir,
        };
        match cluster.wait_until_idle() {
            Ok(()) => Ok(cluster),
            Err(message) => {
                let logs = cluster.log_tails(30);
                let message = format!("{message}\n{logs}");
                // Dropping the cluster ends the daemons and removes the directory.
                drop(cluster);
                if message.contains("Address already in use") {
                    Err(StartError::PortTaken(message))
                } else {
                    Err(StartError::Other(message))
                }
            }
        }
    }

    /// Waits until slurmctld listens and `sinfo` shows the node `idle`.
    fn wait_until_idle(&mut self) -> Result<(), String> {
        let start = Instant::now();
        // Clients retry for 9 s or more while nothing listens: ask only once it does.
        while std::net::TcpStream::connect(("127.0.0.1", self.slurmctld_port)).is_err() {
            self.check_daemons()?;
            if start.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "slurmctld does not listen on port {} after {START_TIMEOUT:?}",
                    self.slurmctld_port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            self.check_daemons()?;
            let output = self
                .command("sinfo")
                .args(["-h", "-o", "%T", "-n", &self.node_name])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running sinfo: {e}"))?;
            let last = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            if output.status.success() && last == "idle" {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "the node is not idle after {START_TIMEOUT:?}; sinfo says {last:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An error if a daemon has exited.
    fn check_daemons(&mut self) -> Result<(), String> {
        for (name, child) in [
            ("slurmctld", &mut self.slurmctld),
            ("slurmd", &mut self.slurmd),
        ] {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited ({status}) while starting"));
            }
        }
        Ok(())
    }

    /// The cluster's `slurm.conf`: clients and a node under test need `SLURM_CONF` set to it.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The cluster's directory (configuration, state, spool, logs); a good place for job
    /// output files. Removed when the cluster is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node's name (the host's short name) and the only node of partition `debug`.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// slurmctld's TCP port (`SlurmctldPort`).
    pub fn slurmctld_port(&self) -> u16 {
        self.slurmctld_port
    }

    /// slurmd's TCP port (`SlurmdPort`).
    pub fn slurmd_port(&self) -> u16 {
        self.slurmd_port
    }

    /// The job-completion log (`jobcomp/filetxt`): one line per finished job, kept after
    /// the job is purged from slurmctld's memory (`JobId=.. ... JobState=.. ... ExitCode=..`).
    pub fn jobcomp_log(&self) -> PathBuf {
        self.dir().join("jobcomp.txt")
    }

    /// A Slurm client, `/usr/bin/TOOL` (`sbatch`, `squeue`, `scontrol`, `scancel`, `sinfo`,
    /// `sacct`), with `SLURM_CONF` set to this cluster's configuration.
    pub fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(format!("/usr/bin/{tool}"));
        command.env("SLURM_CONF", &self.conf);
        command
    }

    /// Submits a batch job: `sbatch --parsable ARGS`; returns its job id.
    pub fn submit(&self, args: &[&str]) -> Result<u64, String> {
        let output = self
            .command("sbatch")
            .arg("--parsable")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running sbatch: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "sbatch {args:?} failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        // `--parsable` prints "ID" or "ID;CLUSTER".
        stdout
            .trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| format!("sbatch printed no job id: {stdout:?}"))
    }

    /// The fields of `scontrol show job -o ID` (`JobState`, `Reason`, `ExitCode`, ...), or
    /// `None` if slurmctld does not know the job (never submitted, or purged `MinJobAge`
    /// after its end). Values are split at spaces: one with a space (a path) is cut there.
    pub fn job(&self, id: u64) -> Result<Option<HashMap<String, String>>, String> {
        let output = self
            .command("scontrol")
            .args(["show", "job", "-o", &id.to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running scontrol: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            if stderr.contains("Invalid job id specified") {
                return Ok(None);
            }
            return Err(format!(
                "scontrol show job {id} failed ({}): {stdout}{stderr}",
                output.status
            ));
        }
        Ok(Some(parse_fields(&stdout)))
    }

    /// Waits until job `id` is in one of [`FINAL_STATES`]; returns its fields (as
    /// [`SlurmCluster::job`]). An error after `timeout`, with the job's last fields.
    pub fn wait_for_end(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<HashMap<String, String>, String> {
        self.wait_for_job(id, timeout, |state| FINAL_STATES.contains(&state))
    }

    /// Waits until `pred` holds for the `JobState` of job `id`; returns the job's fields.
    pub fn wait_for_job(
        &self,
        id: u64,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<HashMap<String, String>, String> {
        let start = Instant::now();
        loop {
            let fields = self.job(id)?;
            if let Some(fields) = &fields {
                if fields.get("JobState").is_some_and(|state| pred(state)) {
                    return Ok(fields.clone());
                }
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "job {id} did not reach the state after {timeout:?}; last: {fields:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of the daemons' logs and standard error, for error messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for name in [
            "slurmctld.log",
            "slurmctld.stderr",
            "slurmd.log",
            "slurmd.stderr",
        ] {
            let log = read_text(&self.dir().join(name));
            let all: Vec<&str> = log.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            text.push_str(&format!("--- {name} (last {} lines)\n", tail.len()));
            for line in tail {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// The processes of this cluster other than the two daemons we started: slurmstepd
    /// (which keeps a descriptor on our slurmd log), daemons reading our configuration, job
    /// processes (whose environment has our `SLURM_CONF` and a `SLURM_JOB_ID`), and all their
    /// descendants. Zombies are left out: they are gone but for their parent's `wait`.
    pub fn leftover_processes(&self) -> Vec<i32> {
        let own = std::process::id();
        let dir = self.dir().to_path_buf();
        let conf_var = format!("SLURM_CONF={}", self.conf.display()).into_bytes();
        let conf_arg = self.conf.to_string_lossy().into_owned();
        let processes = list_processes();
        let mut found: Vec<i32> = processes
            .iter()
            .filter(|p| p.pid as u32 != own)
            .filter(|p| {
                let daemon = p.cmdline.starts_with("slurmstepd")
                    || p.cmdline.contains("slurmscriptd")
                    || p.cmdline.starts_with("/usr/sbin/slurm");
                (daemon && (p.cmdline.contains(&conf_arg) || has_fd_under(p.pid, &dir)))
                    || is_job_of(p.pid, &conf_var)
            })
            .map(|p| p.pid)
            .collect();
        // Descendants, until no more are added.
        loop {
            let before = found.len();
            for p in &processes {
                if found.contains(&p.ppid) && !found.contains(&p.pid) && p.pid as u32 != own {
                    found.push(p.pid);
                }
            }
            if found.len() == before {
                return found;
            }
        }
    }
}

impl Drop for SlurmCluster {
    /// SIGTERM to slurmd and slurmctld, SIGKILL after 2 s; then SIGKILL to whatever is left
    /// of the cluster's jobs (slurmstepd and the job processes outlive slurmd); the
    /// directory goes last.
    fn drop(&mut self) {
        for child in [&mut self.slurmd, &mut self.slurmctld] {
            // Not one that has exited and been reaped: its PID may be another's by now.
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for child in [&mut self.slurmd, &mut self.slurmctld] {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftover_processes();
            if left.is_empty() || Instant::now() > deadline {
                if !left.is_empty() {
                    tracing::warn!("slurm: processes {left:?} outlived SIGKILL");
                }
                break;
            }
            for pid in left {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Why one attempt to start a cluster failed.
enum StartError {
    /// A daemon could not bind its port: worth another attempt with other ports.
    PortTaken(String),
    /// Anything else.
    Other(String),
}

/// The `slurm.conf` of a cluster in `dir`.
fn config_text(
    dir: &Path,
    node: &str,
    slurmctld_port: u16,
    slurmd_port: u16,
    machine_mib: u64,
    overrides: &[(&str, &str)],
) -> String {
    let d = dir.display();
    let cpus: u64 = 2;
    // Below the machine's memory (slurmd refuses a node that has less than configured).
    let real_memory = (machine_mib * 9 / 10).max(cpus);
    let mut settings: Vec<(String, String)> = [
        ("ClusterName", format!("dn{slurmctld_port}")),
        ("SlurmctldHost", format!("{node}(127.0.0.1)")),
        ("SlurmctldPort", slurmctld_port.to_string()),
        ("SlurmdPort", slurmd_port.to_string()),
        ("SlurmUser", "root".into()),
        ("SlurmdUser", "root".into()),
        ("AuthType", "auth/munge".into()),
        ("StateSaveLocation", format!("{d}/state")),
        ("SlurmdSpoolDir", format!("{d}/spool")),
        ("SlurmctldPidFile", format!("{d}/slurmctld.pid")),
        ("SlurmdPidFile", format!("{d}/slurmd.pid")),
        ("SlurmctldLogFile", format!("{d}/slurmctld.log")),
        ("SlurmdLogFile", format!("{d}/slurmd.log")),
        ("ProctrackType", "proctrack/linuxproc".into()),
        ("TaskPlugin", "task/none".into()),
        ("MpiDefault", "none".into()),
        ("MailProg", "/bin/true".into()),
        ("ReturnToService", "2".into()),
        // The node's resources as configured, whatever the hardware says.
        ("SlurmdParameters", "config_overrides".into()),
        ("SelectType", "select/cons_tres".into()),
        ("SelectTypeParameters", "CR_Core_Memory".into()),
        ("DefMemPerCPU", (real_memory / cpus).to_string()),
        // Memory limits without cgroups: sample every second, kill a job over --mem.
        ("JobAcctGatherType", "jobacct_gather/linux".into()),
        ("JobAcctGatherFrequency", "1".into()),
        ("JobAcctGatherParams", "OverMemoryKill".into()),
        // A line per finished job, kept after MinJobAge.
        ("JobCompType", "jobcomp/filetxt".into()),
        ("JobCompLoc", format!("{d}/jobcomp.txt")),
        ("MinJobAge", "300".into()),
        // SIGTERM to SIGKILL at a time limit or scancel.
        ("KillWait", "2".into()),
        // Start batch jobs at once (the default waits up to 3 s).
        ("SchedulerParameters", "batch_sched_delay=0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (key, value) in overrides {
        match settings
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            Some(setting) => setting.1 = value.to_string(),
            None => settings.push((key.to_string(), value.to_string())),
        }
    }
    let mut text = String::from("# Written by dicomnode-tests' SlurmCluster.\n");
    for (key, value) in settings {
        text.push_str(&format!("{key}={value}\n"));
    }
    text.push_str(&format!(
        "NodeName={node} NodeHostname={node} NodeAddr=127.0.0.1 CPUs={cpus} \
         RealMemory={real_memory} State=UNKNOWN\n\
         PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    ));
    text
}

/// Starts `exe ARGS CONF` with `SLURM_CONF=CONF`, its standard output and error into `log`.
fn spawn_daemon(exe: &str, args: &[&str], conf: &Path, log: &Path) -> Result<Child, String> {
    let file =
        std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let second = file
        .try_clone()
        .map_err(|e| format!("a second handle on {}: {e}", log.display()))?;
    Command::new(exe)
        .args(args)
        .arg(conf)
        .env("SLURM_CONF", conf)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(second)
        .spawn()
        .map_err(|e| format!("cannot start {exe}: {e} (is slurm-wlm installed?)"))
}

/// SIGTERM, 2 s, SIGKILL; reaps the child.
fn stop_child(mut child: Child) {
    if matches!(child.try_wait(), Ok(None)) {
        signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// `Key=Value Key=Value ...` as a map (a value ends at the next space).
fn parse_fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The host's name up to the first dot, as `hostname -s` prints it.
fn short_hostname() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("reading the host name: {e}"))?;
    let name = name
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return Err("the host has no name".into());
    }
    Ok(name)
}

/// The machine's memory in MiB (`MemTotal`, as slurmd counts it).
fn memory_mib() -> Result<u64, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("reading /proc/meminfo: {e}"))?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .ok_or_else(|| "no MemTotal in /proc/meminfo".to_string())
}

fn read_text(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// One process as /proc shows it.
struct ProcessInfo {
    pid: i32,
    ppid: i32,
    /// The arguments joined with spaces.
    cmdline: String,
}

/// Every process but zombies.
fn list_processes() -> Vec<ProcessInfo> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or_default();
        if state == "Z" || state == "X" {
            continue;
        }
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                String::from_utf8_lossy(&raw)
                    .replace('\0', " ")
                    .trim_end()
                    .to_string()
            })
            .unwrap_or_default();
        processes.push(ProcessInfo { pid, ppid, cmdline });
    }
    processes
}

/// Whether process `pid` has a file under `dir` open.
fn has_fd_under(pid: i32, dir: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
}

/// Whether process `pid` runs in a job of the cluster whose `SLURM_CONF=...` is `conf_var`
/// (slurmstepd sets both variables in a job's environment, `--export=NONE` or not).
fn is_job_of(pid: i32, conf_var: &[u8]) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut conf = false;
    let mut job = false;
    for var in environ.split(|&b| b == 0) {
        conf |= var == conf_var;
        job |= var.starts_with(b"SLURM_JOB_ID=");
    }
    conf && job
}

/// Serializes the munged check-and-start of the threads of this process (a file lock does
/// it across processes).
static MUNGE_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure `munged` answers: starts it (as user munge, as the Debian package would) if
/// `munge -n | unmunge` fails, creating its directories and key first if missing. munged
/// is a system daemon shared by every cluster and stays running.
pub fn ensure_munged() -> Result<(), String> {
    if munge_works() {
        return Ok(());
    }
    let _guard = MUNGE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/dicomnode-tests-munged.lock")
        .map_err(|e| format!("opening the munged lock file: {e}"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking the munged lock file: {e}"))?;
    if munge_works() {
        return Ok(());
    }
    let dirs = [
        "/etc/munge",
        "/run/munge",
        "/var/lib/munge",
        "/var/log/munge",
    ];
    for dir in dirs {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
    }
    let key = Path::new("/etc/munge/munge.key");
    if !key.exists() {
        let mut bytes = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("reading /dev/urandom: {e}"))?;
        std::fs::write(key, &bytes).map_err(|e| format!("writing {}: {e}", key.display()))?;
    }
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o400))
        .map_err(|e| format!("chmod 400 {}: {e}", key.display()))?;
    run_checked(Command::new("chown").args(["-R", "munge:munge"]).args(dirs))?;
    // munged daemonizes: `su` returns once it runs, and it is not our child.
    run_checked(Command::new("su").args(["-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"]))?;
    let start = Instant::now();
    while !munge_works() {
        if start.elapsed() > MUNGE_TIMEOUT {
            return Err(format!(
                "munged was started but `munge -n | unmunge` still fails after {MUNGE_TIMEOUT:?}; \
                 its log:\n{}",
                read_text(Path::new("/var/log/munge/munged.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether `munge -n | unmunge` succeeds.
fn munge_works() -> bool {
    let Ok(credential) = Command::new("/usr/bin/munge")
        .arg("-n")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    if !credential.status.success() {
        return false;
    }
    let Ok(mut unmunge) = Command::new("/usr/bin/unmunge")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = unmunge.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(&credential.stdout);
    }
    unmunge.wait().is_ok_and(|status| status.success())
}

/// Runs `command`; an error with its output unless it succeeds.
fn run_checked(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
