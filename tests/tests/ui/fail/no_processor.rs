use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};

// A missing processor and a bad field are reported together.
#[derive(Pipeline, Serialize, Deserialize)]
struct Node {
    lock: std::sync::Mutex<u32>,
}

fn main() {}
