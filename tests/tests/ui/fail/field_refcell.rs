use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work)]
struct Node {
    threshold: f32,
    state: std::cell::RefCell<Vec<u8>>,
    counter: std::cell::Cell<u32>,
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
