//! A pipeline that, for each patient's current study, fetches up to 3 prior studies of the
//! same patient and modality from a PACS, and writes what it got to
//! `<out>/<PatientID>.json`.

use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::input::value_of;
use dicomnode_server::{
    sanitize, Address, Completion, Grouping, Input, InputContainer, NoOutput, Output, Pipeline,
    PriorStatus, Priors, ProcessError, Processor, Retrieval,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The pipeline's state: where the JSON goes and where priors come from.
#[derive(Debug, Pipeline, Serialize, Deserialize)]
#[pipeline(processor = ComparePriors, inputs = Self::inputs, completion = Self::completion)]
pub struct WithPriorsNode {
    /// `<out>/<PatientID sanitized>.json` for each current study.
    pub out: PathBuf,
    /// The PACS queried and retrieved from.
    pub pacs: Address,
    /// C-MOVE (the PACS must know this node's AE title) or C-GET.
    pub retrieval: Retrieval,
    /// The time limit of one patient's fetch, in seconds.
    pub fetch_seconds: u64,
}

impl WithPriorsNode {
    /// The current study's images, and up to 3 prior studies of the same modality.
    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::new("current")
                .require(tags::PATIENT_ID)
                .require(tags::STUDY_INSTANCE_UID)
                .require(tags::SOP_INSTANCE_UID),
            Input::new("priors").priors(
                Priors::from(self.pacs.clone())
                    .same_modality()
                    .max_studies(3)
                    .retrieve_with(self.retrieval)
                    .time_limit(Duration::from_secs(self.fetch_seconds)),
            ),
        ]
    }

    /// One batch per study: a second study of the patient is a batch of its own.
    fn completion(&self) -> Completion {
        Completion::new().group_by(Grouping::Study)
    }
}

/// Built in the child: writes the comparison's inputs as JSON.
pub struct ComparePriors;

impl Processor for ComparePriors {
    type Pipeline = WithPriorsNode;

    fn build(_node: &WithPriorsNode) -> Result<Self, ProcessError> {
        Ok(ComparePriors)
    }

    fn process(
        &mut self,
        node: &WithPriorsNode,
        input: InputContainer,
    ) -> Result<Output, ProcessError> {
        let current = input
            .get("current")?
            .first()
            .and_then(|i| value_of(i, tags::STUDY_INSTANCE_UID))
            .unwrap_or_default();
        let priors = input.get("priors")?;
        let status = input.prior_status("priors");
        let studies: Vec<Value> = status
            .map(PriorStatus::studies)
            .unwrap_or_default()
            .iter()
            .map(|study| {
                // What the processor holds of it, counted from the instances themselves.
                let held = priors
                    .iter()
                    .filter(|i| {
                        value_of(i, tags::STUDY_INSTANCE_UID).as_deref()
                            == Some(study.study_instance_uid.as_str())
                    })
                    .count();
                json!({ "study": study.study_instance_uid, "date": study.study_date, "instances": held })
            })
            .collect();
        let prior_status = match status {
            Some(PriorStatus::Fetched(_)) => "ok".to_string(),
            Some(PriorStatus::Unavailable(why)) => format!("unavailable: {why}"),
            None => "unavailable: no fetch".to_string(),
        };
        std::fs::create_dir_all(&node.out)?;
        let name = format!("{}.json", sanitize::path_component(input.patient_key()));
        // Two studies of a patient may be processed at once: each writes its own partial.
        let partial = node.out.join(format!(
            ".{name}.{}.partial",
            sanitize::path_component(&current)
        ));
        let text = serde_json::to_string_pretty(&json!({
            "current": current,
            "priors": studies,
            "prior_status": prior_status,
        }))?;
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, node.out.join(&name))?;
        println!(
            "wrote {name}: {} prior instance(s), {prior_status}",
            priors.len()
        );
        Ok(NoOutput.into())
    }
}
