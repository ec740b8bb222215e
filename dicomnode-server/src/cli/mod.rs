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

mod executor;

pub use executor::{ExecutorArgs, ExecutorKind};

use crate::config::{ExpiryAction, NodeConfig, ServerTls};
use crate::config_file::{ConfigError, ConfigFile};
use dicomnode_core::RetryPolicy;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The flags of a node: address, AE title, storage, failure policy, expiry. Each can also
/// be set by an environment variable (`DICOMNODE_PORT`, ...) or in a configuration file
/// (`--config node.toml`, key `port`); a flag wins over the environment, which wins over
/// the file.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct NodeArgs {
    /// Read settings from this TOML file: top-level keys named like these flags with
    /// underscores, `[destinations]` (name = "AE@host:port") and `[pipeline]`.
    #[arg(long, env = "DICOMNODE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (flags, environment and file merged) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// TCP port to listen on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 11112, env = "DICOMNODE_PORT")]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "DICOMNODE_HOST")]
    pub host: IpAddr,
    /// The node's AE title; associations must call it (default: the program's own).
    #[arg(long, env = "DICOMNODE_AE_TITLE")]
    pub ae_title: Option<String>,
    /// Accept associations only from this calling AE title (repeat for several; default:
    /// any).
    #[arg(
        long = "allow-calling",
        env = "DICOMNODE_ALLOW_CALLING",
        value_delimiter = ','
    )]
    pub allow_calling: Vec<String>,
    /// Store instances durably here (default: in memory).
    #[arg(long, env = "DICOMNODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Processing attempts per patient before it is quarantined.
    #[arg(long, default_value_t = 3, env = "DICOMNODE_ATTEMPTS")]
    pub attempts: u32,
    /// Seconds before the second attempt (doubled before each further one).
    #[arg(long, default_value_t = 30.0, env = "DICOMNODE_RETRY_BACKOFF")]
    pub retry_backoff: f64,
    /// Days without a new instance after which a patient without enough expires.
    #[arg(long, default_value_t = 14.0, env = "DICOMNODE_EXPIRY_DAYS")]
    pub expiry_days: f64,
    /// What happens to an expired patient.
    #[arg(long, value_enum, default_value_t = ExpiryChoice::Remove, env = "DICOMNODE_EXPIRY_ACTION")]
    pub expiry_action: ExpiryChoice,
    /// With --data-dir: refuse new associations (transiently) above this fraction of the
    /// data directory's file system in use.
    #[arg(long, default_value_t = 0.95, env = "DICOMNODE_DISK_WATERMARK")]
    pub disk_watermark: f64,
    /// At most this many processing children at once (default: the number of cores);
    /// 1 processes strictly one patient at a time (e.g. for one GPU).
    #[arg(long, env = "DICOMNODE_MAX_CHILDREN")]
    pub max_children: Option<usize>,
    /// Seconds a patient's processing may take before its child (and everything it
    /// started) is killed.
    #[arg(long, env = "DICOMNODE_TIME_LIMIT")]
    pub time_limit: Option<f64>,
    /// Memory limit of each child (address space), in MiB.
    #[arg(long, env = "DICOMNODE_MEMORY_LIMIT_MB")]
    pub memory_limit_mb: Option<u64>,
    /// Warm workers: a child processes up to this many patients, one after another,
    /// before it is replaced (default: a fresh child per patient). Local children only:
    /// with `--executor slurm` each attempt is a job of its own.
    #[arg(long, env = "DICOMNODE_WARM_PATIENTS")]
    pub warm_patients: Option<u32>,
    /// Seconds running associations and children get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30.0, env = "DICOMNODE_SHUTDOWN_GRACE")]
    pub shutdown_grace: f64,
    /// Process a patient only once no instance arrived for it for this many seconds
    /// (for senders that use one association per instance).
    #[arg(long, env = "DICOMNODE_QUIET_SECS")]
    pub quiet_secs: Option<f64>,
    /// Without --data-dir: the most one instance may take in memory, in MiB.
    #[arg(long, default_value_t = 2048, env = "DICOMNODE_MAX_INSTANCE_MB")]
    pub max_instance_mb: u64,
    /// Also write the log to daily rolling files in this directory.
    #[arg(long, env = "DICOMNODE_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Seconds between maintenance rounds (expiry, requeued batches).
    #[arg(long, default_value_t = 5.0, env = "DICOMNODE_MAINTENANCE_SECS")]
    pub maintenance_secs: f64,
    /// Connections served at once; beyond, a peer gets a transient A-ASSOCIATE-RJ (local
    /// limit exceeded) and may try again later.
    #[arg(long, default_value_t = 32, env = "DICOMNODE_MAX_ASSOCIATIONS")]
    pub max_associations: usize,
    /// Seconds a peer may take from connecting to a complete association request (DCMTK's
    /// ACSE time-out is 30 s too).
    #[arg(long, default_value_t = 30.0, env = "DICOMNODE_ACSE_TIMEOUT")]
    pub acse_timeout: f64,
    /// Seconds one PDU may take from its first byte to its last (a PDU is at most
    /// 256 KiB: 30 s allows a peer as slow as 9 kB/s).
    #[arg(long, default_value_t = 30.0, env = "DICOMNODE_PDU_TIMEOUT")]
    pub pdu_timeout: f64,
    /// Where children make their working directories (default: the system's temporary
    /// directory). A node removes there, at start-up, what nodes that are gone left.
    #[arg(long, env = "DICOMNODE_WORK_ROOT")]
    pub work_root: Option<PathBuf>,
    /// Seconds an association may stay silent between PDUs before it is aborted.
    #[arg(long, default_value_t = 120.0, env = "DICOMNODE_IDLE_TIMEOUT")]
    pub idle_timeout: f64,
    /// TLS on the listening port: the node's certificate (PEM). With --tls-key.
    #[arg(long, requires = "tls_key", env = "DICOMNODE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", env = "DICOMNODE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: the CAs (PEM) whose client certificates are accepted.
    #[arg(long, requires = "tls_cert", env = "DICOMNODE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// With TLS: refuse clients without a certificate signed by --tls-ca (mutual TLS).
    #[arg(long, requires = "tls_ca", env = "DICOMNODE_TLS_REQUIRE_CLIENT_CERT")]
    pub tls_require_client_cert: bool,
    /// With TLS: listen with TLS on this port and in plain TCP on --port both (0 picks a
    /// free port). Without it, --port is TLS only.
    #[arg(long, requires = "tls_cert", env = "DICOMNODE_TLS_PORT")]
    pub tls_port: Option<u16>,
    /// Serve /metrics (Prometheus) and /status (JSON) over HTTP on this address, e.g.
    /// 127.0.0.1:9100, or a port alone for loopback (keep it on loopback or a management
    /// network).
    #[arg(long, env = "DICOMNODE_HTTP", value_parser = http_address)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Where patients' processing runs.
    #[command(flatten)]
    #[serde(flatten)]
    pub executor: ExecutorArgs,
}

