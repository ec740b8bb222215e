use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

/// Serializable, but it holds a cell: not plain data, though the derive cannot see that
/// from the field's name. The trait check reports it at the field.
#[derive(Serialize, Deserialize, Default)]
struct Counter {
    hits: std::cell::Cell<u32>,
}

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work)]
struct Node {
    threshold: f32,
    counter: Counter,
    // Not `Serialize` (serde's `rc` feature is off): reported by the trait check too.
    shared: std::sync::Arc<String>,
}

struct Work;

impl Processor for Work {
    type Pipeline = Node;
    fn build(_: &Node) -> Result<Self, ProcessError> {
        Ok(Work)
    }
    fn process(&mut self, _: &Node, _: InputContainer) -> Result<Output, ProcessError> {
        Ok(NoOutput.into())
    }
}

fn main() {}
