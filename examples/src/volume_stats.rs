//! A pipeline that builds the volume of every series a patient sent and writes its
//! geometry and value statistics to `<out>/<PatientID>.json`.

use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::selection::split_series;
use dicomnode_server::tracing;
use dicomnode_server::{
    sanitize, Input, InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor, Volume,
    VolumeOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// The pipeline's state: where the JSON files go.
#[derive(Debug, Pipeline, Serialize, Deserialize)]
#[pipeline(processor = VolumeStats, inputs = Self::inputs)]
pub struct VolumeStatsNode {
    /// `<out>/<PatientID sanitized>.json` for each patient.
    pub out: PathBuf,
}

impl VolumeStatsNode {
    /// One input: any image with a patient and a series; enough at once.
    fn inputs(&self) -> Vec<Input> {
        vec![Input::new("images")
            .require(tags::PATIENT_ID)
            .require(tags::SERIES_INSTANCE_UID)
            .require(tags::SOP_INSTANCE_UID)]
    }
}

/// Built in the child: one volume per series, statistics into JSON.
pub struct VolumeStats;

/// The JSON entry of one series' volume: modality, shape, spacing, origin, min, max,
/// mean, units (and notes, if the builder left any).
pub fn summary(volume: &Volume) -> Value {
    let stats = volume.statistics();
    let mut entry = json!({
        "modality": volume.modality,
        "shape": volume.shape(),
        "spacing": volume.spacing,
        "origin": volume.origin,
        "min": stats.min,
        "max": stats.max,
        "mean": stats.mean,
        "units": volume.units.as_str(),
    });
    if !volume.notes.is_empty() {
        entry["notes"] = json!(volume.notes);
    }
    entry
}

impl Processor for VolumeStats {
    type Pipeline = VolumeStatsNode;

    fn build(_node: &VolumeStatsNode) -> Result<Self, ProcessError> {
        Ok(VolumeStats)
    }

    fn process(
        &mut self,
        node: &VolumeStatsNode,
        input: InputContainer,
    ) -> Result<Output, ProcessError> {
        let images = input.get("images")?;
        let mut series_out = Map::new();
        let mut failed = Vec::new();
        let all_series = split_series(images);
        let count = all_series.len();
        for series in all_series {
            match series.volume_with(&VolumeOptions::new()) {
                Ok(volume) => {
                    tracing::info!(
                        series = %series.uid,
                        shape = ?volume.shape(),
                        units = volume.units.as_str(),
                        "volume built"
                    );
                    series_out.insert(series.uid.clone(), summary(&volume));
                }
                Err(error) => {
                    let text = ProcessError::from(error).message().to_string();
                    tracing::warn!(series = %series.uid, error = %text, "no volume for this series");
                    failed.push(format!("{}: {text}", series.uid));
                    series_out.insert(series.uid.clone(), json!({ "error": text }));
                }
            }
        }
        std::fs::create_dir_all(&node.out)?;
        let name = format!("{}.json", sanitize::path_component(input.patient_key()));
        let path = node.out.join(&name);
        let partial = node.out.join(format!(".{name}.partial"));
        let text = serde_json::to_string_pretty(&Value::Object(series_out))?;
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, &path)?;
        println!("wrote {}", path.display());
        // The child's own high-water mark: what building the volumes cost.
        if let Some(peak) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
        {
            tracing::info!(peak_kib = peak, "child peak memory");
        }
        if !failed.is_empty() && failed.len() == count {
            return Err(ProcessError::new(format!(
                "no series became a volume: {}",
                failed.join("; ")
            )));
        }
        Ok(NoOutput.into())
    }
}