/// `--expiry-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryChoice {
    /// Delete the patient's instances.
    Remove,
    /// Move them to the quarantine.
    Quarantine,
}

pub(crate) fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

/// Whether a setting was given on the command line or in its environment variable (then
/// the configuration file does not change it).
fn given_explicitly(field: &str) -> bool {
    let long = format!("--{}", field.replace('_', "-"));
    let on_command_line = std::env::args_os().any(|a| {
        a.to_str()
            .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
    });
    on_command_line || std::env::var_os(format!("DICOMNODE_{}", field.to_uppercase())).is_some()
}

/// Only the node's flags, to parse the settings of a configuration file with.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct FileSettings {
    #[command(flatten)]
    node: NodeArgs,
}

/// Copies each listed field from `file` into `args` unless given explicitly.
macro_rules! take_from_file {
    ($explicit:ident, $args:ident, $file:ident, $($field:ident),* $(,)?) => {
        $(
            if !$explicit(stringify!($field)) {
                $args.$field = $file.$field.clone();
            }
        )*
    };
}

impl NodeArgs {
    /// The settings with the configuration file's (if `--config`) where no flag or
    /// environment variable gave one.
    pub fn resolved(&self) -> Result<NodeArgs, ConfigError> {
        self.resolved_with(&given_explicitly)
    }

