//! Pipelines shared by the runnable examples (`examples/*.rs`).

pub mod deidentify;
pub mod volume_stats;
pub mod with_priors;

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

pub mod plus_one {
    //! A pipeline that adds 1 to every CT pixel value (in Hounsfield units) and sends the
    //! derived series to a destination.

    use dicomnode_server::dicom_dictionary_std::tags;
    use dicomnode_server::dispatch::DicomOutput;
    use dicomnode_server::input::value_of;
    use dicomnode_server::series::{DerivedSeries, PixelBuffer};
    use dicomnode_server::{
        pixels, Address, Enough, Input, InputContainer, Matcher, Output, Pipeline, ProcessError,
        Processor, RetryPolicy,
    };
    use serde::{Deserialize, Serialize};

    /// The node's state, shipped to each patient's child.
    #[derive(Debug, Clone, Pipeline, Serialize, Deserialize)]
    #[pipeline(processor = PlusOne, inputs = Self::inputs)]
    pub struct PlusOneNode {
        /// Where the derived series goes.
        pub destination: Address,
        /// The AE title the node calls the destination with.
        pub calling_ae_title: String,
        /// Instances per series; `None`: the series' ImagesInAcquisition.
        pub slices: Option<u32>,
        /// Retries of a transient send failure.
        pub retry: RetryPolicy,
    }

    impl PlusOneNode {
        /// One CT input, enough when InstanceNumbers 1..N are all present.
        fn inputs(&self) -> Vec<Input> {
            vec![Input::new("ct")
                .matching(tags::MODALITY, Matcher::exact("CT"))
                .require(tags::SERIES_INSTANCE_UID)
                .enough_when(Enough::all_instance_numbers(self.slices))]
        }
    }

    /// Built in the child for each patient.
    pub struct PlusOne;

    impl Processor for PlusOne {
        type Pipeline = PlusOneNode;

        fn build(_node: &PlusOneNode) -> Result<Self, ProcessError> {
            Ok(PlusOne)
        }

        fn process(
            &mut self,
            node: &PlusOneNode,
            mut input: InputContainer,
        ) -> Result<Output, ProcessError> {
            let mut ct = input.take("ct")?;
            ct.sort_by_key(|i| {
                value_of(i, tags::INSTANCE_NUMBER)
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(i64::MAX)
            });
            let derived = DerivedSeries::new("PLUS ONE", 1001).build(&ct, |instance| {
                let values = pixels::rescaled(instance)?;
                Ok(PixelBuffer::F32(
                    values.into_iter().map(|v| v + 1.0).collect(),
                ))
            })?;
            println!(
                "patient {} ({}): derived {} instances, sending to {}",
                input.patient_key(),
                input.origin(),
                derived.len(),
                node.destination
            );
            Ok(DicomOutput::new(vec![node.destination.clone()], derived)
                .calling_ae_title(node.calling_ae_title.clone())
                .retry(node.retry)
                .into())
        }
    }
}
