use dicomnode_server::Pipeline;
use serde::{Deserialize, Serialize};

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = NotAProcessor)]
struct Node {
    threshold: f32,
}

struct NotAProcessor;

fn main() {}