    /// As [`NodeArgs::resolved`], with `explicit(field)` saying which settings were given
    /// as flags or environment variables.
    pub fn resolved_with(&self, explicit: &dyn Fn(&str) -> bool) -> Result<NodeArgs, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(self.clone());
        };
        let file = ConfigFile::read(path)?;
        let known: Vec<String> = <FileSettings as clap::CommandFactory>::command()
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config" && *l != "print-config" && *l != "help")
            .map(|l| l.replace('-', "_"))
            .collect();
        let mut argv: Vec<String> = Vec::new();
        for (key, value, _line) in file.settings() {
            if !known.contains(&key) {
                return Err(file.unknown(&key, &known));
            }
            let long = format!("--{}", key.replace('_', "-"));
            let mut these: Vec<String> = Vec::new();
            match value {
                toml::Value::Boolean(true) => these.push(long.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::Array(items) => {
                    for item in items {
                        these.push(long.clone());
                        these.push(scalar(item).ok_or_else(|| {
                            file.value_error(
                                &key,
                                format!("expected a list of values, found {item}"),
                            )
                        })?);
                    }
                }
                other => {
                    these.push(long.clone());
                    these.push(scalar(other).ok_or_else(|| {
                        file.value_error(&key, format!("expected a value, found {other}"))
                    })?);
                }
            }
            // Each setting checked alone, so that an error names its key and line.
            if let Err(error) = <FileSettings as clap::Parser>::try_parse_from(&these) {
                let message = error.to_string();
                let message = message
                    .lines()
                    .next()
                    .unwrap_or("invalid value")
                    .trim_start_matches("error: ")
                    .to_string();
                return Err(file.value_error(&key, message));
            }
            argv.extend(these);
        }
        let from_file = <FileSettings as clap::Parser>::try_parse_from(&argv)
            .map_err(|e| file.value_error("(settings)", e.to_string()))?
            .node;
        let mut merged = self.clone();
        take_from_file!(
            explicit,
            merged,
            from_file,
            port,
            host,
            ae_title,
            allow_calling,
            data_dir,
            attempts,
            retry_backoff,
            expiry_days,
            expiry_action,
            disk_watermark,
            max_children,
            time_limit,
            memory_limit_mb,
            warm_patients,
            shutdown_grace,
            quiet_secs,
            max_instance_mb,
            log_dir,
            maintenance_secs,
            max_associations,
            acse_timeout,
            pdu_timeout,
            work_root,
            idle_timeout,
            tls_cert,
            tls_key,
            tls_ca,
            tls_require_client_cert,
            tls_port,
            http,
        );
        let (mut chosen, file_chosen) = (merged.executor.clone(), &from_file.executor);
        take_from_file!(
            explicit,
            chosen,
            file_chosen,
            executor,
            job_dir,
            slurm_partition,
            slurm_account,
            slurm_gres,
            slurm_arg,
            slurm_poll_secs,
            cancel_jobs_on_exit,
        );
        merged.executor = chosen;
        Ok(merged)
    }

    /// The configuration file, if `--config` names one.
    pub fn config_file(&self) -> Result<Option<ConfigFile>, ConfigError> {
        self.config.as_deref().map(ConfigFile::read).transpose()
    }

    /// The `[pipeline]` table of the configuration file deserialized into `T` (a
    /// pipeline's own struct, or a part of it); `None` without a file or table.
    pub fn pipeline<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, ConfigError> {
        match self.config_file()? {
            Some(file) => file.pipeline(),
            None => Ok(None),
        }
    }

    /// An address: `AE@host:port` as it is, or a name from the file's `[destinations]`.
    pub fn address(&self, text: &str) -> Result<dicomnode_core::Address, ConfigError> {
        if let Ok(address) = text.parse() {
            return Ok(address);
        }
        let file = self.config_file()?;
        let book = match &file {
            Some(file) => file.destinations()?,
            None => Default::default(),
        };
        book.get(text)
            .cloned()
            .ok_or_else(|| ConfigError::NoDestination {
                name: text.to_string(),
                path: file.map(|f| f.path().to_path_buf()),
            })
    }

    /// The effective configuration as TOML: the settings (flags, environment and file
    /// merged), then the file's tables.
    pub fn effective_toml(&self) -> Result<String, ConfigError> {
        let merged = self.resolved()?;
        let mut text = toml::to_string(&merged).unwrap_or_default();
        if let Some(file) = self.config_file()? {
            text.push('\n');
            text.push_str(&file.tables_text());
        }
        Ok(text)
    }

    /// The node configuration the flags, environment and configuration file describe;
    /// `default_ae_title` unless one is given. A configuration file that cannot be used
    /// ends the program with its error (as clap does with a bad flag); with
    /// `--print-config` the program prints the effective configuration and ends.
    pub fn config(&self, default_ae_title: &str) -> NodeConfig {
        let result = if self.print_config {
            self.effective_toml().map(|text| {
                print!("{text}");
                std::process::exit(0)
            })
        } else {
            self.try_config(default_ae_title)
        };
        or_exit(result)
    }

    /// As [`NodeArgs::config`], returning a configuration file's error.
    pub fn try_config(&self, default_ae_title: &str) -> Result<NodeConfig, ConfigError> {
        Ok(self.resolved()?.build(default_ae_title))
    }

    fn build(&self, default_ae_title: &str) -> NodeConfig {
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
        config.http = self.http;
        config.executor = self.executor.choice();
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

/// The value, or the end of the program with the error (exit status 2), as with a bad
/// flag: for `main`, where a configuration error means the node must not start.
pub fn or_exit<T>(result: Result<T, ConfigError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            eprintln!("error: {}", dicomnode_core::error::error_chain(&error));
            std::process::exit(2)
        }
    }
}

