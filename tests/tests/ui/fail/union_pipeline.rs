use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

#[derive(Pipeline)]
#[pipeline(processor = Work)]
union Node {
    a: u32,
    b: f32,
}

fn main() {}
