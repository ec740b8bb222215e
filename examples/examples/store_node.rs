//! A node that writes every patient's instances to a directory, from inside the child.
//!
//! ```text
//! cargo run --release --example store_node -- --port 11112 --ae-title STORE_NODE --out ./received
//! /usr/bin/storescu -aec STORE_NODE 127.0.0.1 11112 some/*.dcm
//! ```

use clap::Parser;
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::{
    FileOutput, Input, InputContainer, NodeConfig, Output, Pipeline, ProcessError, Processor,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::ExitCode;

/// Receive DICOM instances and write each patient's to OUT/<study>/<series>/<sop>.dcm.
#[derive(Parser)]
struct Args {
    /// TCP port to listen on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 11112)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// The node's AE title; associations must call it.
    #[arg(long, default_value = "STORE_NODE")]
    ae_title: String,
    /// Where the files go.
    #[arg(long, default_value = "received")]
    out: PathBuf,
}

/// The pipeline's state: where to write. Shipped to each patient's child.
#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = WriteFiles, inputs = Self::inputs)]
struct StoreNode {
    out: PathBuf,
}

impl StoreNode {
    /// One input: any instance with a patient and the three UIDs; enough at once.
    fn inputs(&self) -> Vec<Input> {
        vec![Input::new("instances")
            .require(tags::PATIENT_ID)
            .require(tags::STUDY_INSTANCE_UID)
            .require(tags::SERIES_INSTANCE_UID)
            .require(tags::SOP_INSTANCE_UID)]
    }
}

struct WriteFiles;

impl Processor for WriteFiles {
    type Pipeline = StoreNode;

    fn build(_node: &StoreNode) -> Result<Self, ProcessError> {
        Ok(WriteFiles)
    }

    fn process(&mut self, node: &StoreNode, input: InputContainer) -> Result<Output, ProcessError> {
        println!(
            "writing {} instances of patient {} to {}",
            input.instance_count(),
            input.patient_key(),
            node.out.display()
        );
        Ok(FileOutput::new(&node.out, input.into_instances()).into())
    }
}

fn main() -> ExitCode {
    dicomnode_server::run(|| {
        let args = Args::parse();
        let out = std::path::absolute(&args.out).unwrap_or(args.out);
        let config =
            NodeConfig::new(args.ae_title).bind(std::net::SocketAddr::new(args.host, args.port));
        (StoreNode { out }, config)
    })
}