/// `--http`: an address, or a port alone (on loopback).
fn http_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is neither HOST:PORT nor a port"))
}

/// A TOML scalar as a flag's value.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn args(extra: &[&str], path: &Path) -> NodeArgs {
        let mut argv = vec!["node", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(extra);
        Args::parse_from(argv).node
    }

    #[test]
    fn the_file_sets_what_no_flag_or_variable_gives() {
        let (_dir, path) = file(
            "port = 4242\nae_title = \"FROM_FILE\"\nallow_calling = [\"A\", \"B\"]\nexpiry_action = \"quarantine\"\ntls_require_client_cert = false\n\n[pipeline]\nthreshold = 0.5\n",
        );
        let given = args(&["--ae-title", "FROM_FLAG"], &path);
        let merged = given.resolved_with(&|f| f == "ae_title").unwrap();
        assert_eq!(merged.port, 4242);
        assert_eq!(merged.ae_title.as_deref(), Some("FROM_FLAG"));
        assert_eq!(merged.allow_calling, vec!["A".to_string(), "B".to_string()]);
        assert_eq!(merged.expiry_action, ExpiryChoice::Quarantine);
        assert_eq!(merged.attempts, 3, "a default where neither gives one");
        let config = merged.build("DEFAULT");
        assert_eq!(config.bind.port(), 4242);
        #[derive(serde::Deserialize)]
        struct Pipeline {
            threshold: f64,
        }
        let pipeline: Pipeline = given.pipeline().unwrap().unwrap();
        assert_eq!(pipeline.threshold, 0.5);
        let text = given.effective_toml().unwrap();
        assert!(
            text.contains("port = 4242") && text.contains("[pipeline]"),
            "{text}"
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let (_dir, path) = file("# a node\nport = \"abc\"\n");
        let error = args(&[], &path)
            .resolved_with(&|_| false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("node.toml, line 2: port:"), "{error}");
        assert!(error.contains("abc"), "{error}");

        let (_dir, path) = file("port = 1\nprot = 2\n");
        let error = args(&[], &path)
            .resolved_with(&|_| false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2: unknown key \"prot\""), "{error}");
        assert!(error.contains("port"), "{error}");

        let (_dir, path) = file("port = 1\n[pipeline\n");
        let error = args(&[], &path)
            .resolved_with(&|_| false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("node.toml") && error.contains("line 2"),
            "{error}"
        );

        let (_dir, path) = file("[pipeline]\nthreshold = \"high\"\n");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Pipeline {
            threshold: f64,
        }
        let error = args(&[], &path).pipeline::<Pipeline>().unwrap_err();
        let text = dicomnode_core::error::error_chain(&error);
        assert!(
            text.contains("[pipeline]") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn destinations_are_an_address_book() {
        let (_dir, path) = file("[destinations]\npacs = \"PACS@10.0.0.1:104\"\nbad = \"nope\"\n");
        let node = args(&[], &path);
        let error = node.address("pacs").unwrap_err().to_string();
        assert!(
            error.contains("line 3") && error.contains("destinations.bad"),
            "{error}"
        );
        let (_dir, path) = file("[destinations]\npacs = \"PACS@10.0.0.1:104\"\n\n[destinations.secure]\naddress = \"ARCHIVE@10.0.0.2:2762\"\ntls_ca = \"/etc/ca.pem\"\n");
        let node = args(&[], &path);
        assert_eq!(node.address("pacs").unwrap().port, 104);
        let secure = node.address("secure").unwrap();
        assert_eq!(secure.port, 2762);
        assert_eq!(secure.tls.unwrap().ca, PathBuf::from("/etc/ca.pem"));
        assert_eq!(
            Args::parse_from(["node", "--http", "9100"]).node.http,
            Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        assert_eq!(node.address("X@127.0.0.1:11112").unwrap().ae_title, "X");
        assert!(node
            .address("archive")
            .unwrap_err()
            .to_string()
            .contains("no destination \"archive\""));
    }
}
