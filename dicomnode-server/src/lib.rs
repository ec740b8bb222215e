//! A DICOM pipeline node: receives instances over C-STORE, sorts them per patient into the
//! inputs a [`Pipeline`] declares, and when a patient has enough, runs the pipeline's
//! [`Processor`] in a child process of its own, in a temporary working directory that is
//! removed afterwards.
//!
//! This is the one crate a node depends on: it re-exports the model (`dicomnode-core`)
//! and the derive.
//!
//! ```no_run
//! use dicomnode_server::{FileOutput, InputContainer, NodeConfig, Output, Pipeline, ProcessError, Processor};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Pipeline, Serialize, Deserialize)]
//! #[pipeline(processor = WriteFiles)]
//! struct StoreNode {
//!     out: std::path::PathBuf,
//! }
//!
//! struct WriteFiles;
//!
//! impl Processor for WriteFiles {
//!     type Pipeline = StoreNode;
//!     fn build(_: &StoreNode) -> Result<Self, ProcessError> {
//!         Ok(WriteFiles)
//!     }
//!     fn process(&mut self, node: &StoreNode, input: InputContainer) -> Result<Output, ProcessError> {
//!         Ok(FileOutput::new(&node.out, input.into_instances()).into())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // In a processing child this runs the job and never calls the closure.
//!     dicomnode_server::run(|| (StoreNode { out: "out".into() }, NodeConfig::new("STORE_NODE")))
//! }
//! ```

#![warn(missing_docs)]

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub mod cli;
pub mod config;
pub mod dimse;
pub mod dispatch;
pub mod maintenance;
pub mod runner;
pub mod scp;
pub mod storage;
mod storage_classes;
pub mod tls;
pub mod trigger;

pub use config::{FailurePolicy, NodeConfig};
pub use dicomnode_core::*;
pub use dicomnode_derive::Pipeline;
pub use storage_classes::STORAGE_SOP_CLASSES;

/// The dicom-rs crates a pipeline usually needs, re-exported so versions match.
pub use {dicom_core, dicom_dictionary_std, dicom_object, dicom_ul};

/// The logging facade to log with inside `process`: in the child, its records reach the
/// node's log, in the patient's span.
pub use tracing;

use runner::ChildRunner;
use scp::Scp;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use storage::Storage;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The process is a processing child, which must never serve.
    #[error("this process is a processing child ({} is set): call dicomnode_server::run (or runner::child_main) first thing in main", runner::CHILD_ENV)]
    IsChild,
    /// The runner could not be prepared.
    #[error(transparent)]
    Runner(#[from] runner::RunnerError),
    /// The storage could not be opened or restored.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// The TLS configuration could not be built.
    #[error("TLS")]
    Tls(#[from] tls::TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The listener failed.
    #[error("the listener failed: {0}")]
    Serve(std::io::Error),
}

/// A node bound to its address, ready to serve.
pub struct Node {
    scp: Scp,
    runner: Arc<ChildRunner>,
    grace: std::time::Duration,
}

impl Node {
    /// Prepares the node: storage for the pipeline's inputs, the child runner, the socket.
    pub fn bind<P: Pipeline>(pipeline: P, mut config: NodeConfig) -> Result<Node, NodeError> {
        if runner::is_child() {
            return Err(NodeError::IsChild);
        }
        // Children work in other directories: every path they are given is absolute.
        for path in [
            &mut config.data_dir,
            &mut config.work_root,
            &mut config.worker_exe,
        ]
        .into_iter()
        .flatten()
        {
            if let Ok(absolute) = std::path::absolute(&*path) {
                *path = absolute;
            }
        }
        let (storage, restored) = Storage::for_config(pipeline.inputs(), &config)?;
        let storage = Arc::new(storage);
        if let Some(dir) = storage.data_dir() {
            tracing::info!(
                dir = %dir.display(),
                patients = restored.patients,
                instances = restored.instances,
                temp_files_removed = restored.temp_files_removed,
                interrupted_batches = restored.interrupted_batches,
                ready = restored.ready.len(),
                "data directory restored"
            );
        }
        let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        let runner = ChildRunner::start(&pipeline, &config, Arc::clone(&storage))?;
        let scp = Scp::bind(&config, tls, Arc::clone(&storage), Arc::clone(&runner)).map_err(
            |source| NodeError::Bind {
                addr: config.bind,
                source,
            },
        )?;
        // Patients that were complete when the node stopped are processed at once.
        for batch in restored.ready {
            runner.submit(batch);
        }
        maintenance::start(storage, Arc::clone(&runner), &config);
        Ok(Node {
            scp,
            runner,
            grace: config.shutdown_grace,
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.scp.local_addr()
    }

    /// Serves until the listener fails (or forever, in a thread of a bigger program).
    pub fn serve(self) -> Result<(), NodeError> {
        self.scp.serve().map_err(NodeError::Serve)
    }

    /// Serves until SIGINT or SIGTERM, then shuts down: stops accepting associations,
    /// lets running associations and children finish within the grace period, kills the
    /// process groups of children still running, and returns. A second signal kills the
    /// children at once and exits the process.
    pub fn serve_until_signalled(self) -> Result<(), NodeError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let stop = self.scp.stop_handle().map_err(NodeError::Serve)?;
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(NodeError::Serve)?;
        let runner = Arc::clone(&self.runner);
        let grace = self.grace;
        let on_signal = stop.clone();
        std::thread::spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    tracing::info!(signal, ?grace, "shutting down: no new associations; running work may finish within the grace period");
                    on_signal.stop();
                } else {
                    tracing::warn!(
                        signal,
                        "second signal: killing the children and exiting now"
                    );
                    runner.kill_all();
                    std::process::exit(1);
                }
            }
        });
        self.scp.serve().map_err(NodeError::Serve)?;
        let deadline = std::time::Instant::now() + grace;
        while stop.live() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if stop.live() > 0 {
            tracing::warn!(
                live = stop.live(),
                "associations still open at the end of the grace period are dropped"
            );
        }
        self.runner
            .shutdown(deadline.saturating_duration_since(std::time::Instant::now()));
        tracing::info!("node stopped");
        Ok(())
    }
}

