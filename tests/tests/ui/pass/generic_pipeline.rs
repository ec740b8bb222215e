use dicomnode_server::{Input, InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::marker::PhantomData;

/// A pipeline generic over its threshold type, bounded so that it can travel.
#[derive(Pipeline, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
#[pipeline(processor = Threshold<T>, inputs = Self::inputs)]
struct Node<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    threshold: T,
    label: String,
}

impl<T> Node<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn inputs(&self) -> Vec<Input> {
        vec![Input::new(self.label.clone())]
    }
}

struct Threshold<T>(PhantomData<T>);

impl<T> Processor for Threshold<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Pipeline = Node<T>;
    fn build(_: &Node<T>) -> Result<Self, ProcessError> {
        Ok(Threshold(PhantomData))
    }
    fn process(&mut self, _: &Node<T>, _: InputContainer) -> Result<Output, ProcessError> {
        Ok(NoOutput.into())
    }
}

/// A field skipped by serde is rebuilt from Default in the child and is not checked.
#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Skipping)]
struct WithSkipped {
    name: String,
    #[serde(skip)]
    cache: std::sync::Mutex<Vec<u8>>,
}

struct Skipping;

impl Processor for Skipping {
    type Pipeline = WithSkipped;
    fn build(_: &WithSkipped) -> Result<Self, ProcessError> {
        Ok(Skipping)
    }
    fn process(&mut self, _: &WithSkipped, _: InputContainer) -> Result<Output, ProcessError> {
        Ok(NoOutput.into())
    }
}

/// A unit pipeline: no state at all.
#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Nothing)]
struct Unit;

struct Nothing;

impl Processor for Nothing {
    type Pipeline = Unit;
    fn build(_: &Unit) -> Result<Self, ProcessError> {
        Ok(Nothing)
    }
    fn process(&mut self, _: &Unit, _: InputContainer) -> Result<Output, ProcessError> {
        Ok(NoOutput.into())
    }
}

fn assert_pipeline<P: Pipeline>(p: &P) -> usize {
    p.inputs().len()
}

fn main() {
    let node = Node { threshold: 0.5f32, label: "ct".to_string() };
    assert_eq!(assert_pipeline(&node), 1);
    assert_eq!(node.inputs()[0].name(), "ct");
    let skipped = WithSkipped { name: "x".into(), cache: Default::default() };
    assert_eq!(assert_pipeline(&skipped), 1);
    assert_eq!(assert_pipeline(&Unit), 1);
}
