//! A node whose pipeline carries [`RichState`]; its child writes the state it received
//! (postcard) to `<out>/<patient>.state`, so the test can compare it field by field.

use dicomnode_server::{
    InputContainer, NoOutput, NodeConfig, Output, Pipeline, ProcessError, Processor,
};
use dicomnode_tests::RichState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = DumpState)]
struct RoundTrip {
    out: PathBuf,
    state: RichState,
}

struct DumpState;

impl Processor for DumpState {
    type Pipeline = RoundTrip;

    fn build(_: &RoundTrip) -> Result<Self, ProcessError> {
        Ok(DumpState)
    }

    fn process(&mut self, node: &RoundTrip, input: InputContainer) -> Result<Output, ProcessError> {
        let bytes = postcard::to_allocvec(&node.state)?;
        let name = dicomnode_server::sanitize::path_component(input.patient_key());
        std::fs::write(node.out.join(format!("{name}.state")), bytes)?;
        Ok(NoOutput.into())
    }
}

fn main() -> ExitCode {
    dicomnode_server::run(|| {
        let out = std::env::args()
            .nth(1)
            .map(PathBuf::from)
            .unwrap_or_default();
        let config = NodeConfig::new("ROUNDTRIP").bind("127.0.0.1:0".parse().expect("literal"));
        (
            RoundTrip {
                out,
                state: RichState::sample(),
            },
            config,
        )
    })
}
