//! Outputs: what a processor returns, exported inside the child after `process`.

use crate::sanitize::path_component;
use crate::{DicomInstance, ExportError};
use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};

/// Something a processor's result can be exported as: files, a C-STORE to a PACS, nothing.
pub trait Export: Send {
    /// Exports, returning a one-line summary for the log.
    fn export(self: Box<Self>) -> Result<String, ExportError>;
}

/// The result of processing a patient: any [`Export`].
///
/// Every exporter converts into it: `Ok(NoOutput.into())`.
pub struct Output(Box<dyn Export>);

impl Output {
    /// Exports the output.
    pub fn export(self) -> Result<String, ExportError> {
        self.0.export()
    }
}

impl<E: Export + 'static> From<E> for Output {
    fn from(export: E) -> Self {
        Output(Box::new(export))
    }
}

/// Nothing to export.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOutput;

impl Export for NoOutput {
    fn export(self: Box<Self>) -> Result<String, ExportError> {
        Ok("nothing to export".to_string())
    }
}

/// Writes instances as Part-10 files under a directory, laid out as
/// `<dir>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`.
///
/// Each path part is sanitized (see [`path_component`]); each file is written to a
/// temporary name and renamed, so a reader never sees half a file.
pub struct FileOutput {
    dir: PathBuf,
    instances: Vec<DicomInstance>,
}

impl FileOutput {
    /// An output that writes `instances` under `dir`.
    pub fn new(dir: impl Into<PathBuf>, instances: Vec<DicomInstance>) -> Self {
        FileOutput {
            dir: dir.into(),
            instances,
        }
    }

    /// The path an instance is written to under `dir`.
    pub fn path_for(dir: &Path, instance: &DicomInstance) -> Result<PathBuf, ExportError> {
        let uid = |tag, name| {
            crate::input::value_of(instance, tag).ok_or(ExportError::MissingAttribute(name))
        };
        let study = uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
        let series = uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
        let sop = uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
        Ok(dir
            .join(path_component(&study))
            .join(path_component(&series))
            .join(format!("{}.dcm", path_component(&sop))))
    }
}

impl Export for FileOutput {
    fn export(self: Box<Self>) -> Result<String, ExportError> {
        let count = self.instances.len();
        for instance in &self.instances {
            let path = Self::path_for(&self.dir, instance)?;
            let parent = path.parent().unwrap_or(&self.dir);
            std::fs::create_dir_all(parent).map_err(|source| ExportError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
            let partial = path.with_extension("dcm.partial");
            instance
                .write_to_file(&partial)
                .map_err(|source| ExportError::Encode {
                    sop_instance_uid: instance.meta().media_storage_sop_instance_uid().into(),
                    path: partial.clone(),
                    source: Box::new(source),
                })?;
            std::fs::rename(&partial, &path).map_err(|source| ExportError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(format!("wrote {count} files under {}", self.dir.display()))
    }
}

/// Several outputs exported one after the other (e.g. send to a PACS and write files).
/// Every output is tried; if any fails, the export fails with all their errors.
#[derive(Default)]
pub struct MultiOutput {
    outputs: Vec<Output>,
}

impl MultiOutput {
    /// An empty combination.
    pub fn new() -> Self {
        MultiOutput::default()
    }

    /// Adds an output.
    pub fn with(mut self, output: impl Into<Output>) -> Self {
        self.outputs.push(output.into());
        self
    }
}

impl Export for MultiOutput {
    fn export(self: Box<Self>) -> Result<String, ExportError> {
        let mut summaries = Vec::new();
        let mut errors = Vec::new();
        for output in self.outputs {
            match output.export() {
                Ok(summary) => summaries.push(summary),
                Err(error) => errors.push(error),
            }
        }
        match errors.len() {
            0 => Ok(summaries.join("; ")),
            1 => Err(errors.remove(0)),
            _ => Err(ExportError::Several(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticSeries;

    #[test]
    fn multi_output_runs_every_output_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let instances = SyntheticSeries::ct("P", 2).size(2, 2).build().unwrap();
        let ok = MultiOutput::new()
            .with(NoOutput)
            .with(FileOutput::new(dir.path(), instances.clone()));
        let summary = Output::from(ok).export().unwrap();
        assert!(summary.contains("wrote 2 files"), "{summary}");
        let path = FileOutput::path_for(dir.path(), &instances[0]).unwrap();
        assert!(path.exists());

        // A file where a directory must go: that output fails, the other still runs.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "").unwrap();
        let other = dir.path().join("other");
        let mixed = MultiOutput::new()
            .with(FileOutput::new(&blocked, instances.clone()))
            .with(FileOutput::new(&other, instances.clone()));
        assert!(Output::from(mixed).export().is_err());
        assert!(FileOutput::path_for(&other, &instances[1])
            .unwrap()
            .exists());
    }
}
