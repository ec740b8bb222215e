use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

// Every offending field is reported in one compilation.
#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work)]
struct Node {
    lock: std::sync::Mutex<u32>,
    name: String,
    file: std::fs::File,
    shared: std::rc::Rc<String>,
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
