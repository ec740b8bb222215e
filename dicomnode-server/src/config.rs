//! The node's settings: where it listens, who it is, how it keys patients, and the
//! settings types the subsystems share. A leaf: it imports no other module of the node.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicomnode_core::RetryPolicy;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use dicomnode_core::address::ClientTls;

/// How a node serves. Build it with [`NodeConfig::new`] and the setters.
///
/// ```
/// use dicomnode_server::NodeConfig;
/// let config = NodeConfig::new("MY_NODE").bind("127.0.0.1:11112".parse().unwrap());
/// assert_eq!(config.ae_title, "MY_NODE");
/// ```
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's AE title; associations calling another title are rejected when
    /// `check_called_ae_title` is set.
    pub ae_title: String,
    /// The address to listen on (port 0 picks a free port; the log says which).
    pub bind: SocketAddr,
    /// Reject associations whose called AE title is not `ae_title`.
    pub check_called_ae_title: bool,
    /// Calling AE titles allowed to associate; empty: any.
    pub allowed_calling_ae_titles: Vec<String>,
    /// The tag whose value groups instances into patients (PatientID by default).
    pub patient_key: Tag,
    /// The maximum PDU length the node accepts.
    pub max_pdu_length: u32,
    /// How long an association may stay silent between PDUs before it is aborted.
    pub association_timeout: Duration,
    /// The executable re-executed for each patient (the node's own by default).
    pub worker_exe: Option<PathBuf>,
    /// Where children make their temporary working directories (the system's by default).
    pub work_root: Option<PathBuf>,
    /// Durable storage: every accepted instance is written here (and fsynced) before its
    /// success status is sent, and the node rebuilds its state from it at start-up.
    /// `None`: in memory.
    pub data_dir: Option<PathBuf>,
    /// How often a failed processing is tried again before the patient is quarantined
    /// (3 attempts, 30 s then 60 s apart, by default).
    pub failure: RetryPolicy,
    /// A patient that gets no new instance for this long without having enough expires.
    pub expiry: Option<Duration>,
    /// Whether an expired patient is removed or quarantined.
    pub expiry_action: ExpiryAction,
    /// With a data directory: above this fraction of its file system in use, new
    /// associations are refused (transiently) until space is freed.
    pub disk_watermark: f64,
    /// How often expiry and requeued batches are looked at.
    pub maintenance_interval: Duration,
    /// How many children at once, their limits, warm workers.
    pub children: ChildPolicy,
    /// Where patients' processing runs: local children (the default) or Slurm jobs.
    pub executor: ExecutorChoice,
    /// On SIGINT/SIGTERM: how long running associations and children may take to finish.
    pub shutdown_grace: Duration,
    /// Also log to daily rolling files here (the log goes to stdout either way).
    pub log_dir: Option<PathBuf>,
    /// Take a patient out only once no instance arrived for it for this long (for
    /// senders that use one association per instance); `None`: at the end of the
    /// association that completed it.
    pub quiet_period: Option<Duration>,
    /// Without a data directory: the most one instance may take in memory, in bytes
    /// (larger ones are refused with "out of resources").
    pub max_instance_in_memory: u64,
    /// Connections served at once (associations, and peers still negotiating one); a
    /// connection beyond is answered with a transient A-ASSOCIATE-RJ.
    pub max_associations: usize,
    /// How long a peer may take from connecting to a complete A-ASSOCIATE-RQ (and, with
    /// TLS, the handshake).
    pub acse_timeout: Duration,
    /// How long one PDU may take from its first byte to its last.
    pub pdu_timeout: Duration,
    /// TLS on the listening port; `None`: plain TCP.
    pub tls: Option<ServerTls>,
    /// Where the status listener serves `/metrics` and `/status` (none by default).
    pub http: Option<SocketAddr>,
}

/// TLS of the listening port: the node's certificate and key and, to verify clients'
/// certificates, the CAs trusted to sign them (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The node's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CAs whose client certificates are accepted; `None`: clients are not asked for one.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `client_ca` (mutual TLS).
    pub require_client_cert: bool,
    /// TLS on this address, and plain TCP on the node's `bind` both; `None`: `bind` is
    /// TLS only.
    pub listen: Option<SocketAddr>,
}

