use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = NotAProcessor)]
struct Node {
    threshold: f32,
}

struct NotAProcessor;

fn main() {}
