use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work)]
struct Node {
    threshold: f32,
    cache: std::rc::Rc<Vec<u8>>,
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