/// What happens to a patient that never gets enough within the configured age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryAction {
    /// Delete its instances.
    Remove,
    /// Move them to the quarantine (in memory: keep them aside).
    Quarantine,
}

/// Limits and modes of the processing children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildPolicy {
    /// At most this many children at once (1: strictly one patient at a time).
    pub max_children: usize,
    /// Per-patient processing time limit.
    pub time_limit: Option<Duration>,
    /// Per-child memory limit (RLIMIT_AS), bytes.
    pub memory_limit: Option<u64>,
    /// Warm workers: a child takes up to this many patients before it is replaced.
    /// `None`: a fresh child for each patient.
    pub warm_patients: Option<u32>,
}

impl Default for ChildPolicy {
    /// As many children as cores, no limits, a fresh child per patient.
    fn default() -> Self {
        ChildPolicy {
            max_children: std::thread::available_parallelism().map_or(2, |n| n.get()),
            time_limit: None,
            memory_limit: None,
            warm_patients: None,
        }
    }
}

/// Where patients' processing runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExecutorChoice {
    /// A child process on this machine per patient (or a warm worker).
    #[default]
    Local,
    /// A Slurm job per patient attempt.
    Slurm(SlurmSettings),
}

/// How patients' jobs go to a Slurm cluster. The time limit, memory limit and
/// `max_children` of [`ChildPolicy`] become the jobs' `--time`, `--mem` and the number of
/// jobs in flight at once; warm workers do not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmSettings {
    /// A directory on a file system the cluster's nodes share with this one: each job is
    /// a directory in it (the job, its instances, its script, its output). The node's
    /// executable must be reachable from the cluster's nodes at the same path.
    pub job_dir: PathBuf,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--gres` (e.g. `gpu:1`).
    pub gres: Option<String>,
    /// Further arguments passed to `sbatch` as they are.
    pub extra_args: Vec<String>,
    /// On SIGINT/SIGTERM, cancel the jobs in flight (their batches run again at the next
    /// start) instead of leaving them running (adopted at the next start).
    pub cancel_jobs_on_exit: bool,
    /// How often the controller is asked about the jobs in flight (one `squeue` for all
    /// of them); a job's report in its directory is noticed sooner.
    pub poll: Duration,
}

impl SlurmSettings {
    /// Jobs in `job_dir`, defaults otherwise (no partition, account or GRES; the
    /// controller asked every 5 s; jobs left running on exit).
    pub fn new(job_dir: impl Into<PathBuf>) -> Self {
        SlurmSettings {
            job_dir: job_dir.into(),
            partition: None,
            account: None,
            gres: None,
            extra_args: Vec::new(),
            cancel_jobs_on_exit: false,
            poll: Duration::from_secs(5),
        }
    }
}

impl NodeConfig {
    /// Defaults: listen on 127.0.0.1:11112, check the called AE title, key on PatientID.
    pub fn new(ae_title: impl Into<String>) -> Self {
        NodeConfig {
            ae_title: ae_title.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 11112)),
            check_called_ae_title: true,
            allowed_calling_ae_titles: Vec::new(),
            patient_key: tags::PATIENT_ID,
            max_pdu_length: 256 * 1024,
            association_timeout: Duration::from_secs(120),
            worker_exe: None,
            work_root: None,
            data_dir: None,
            failure: RetryPolicy::new(3, Duration::from_secs(30)),
            expiry: Some(Duration::from_secs(14 * 24 * 3600)),
            expiry_action: ExpiryAction::Remove,
            disk_watermark: 0.95,
            maintenance_interval: Duration::from_secs(5),
            children: ChildPolicy::default(),
            executor: ExecutorChoice::Local,
            shutdown_grace: Duration::from_secs(30),
            log_dir: None,
            quiet_period: None,
            max_instance_in_memory: 2 << 30,
            max_associations: 32,
            acse_timeout: Duration::from_secs(30),
            pdu_timeout: Duration::from_secs(30),
            tls: None,
            http: None,
        }
    }

    /// Stores instances durably in `dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets the listening address.
    pub fn bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Sets the tag that keys patients.
    pub fn patient_key(mut self, tag: Tag) -> Self {
        self.patient_key = tag;
        self
    }

    /// Sets where children make their working directories.
    pub fn work_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_root = Some(dir.into());
        self
    }
}
