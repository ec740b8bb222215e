//! Command-line flags every node binary shares, for clap: flatten [`NodeArgs`] into your
//! own `Parser` and turn it into a [`NodeConfig`].
//!
//! ```
//! use clap::Parser;
//! use dicomnode_server::cli::NodeArgs;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     node: NodeArgs,
//! }
//!
//! let args = Args::parse_from(["node", "--port", "104", "--ae-title", "MY_NODE", "--data-dir", "/var/lib/node"]);
//! let config = args.node.config("DEFAULT_AE");
//! assert_eq!(config.ae_title, "MY_NODE");
//! assert_eq!(config.bind.port(), 104);
//! ```

use crate::config::{ExpiryAction, NodeConfig, ServerTls};
use dicomnode_core::RetryPolicy;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The flags of a node: address, AE title, storage, failure policy, expiry.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// TCP port to listen on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 11112)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The node's AE title; associations must call it (default: the program's own).
    #[arg(long)]
    pub ae_title: Option<String>,
    /// Accept associations only from this calling AE title (repeat for several; default:
    /// any).
    #[arg(long = "allow-calling")]
    pub allow_calling: Vec<String>,
    /// Store instances durably here (default: in memory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Processing attempts per patient before it is quarantined.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Seconds before the second attempt (doubled before each further one).
    #[arg(long, default_value_t = 30.0)]
    pub retry_backoff: f64,
    /// Days without a new instance after which a patient without enough expires.
    #[arg(long, default_value_t = 14.0)]
    pub expiry_days: f64,
    /// What happens to an expired patient.
    #[arg(long, value_enum, default_value_t = ExpiryChoice::Remove)]
    pub expiry_action: ExpiryChoice,
    /// With --data-dir: refuse new associations (transiently) above this fraction of the
    /// data directory's file system in use.
    #[arg(long, default_value_t = 0.95)]
    pub disk_watermark: f64,
    /// At most this many processing children at once (default: the number of cores);
    /// 1 processes strictly one patient at a time (e.g. for one GPU).
    #[arg(long)]
    pub max_children: Option<usize>,
    /// Seconds a patient's processing may take before its child (and everything it
    /// started) is killed.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Memory limit of each child (address space), in MiB.
    #[arg(long)]
    pub memory_limit_mb: Option<u64>,
    /// Warm workers: a child processes up to this many patients, one after another,
    /// before it is replaced (default: a fresh child per patient).
    #[arg(long)]
    pub warm_patients: Option<u32>,
    /// Seconds running associations and children get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// Process a patient only once no instance arrived for it for this many seconds
    /// (for senders that use one association per instance).
    #[arg(long)]
    pub quiet_secs: Option<f64>,
    /// Without --data-dir: the most one instance may take in memory, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub max_instance_mb: u64,
    /// Also write the log to daily rolling files in this directory.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Seconds between maintenance rounds (expiry, requeued batches).
    #[arg(long, default_value_t = 5.0)]
    pub maintenance_secs: f64,
    /// Connections served at once; beyond, a peer gets a transient A-ASSOCIATE-RJ (local
    /// limit exceeded) and may try again later.
    #[arg(long, default_value_t = 32)]
    pub max_associations: usize,
    /// Seconds a peer may take from connecting to a complete association request (DCMTK's
    /// ACSE time-out is 30 s too).
    #[arg(long, default_value_t = 30.0)]
    pub acse_timeout: f64,
    /// Seconds one PDU may take from its first byte to its last (a PDU is at most
    /// 256 KiB: 30 s allows a peer as slow as 9 kB/s).
    #[arg(long, default_value_t = 30.0)]
    pub pdu_timeout: f64,
    /// Where children make their working directories (default: the system's temporary
    /// directory). A node removes there, at start-up, what nodes that are gone left.
    #[arg(long)]
    pub work_root: Option<PathBuf>,
    /// Seconds an association may stay silent between PDUs before it is aborted.
    #[arg(long, default_value_t = 120.0)]
    pub idle_timeout: f64,
    /// TLS on the listening port: the node's certificate (PEM). With --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: the CAs (PEM) whose client certificates are accepted.
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// With TLS: refuse clients without a certificate signed by --tls-ca (mutual TLS).
    #[arg(long, requires = "tls_ca")]
    pub tls_require_client_cert: bool,
    /// With TLS: listen with TLS on this port and in plain TCP on --port both (0 picks a
    /// free port). Without it, --port is TLS only.
    #[arg(long, requires = "tls_cert")]
    pub tls_port: Option<u16>,
}

/// `--expiry-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExpiryChoice {
    /// Delete the patient's instances.
    Remove,
    /// Move them to the quarantine.
    Quarantine,
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

impl NodeArgs {
    /// The node configuration the flags describe; `default_ae_title` unless `--ae-title`.
    pub fn config(&self, default_ae_title: &str) -> NodeConfig {
        let ae_title = self.ae_title.as_deref().unwrap_or(default_ae_title);
        let mut config = NodeConfig::new(ae_title).bind(SocketAddr::new(self.host, self.port));
        config.data_dir = self
            .data_dir
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or(d.clone()));
        config.failure = RetryPolicy::new(self.attempts.max(1), seconds(self.retry_backoff));
        config.expiry = Some(seconds(self.expiry_days * 24.0 * 3600.0));
        config.expiry_action = match self.expiry_action {
            ExpiryChoice::Remove => ExpiryAction::Remove,
            ExpiryChoice::Quarantine => ExpiryAction::Quarantine,
        };
        config.maintenance_interval = seconds(self.maintenance_secs);
        config.disk_watermark = self.disk_watermark;
        config.allowed_calling_ae_titles = self.allow_calling.clone();
        if let Some(max) = self.max_children {
            config.children.max_children = max.max(1);
        }
        config.children.time_limit = self.time_limit.map(seconds);
        config.children.memory_limit = self.memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20));
        config.children.warm_patients = self.warm_patients.filter(|n| *n > 0);
        config.shutdown_grace = seconds(self.shutdown_grace);
        config.log_dir = self.log_dir.clone();
        config.quiet_period = self.quiet_secs.map(seconds);
        config.max_instance_in_memory = self.max_instance_mb.saturating_mul(1 << 20);
        config.max_associations = self.max_associations.max(1);
        config.acse_timeout = seconds(self.acse_timeout);
        config.pdu_timeout = seconds(self.pdu_timeout);
        config.association_timeout = seconds(self.idle_timeout);
        config.work_root = self.work_root.clone();
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_ca.clone(),
                require_client_cert: self.tls_require_client_cert,
                listen: self.tls_port.map(|port| SocketAddr::new(self.host, port)),
            }),
            _ => None,
        };
        config
    }
}
