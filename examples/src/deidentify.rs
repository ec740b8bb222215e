//! A pipeline that de-identifies each patient's instances by the DICOM confidentiality
//! profile and sends them on: the usual first step of a research pipeline. The mapping
//! file it writes lets results coming back be re-identified (`dicomnode reidentify`).

use dicomnode_server::deidentify::{Deidentifier, Mapping, ProfileOption};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dispatch::DicomOutput;
use dicomnode_server::tracing;
use dicomnode_server::{
    Address, Input, InputContainer, Output, Pipeline, ProcessError, Processor, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The node's state, shipped to each patient's child.
#[derive(Debug, Clone, Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Deidentify, inputs = Self::inputs)]
pub struct DeidentifyNode {
    /// Where the de-identified instances go.
    pub destination: Address,
    /// The AE title the node calls the destination with.
    pub calling_ae_title: String,
    /// The mapping file (key and replacements), shared by every patient's child.
    pub mapping: PathBuf,
    /// The profile's options.
    pub options: Vec<ProfileOption>,
    /// Retries of a transient send failure.
    pub retry: RetryPolicy,
}

impl DeidentifyNode {
    /// One input: any instance with a patient; enough at once.
    fn inputs(&self) -> Vec<Input> {
        vec![Input::new("instances")
            .require(tags::PATIENT_ID)
            .require(tags::SOP_INSTANCE_UID)]
    }
}

/// Built in the child for each patient.
pub struct Deidentify;

impl Processor for Deidentify {
    type Pipeline = DeidentifyNode;

    fn build(_node: &DeidentifyNode) -> Result<Self, ProcessError> {
        Ok(Deidentify)
    }

    fn process(
        &mut self,
        node: &DeidentifyNode,
        mut input: InputContainer,
    ) -> Result<Output, ProcessError> {
        let instances = input.take("instances")?;
        let mut mapping = Mapping::open(&node.mapping)?;
        let deidentifier = node
            .options
            .iter()
            .fold(Deidentifier::new(), |d, o| d.with(*o));
        let mut out = Vec::with_capacity(instances.len());
        for instance in &instances {
            let done = deidentifier.deidentify(instance, &mut mapping)?;
            for warning in &done.warnings {
                tracing::warn!("{warning}");
            }
            out.push(done.instance);
        }
        // Kept before anything leaves: a result can always be re-identified.
        mapping.save()?;
        tracing::info!(
            instances = out.len(),
            destination = %node.destination,
            "de-identified, sending on"
        );
        Ok(DicomOutput::new(vec![node.destination.clone()], out)
            .calling_ae_title(node.calling_ae_title.clone())
            .retry(node.retry)
            .into())
    }
}
