//! The two traits a user implements: [`Pipeline`] (derived) and [`Processor`].

use crate::{Completion, Input, InputContainer, Output, ProcessError};
use serde::{de::DeserializeOwned, Serialize};

/// A node's configuration and state, shipped to a child process for each patient.
///
/// Derive it with `#[derive(Pipeline, Serialize, Deserialize)]` and name the processor with
/// `#[pipeline(processor = MyProcessor)]`; the derive checks at compile time that every
/// field can travel to the child. Inputs are declared by a method named with
/// `#[pipeline(inputs = Self::my_inputs)]` (a `fn(&Self) -> Vec<Input>`); without it the
/// pipeline has one input, `"instances"`, that takes every instance and has enough at once.
///
/// The node serializes the pipeline once, at start, and each child deserializes its own
/// copy; no thread shares it, so the trait asks for no `Send` or `Sync`. The derive asks
/// more of each field than serde does: it must be plain data, neither shared nor tied to
/// a thread or an address (no `Rc`, `Cell`, lock, raw pointer), because such state does
/// not survive the copy. It says so at the field.
pub trait Pipeline: Serialize + DeserializeOwned + 'static {
    /// The processor built in the child for each patient.
    type Processor: Processor<Pipeline = Self>;

    /// The inputs instances are sorted into. Evaluated in the server, never in the child.
    fn inputs(&self) -> Vec<Input>;

    /// How instances are grouped into batches, and what happens to a group that waits
    /// too long. Named with `#[pipeline(completion = Self::my_completion)]`; by default,
    /// one batch per patient and no maximum wait.
    fn completion(&self) -> Completion {
        Completion::default()
    }
}

/// The per-patient work of a pipeline. Built and run inside the child process, in a fresh
/// temporary working directory that is removed afterwards, so it may hold anything
/// (models, open files, thread pools) and may litter the working directory.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a dicomnode `Processor`",
    label = "not a `Processor`",
    note = "implement `dicomnode_server::Processor` for `{Self}`, with `type Pipeline` naming the pipeline whose state it reads"
)]
pub trait Processor: Sized + 'static {
    /// The pipeline whose state the processor reads.
    type Pipeline: Pipeline;

    /// Builds the processor in the child, from the pipeline's state.
    fn build(pipeline: &Self::Pipeline) -> Result<Self, ProcessError>;

    /// Processes one patient's inputs and returns what to export.
    ///
    /// An `Err` is a failed processing: the node logs it and keeps the patient's data.
    fn process(
        &mut self,
        pipeline: &Self::Pipeline,
        input: InputContainer,
    ) -> Result<Output, ProcessError>;
}
