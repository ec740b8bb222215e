use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work)]
struct Node {
    threshold: f32,
}

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work)]
struct Other {
    threshold: f32,
}

struct Work;

impl Processor for Work {
    type Pipeline = Other;
    fn build(_: &Other) -> Result<Self, ProcessError> {
        Ok(Work)
    }
    fn process(&mut self, _: &Other, _: InputContainer) -> Result<Output, ProcessError> {
        Ok(NoOutput.into())
    }
}

fn main() {}
