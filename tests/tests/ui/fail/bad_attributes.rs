use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work, procesor = Work, inputs = Self::inputs, inputs = Self::inputs)]
struct Node {
    threshold: f32,
}

fn main() {}
