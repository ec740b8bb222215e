use dicomnode_server::{InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

mod grid {
    /// A user's own type that happens to share a name with `std::cell::Cell`.
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Cell {
        pub row: u32,
        pub column: u32,
    }
}

/// Fields the derive must accept: skipped shared state, a marker, a user's own `Cell` named
/// by its path, and plain data inside containers.
#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Work)]
struct Node {
    #[serde(skip)]
    cache: std::rc::Rc<Vec<u8>>,
    #[serde(skip)]
    counter: std::cell::Cell<u32>,
    marker: PhantomData<fn() -> u8>,
    cells: Vec<grid::Cell>,
    lookup: std::collections::HashMap<String, (u16, [f32; 3])>,
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

fn main() {
    let node = Node {
        cache: Default::default(),
        counter: Default::default(),
        marker: PhantomData,
        cells: vec![grid::Cell { row: 1, column: 2 }],
        lookup: Default::default(),
    };
    // The skipped fields stay behind; the rest travels.
    let bytes = serde_json::to_vec(&node).expect("serializable");
    let back: Node = serde_json::from_slice(&bytes).expect("deserializable");
    assert_eq!(back.cells[0].column, 2);
    assert!(back.cache.is_empty());
    assert_eq!(node.inputs().len(), 1);
}
