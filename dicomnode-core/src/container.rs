//! What a processor receives: the patient's instances, per input.

use crate::DicomInstance;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A peer that sent instances over an association.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The calling AE title of the association.
    pub ae_title: String,
    /// The peer's socket address, e.g. `127.0.0.1:40112`.
    pub address: String,
}

/// Where a patient's batch came from.
///
/// ```
/// use dicomnode_core::{Origin, Sender};
/// let origin = Origin::Association(Sender { ae_title: "CT1".into(), address: "10.0.0.7:4012".into() });
/// assert_eq!(origin.sender().map(|s| s.ae_title.as_str()), Some("CT1"));
/// assert_eq!(Origin::Restored.sender(), None);
/// assert_eq!(origin.to_string(), "association from CT1 at 10.0.0.7:4012");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Origin {
    /// Received from this peer: the last association that added to the patient.
    Association(Sender),
    /// Rebuilt from the node's data directory at start-up, the association unknown.
    Restored,
    /// Put back for processing by a person (`dicomnode requeue`).
    Requeued,
}

impl Origin {
    /// The peer, when the batch came from an association.
    pub fn sender(&self) -> Option<&Sender> {
        match self {
            Origin::Association(sender) => Some(sender),
            Origin::Restored | Origin::Requeued => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Association(sender) => write!(
                f,
                "association from {} at {}",
                sender.ae_title, sender.address
            ),
            Origin::Restored => f.write_str("restored from the data directory"),
            Origin::Requeued => f.write_str("requeued"),
        }
    }
}

/// One patient's instances, sorted into the pipeline's inputs.
#[derive(Debug)]
pub struct InputContainer {
    patient_key: String,
    origin: Origin,
    inputs: Vec<(String, Vec<DicomInstance>)>,
}

impl InputContainer {
    /// A container for `patient_key` holding `inputs` (name, instances) in declaration order.
    pub fn new(
        patient_key: String,
        origin: Origin,
        inputs: Vec<(String, Vec<DicomInstance>)>,
    ) -> Self {
        InputContainer {
            patient_key,
            origin,
            inputs,
        }
    }

    /// The value of the patient key tag (PatientID by default).
    pub fn patient_key(&self) -> &str {
        &self.patient_key
    }

    /// Where the batch came from: an association (and its peer), the data directory at
    /// start-up, a requeue.
    pub fn origin(&self) -> &Origin {
        &self.origin
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
