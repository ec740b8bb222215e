//! Pipelines shared by the runnable examples (`examples/*.rs`).

pub mod store {
    //! A pipeline that writes every patient's instances to a directory, from the child.

    use dicomnode_server::dicom_dictionary_std::tags;
    use dicomnode_server::{
        FileOutput, Input, InputContainer, Output, Pipeline, ProcessError, Processor,
    };
    use serde::{Deserialize, Serialize};
    use std::path::PathBuf;

    /// The pipeline's state: where to write. Shipped to each patient's child.
    #[derive(Debug, Pipeline, Serialize, Deserialize)]
    #[pipeline(processor = WriteFiles, inputs = Self::inputs)]
    pub struct StoreNode {
        /// Files go to `<out>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`.
        pub out: PathBuf,
    }

    impl StoreNode {
        /// One input: any instance with a patient and the three UIDs; enough at once.
        fn inputs(&self) -> Vec<Input> {
            vec![Input::new("instances")
                .require(tags::PATIENT_ID)
                .require(tags::STUDY_INSTANCE_UID)
                .require(tags::SERIES_INSTANCE_UID)
                .require(tags::SOP_INSTANCE_UID)]
        }
    }

    /// Built in the child: writes the patient's instances through the file output.
    pub struct WriteFiles;

    impl Processor for WriteFiles {
        type Pipeline = StoreNode;

        fn build(_node: &StoreNode) -> Result<Self, ProcessError> {
            Ok(WriteFiles)
        }

        fn process(
            &mut self,
            node: &StoreNode,
            input: InputContainer,
        ) -> Result<Output, ProcessError> {
            println!(
                "writing {} instances of patient {} to {}",
                input.instance_count(),
                input.patient_key(),
                node.out.display()
            );
            Ok(FileOutput::new(&node.out, input.into_instances()).into())
        }
    }
}
