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

pub mod cli;
pub mod config;
pub mod dimse;
pub mod dispatch;
pub mod maintenance;
pub mod runner;
pub mod scp;
pub mod storage;
mod storage_classes;
pub mod trigger;

pub use config::{FailurePolicy, NodeConfig};
pub use dicomnode_core::*;
pub use dicomnode_derive::Pipeline;
pub use storage_classes::STORAGE_SOP_CLASSES;

/// The dicom-rs crates a pipeline usually needs, re-exported so versions match.
pub use {dicom_core, dicom_dictionary_std, dicom_object, dicom_ul};

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
}

impl Node {
    /// Prepares the node: storage for the pipeline's inputs, the child runner, the socket.
    pub fn bind<P: Pipeline>(pipeline: P, config: NodeConfig) -> Result<Node, NodeError> {
        if runner::is_child() {
            return Err(NodeError::IsChild);
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
        let runner = ChildRunner::start(&pipeline, &config, Arc::clone(&storage))?;
        let scp =
            Scp::bind(&config, Arc::clone(&storage), Arc::clone(&runner)).map_err(|source| {
                NodeError::Bind {
                    addr: config.bind,
                    source,
                }
            })?;
        // Patients that were complete when the node stopped are processed at once.
        for batch in restored.ready {
            runner.submit(batch);
        }
        maintenance::start(storage, runner, &config);
        Ok(Node { scp })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.scp.local_addr()
    }

    /// Serves until the listener fails.
    pub fn serve(self) -> Result<(), NodeError> {
        self.scp.serve().map_err(NodeError::Serve)
    }
}

/// Logs to stdout (the node) or stderr (a child), at `RUST_LOG` or `info`.
pub fn init_logging() {
    init_logging_at("info");
}

/// Logs to stdout (the node) or stderr (a child), at `RUST_LOG` or else `default_filter`.
pub fn init_logging_at(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if runner::is_child() {
        builder
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
    // Already initialised by the embedding program: keep theirs.
    drop(result);
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
    init_logging();
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
    init_logging();
    let (pipeline, config) = setup();
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
    match node.serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the node stopped");
            ExitCode::FAILURE
        }
    }
}
