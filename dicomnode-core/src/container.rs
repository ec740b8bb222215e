//! What a processor receives: the patient's instances, per input.

use crate::prior::PriorStatus;
use crate::selection::{split_series, Series};
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
    priors: Vec<(String, PriorStatus)>,
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
            priors: Vec::new(),
        }
    }

    /// The container with the fetch of prior input `name` ended as `status`.
    pub fn with_prior_status(mut self, name: impl Into<String>, status: PriorStatus) -> Self {
        let name = name.into();
        self.priors.retain(|(n, _)| *n != name);
        self.priors.push((name, status));
        self
    }

    /// The value of the patient key tag (PatientID by default).
    pub fn patient_key(&self) -> &str {
        crate::completion::patient_of(&self.patient_key)
    }

    /// The group the batch holds: the patient key, or with grouping by study or series,
    /// the patient key and that study's or series' UID.
    pub fn group(&self) -> (&str, Option<&str>) {
        crate::completion::split_group_key(&self.patient_key)
    }

    /// How the fetch of the prior input `name` ended: the studies fetched, or why they are
    /// unavailable. `None` for an input that is not a prior input.
    pub fn prior_status(&self, name: &str) -> Option<&PriorStatus> {
        self.priors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, status)| status)
    }

    /// The instances of input `name` split into series, ordered by SeriesNumber: an input
    /// that collects several series (a dynamic input).
    pub fn series(&self, name: &str) -> Result<Vec<Series<'_>>, UnknownInput> {
        Ok(split_series(self.get(name)?))
    }

    /// Where the batch came from: an association (and its peer), the data directory at
    /// start-up, a requeue.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The instances of the input named `name`.
    ///
    /// A declared input that holds no instances gives an empty slice; a name that no input
    /// declares is an [`UnknownInput`] error (which `?` turns into a [`ProcessError`]
    /// inside `process`), so that a typo fails loudly instead of processing nothing.
    ///
    /// [`ProcessError`]: crate::ProcessError
    pub fn get(&self, name: &str) -> Result<&[DicomInstance], UnknownInput> {
        match self.inputs.iter().find(|(n, _)| n == name) {
            Some((_, instances)) => Ok(instances),
            None => Err(self.unknown(name)),
        }
    }

    /// Takes the instances of the input named `name` out of the container.
    ///
    /// A declared input that holds no instances (or whose instances were taken already)
    /// gives an empty `Vec`; a name that no input declares is an [`UnknownInput`] error,
    /// which `?` turns into a [`ProcessError`] inside `process`:
    ///
    /// ```
    /// # use dicomnode_core::{InputContainer, Origin, ProcessError, Sender};
    /// # fn process(mut input: InputContainer) -> Result<(), ProcessError> {
    /// let ct = input.take("ct")?;
    /// # Ok(())
    /// # }
    /// # let sender = Sender { ae_title: "SCU".into(), address: "127.0.0.1:104".into() };
    /// # let input = InputContainer::new("P1".into(), Origin::Association(sender), vec![("ct".into(), Vec::new())]);
    /// # process(input).unwrap();
    /// ```
    ///
    /// [`ProcessError`]: crate::ProcessError
    pub fn take(&mut self, name: &str) -> Result<Vec<DicomInstance>, UnknownInput> {
        match self.inputs.iter_mut().find(|(n, _)| n == name) {
            Some((_, instances)) => Ok(std::mem::take(instances)),
            None => Err(self.unknown(name)),
        }
    }

    /// The names of the inputs, in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|(n, _)| n.as_str())
    }

    fn unknown(&self, name: &str) -> UnknownInput {
        UnknownInput {
            requested: name.to_string(),
            declared: self.names().map(str::to_string).collect(),
        }
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

/// A processor asked for an input that the pipeline does not declare (a typo, or an input
/// renamed in `inputs` but not in `process`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no input is named {requested:?}: the pipeline declares {}", DeclaredNames(.declared))]
pub struct UnknownInput {
    requested: String,
    declared: Vec<String>,
}

impl UnknownInput {
    /// The name that was asked for.
    pub fn requested(&self) -> &str {
        &self.requested
    }

    /// The names of the inputs the pipeline declares, in declaration order.
    pub fn declared(&self) -> &[String] {
        &self.declared
    }
}

/// Lists input names for a message: `"ct", "pet"`, or `no inputs`.
struct DeclaredNames<'a>(&'a [String]);

impl fmt::Display for DeclaredNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no inputs");
        }
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticSeries;
    use crate::ProcessError;

    fn container(inputs: Vec<(&str, usize)>) -> InputContainer {
        let sender = Sender {
            ae_title: "SCU".into(),
            address: "127.0.0.1:104".into(),
        };
        let inputs = inputs
            .into_iter()
            .map(|(name, count)| {
                let instances = if count == 0 {
                    Vec::new()
                } else {
                    SyntheticSeries::ct("P1", count as u32)
                        .size(2, 2)
                        .build()
                        .expect("synthetic series")
                };
                (name.to_string(), instances)
            })
            .collect();
        InputContainer::new("P1".into(), Origin::Association(sender), inputs)
    }

    #[test]
    fn take_gives_the_instances_once() {
        let mut input = container(vec![("ct", 3), ("pet", 2)]);
        assert_eq!(input.take("pet").map(|v| v.len()), Ok(2));
        // Taken already: declared, so empty rather than an error.
        assert_eq!(input.take("pet").map(|v| v.len()), Ok(0));
        assert_eq!(input.instance_count(), 3);
    }

    #[test]
    fn a_declared_empty_input_is_an_empty_vec() {
        let mut input = container(vec![("ct", 1), ("prior", 0)]);
        assert_eq!(input.get("prior").map(<[_]>::len), Ok(0));
        assert_eq!(input.take("prior").map(|v| v.len()), Ok(0));
    }

    #[test]
    fn an_undeclared_name_is_an_error_naming_the_declared_inputs() {
        let mut input = container(vec![("ct", 1), ("pet", 0)]);
        let error = input.take("cT").expect_err("no input is named cT");
        assert_eq!(error.requested(), "cT");
        assert_eq!(error.declared(), ["ct".to_string(), "pet".to_string()]);
        assert_eq!(
            error.to_string(),
            r#"no input is named "cT": the pipeline declares "ct", "pet""#
        );
        assert_eq!(
            input.get("typo").map(<[_]>::len),
            Err(input.unknown("typo"))
        );
        // Nothing was taken by the failed call.
        assert_eq!(input.instance_count(), 1);
    }

    #[test]
    fn an_error_without_inputs_says_so() {
        let mut input = container(vec![]);
        let error = input.take("ct").expect_err("no inputs at all");
        assert_eq!(
            error.to_string(),
            r#"no input is named "ct": the pipeline declares no inputs"#
        );
    }

    #[test]
    fn the_error_converts_into_a_process_error_with_question_mark() {
        fn process(mut input: InputContainer) -> Result<usize, ProcessError> {
            Ok(input.take("ct")?.len() + input.take("typo")?.len())
        }
        let error = process(container(vec![("ct", 2)])).expect_err("typo");
        assert_eq!(
            error.message(),
            r#"no input is named "typo": the pipeline declares "ct""#
        );
    }
}