/// Logs to stdout, at `RUST_LOG` or `info`. (A child sends its log records to the node.)
pub fn init_logging() {
    init_logging_to(None, "info");
}

/// Logs to stdout at `RUST_LOG` or else `default_filter`.
pub fn init_logging_at(default_filter: &str) {
    init_logging_to(None, default_filter);
}

/// Logs to stdout and, if `log_dir` is given, to daily rolling files `dicomnode.log.*`
/// there; at `RUST_LOG` or else `default_filter`. A program that set up its own
/// subscriber keeps it.
pub fn init_logging_to(log_dir: Option<&std::path::Path>, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    static FILE_GUARD: std::sync::OnceLock<tracing_appender::non_blocking::WorkerGuard> =
        std::sync::OnceLock::new();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter))
    };
    let stdout = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .fmt_fields(escaped_fields())
        .with_filter(filter());
    let files = log_dir.map(|dir| {
        let (writer, guard) =
            tracing_appender::non_blocking(tracing_appender::rolling::daily(dir, "dicomnode.log"));
        let _ = FILE_GUARD.set(guard);
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .with_writer(writer)
            .with_filter(filter())
    });
    let subscriber = tracing_subscriber::registry().with(stdout).with(files);
    // Already initialised by the embedding program: keep theirs.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// How the node's log writes fields: as the default format does, but with every control
/// character escaped, whatever field it is in (the message included), so that text from a
/// peer or a child (an AE title, a patient ID, a line the child printed) can neither forge
/// a log line nor drive the terminal. One event is always one line.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = dicomnode_core::sanitize::escape_control(&text);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// In a processing child, runs its job and returns the exit code; otherwise `None`.
///
/// Call it first thing in `main` when the program does more than serve (a demo, a test
/// harness); [`run`] calls it for you.
pub fn child_entry<P: Pipeline>() -> Option<ExitCode> {
    child_entry_among(&[runner::ChildEntry::of::<P>()])
}

/// Like [`child_entry`], for a program that runs nodes of several pipelines.
pub fn child_entry_among(entries: &[runner::ChildEntry]) -> Option<ExitCode> {
    if !runner::is_child() {
        return None;
    }
    runner::child_entry_among(entries)
}

/// The whole `main` of a node.
///
/// In a processing child (the runner re-executes this same binary) it runs the job it is
/// given and exits, without calling `setup`. Otherwise it calls `setup` for the pipeline
/// and the configuration, starts logging, binds, logs the address, and serves.
pub fn run<P, F>(setup: F) -> ExitCode
where
    P: Pipeline,
    F: FnOnce() -> (P, NodeConfig),
{
    if let Some(code) = child_entry::<P>() {
        return code;
    }
    let (pipeline, config) = setup();
    init_logging_to(config.log_dir.as_deref(), "info");
    let node = match Node::bind(pipeline, config.clone()) {
        Ok(node) => node,
        Err(error) => {
            tracing::error!(%error, "cannot start the node");
            return ExitCode::FAILURE;
        }
    };
    match node.local_addr() {
        Ok(addr) => tracing::info!(ae_title = %config.ae_title, "listening on {addr}"),
        Err(error) => tracing::warn!(%error, "listening, address unknown"),
    }
    match node.serve_until_signalled() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the node stopped");
            ExitCode::FAILURE
        }
    }
}
