//! What a processor receives: the patient's instances, per input.

use crate::DicomInstance;
use serde::{Deserialize, Serialize};

/// The peer that sent the instances that completed the patient's batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The calling AE title of the association.
    pub ae_title: String,
    /// The peer's socket address, e.g. `127.0.0.1:40112`.
    pub address: String,
}

/// One patient's instances, sorted into the pipeline's inputs.
#[derive(Debug)]
pub struct InputContainer {
    patient_key: String,
    sender: Sender,
    inputs: Vec<(String, Vec<DicomInstance>)>,
}

impl InputContainer {
    /// A container for `patient_key` holding `inputs` (name, instances) in declaration order.
    pub fn new(
        patient_key: String,
        sender: Sender,
        inputs: Vec<(String, Vec<DicomInstance>)>,
    ) -> Self {
        InputContainer {
            patient_key,
            sender,
            inputs,
        }
    }

    /// The value of the patient key tag (PatientID by default).
    pub fn patient_key(&self) -> &str {
        &self.patient_key
    }

    /// Who sent the instances that completed the batch.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The instances of the input named `name`; `None` if there is no such input.
    pub fn get(&self, name: &str) -> Option<&[DicomInstance]> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Takes the instances of the input named `name` out of the container.
    pub fn take(&mut self, name: &str) -> Vec<DicomInstance> {
        self.inputs
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }

    /// Each input's name and instances, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[DicomInstance])> {
        self.inputs.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The number of instances over all inputs (an instance in two inputs counts twice).
    pub fn instance_count(&self) -> usize {
        self.inputs.iter().map(|(_, v)| v.len()).sum()
    }

    /// All instances of all inputs, in declaration order.
    pub fn into_instances(self) -> Vec<DicomInstance> {
        self.inputs.into_iter().flat_map(|(_, v)| v).collect()
    }
}
