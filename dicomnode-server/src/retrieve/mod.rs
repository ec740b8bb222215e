//! Query/retrieve as an SCU: C-FIND, C-MOVE and C-GET (study root), over the same
//! association layer as C-STORE ([`crate::scu`]), so TLS is a property of the address.
//!
//! Every operation is bounded by one deadline: a PACS that never answers, answers slowly
//! or stops half-way gives [`RetrieveError::TimedOut`] or a transfer error, never a hang.

mod exchange;
mod query;

pub use query::{Level, Query, QueryKeyError};

use crate::dimse;
use crate::scu::{LinkError, ScuAssociation};
use dicom_dictionary_std::uids;
use dicom_object::InMemDicomObject;
use dicom_ul::ClientAssociationOptions;
use dicomnode_core::Address;
use exchange::{Exchange, Step};
use std::time::{Duration, Instant};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// Why a query or retrieval failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrieveError {
    /// The association could not be established, or talking on it failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The PACS accepted no presentation context for the information model.
    #[error("{address} does not offer {model}")]
    NotOffered {
        /// The PACS.
        address: String,
        /// The information model's name.
        model: &'static str,
    },
    /// The PACS answered with a failure status.
    #[error("{address} answered the {operation} with status {status:#06x}{}", comment.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Failed {
        /// The PACS.
        address: String,
        /// C-FIND, C-MOVE or C-GET.
        operation: &'static str,
        /// The status.
        status: u16,
        /// Its ErrorComment, if any.
        comment: Option<String>,
    },
    /// The operation did not end within its time limit.
    #[error("{address} did not finish the {operation} within {limit:?}")]
    TimedOut {
        /// The PACS.
        address: String,
        /// C-FIND, C-MOVE or C-GET.
        operation: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// The PACS broke the protocol (an unreadable answer, a message out of place).
    #[error("{address} broke the protocol during the {operation}: {why}")]
    Protocol {
        /// The PACS.
        address: String,
        /// C-FIND, C-MOVE or C-GET.
        operation: &'static str,
        /// What was wrong.
        why: String,
    },
}

/// How the node talks to a PACS as an SCU.
#[derive(Debug, Clone)]
pub struct QrOptions {
    /// The calling AE title.
    pub calling_ae_title: String,
    /// The time limit of one whole operation (association included).
    pub timeout: Duration,
    /// C-FIND: cancel after this many answers.
    pub max_answers: usize,
    /// C-GET: the largest data set accepted in memory, in bytes.
    pub max_instance_bytes: usize,
}

impl QrOptions {
    /// Options calling as `calling_ae_title`, 60 s, 1,000 answers, 1 GiB instances.
    pub fn new(calling_ae_title: impl Into<String>) -> Self {
        QrOptions {
            calling_ae_title: calling_ae_title.into(),
            timeout: Duration::from_secs(60),
            max_answers: 1000,
            max_instance_bytes: 1 << 30,
        }
    }

    /// Sets the time limit of one operation.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the most C-FIND answers read before cancelling.
    pub fn max_answers(mut self, max_answers: usize) -> Self {
        self.max_answers = max_answers;
        self
    }
}

/// Where a C-MOVE or C-GET stands (from the PACS's responses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Sub-operations still to do, when the PACS says.
    pub remaining: Option<u16>,
    /// Instances sent successfully.
    pub completed: u16,
    /// Instances that failed.
    pub failed: u16,
    /// Instances sent with a warning.
    pub warning: u16,
}

impl Progress {
    fn from_response(sub: dimse::SubOperations) -> Self {
        Progress {
            remaining: sub.remaining,
            completed: sub.completed.unwrap_or(0),
            failed: sub.failed.unwrap_or(0),
            warning: sub.warning.unwrap_or(0),
        }
    }
}

/// How a C-MOVE or C-GET ended: its final status and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrieveReport {
    /// The final status (0x0000 success, 0xB000 some sub-operations failed).
    pub status: u16,
    /// The final counts.
    pub progress: Progress,
    /// C-GET: instances received on the association and accepted by the caller.
    pub received: usize,
}

/// Where the instances a C-GET brings go, as they arrive: each data set is streamed
/// (`begin`, `data`..., `end`), so that memory stays bounded whatever their size. An `Err`
/// answers that C-STORE with a failure status (the PACS counts it as failed).
pub trait InstanceSink {
    /// An instance begins.
    fn begin(
        &mut self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax: &str,
    ) -> Result<(), String>;
    /// The next bytes of its data set.
    fn data(&mut self, bytes: Vec<u8>) -> Result<(), String>;
    /// Its data set is complete.
    fn end(&mut self) -> Result<(), String>;
    /// It failed on the way: whatever was begun is dropped.
    fn abandon(&mut self);
}

/// A sink that writes each instance as a Part-10 file `<dir>/<SOP Instance UID>.dcm` (the
/// data set as it came, after a meta group), through a temporary name.
#[derive(Debug)]
pub struct Part10Files {
    dir: std::path::PathBuf,
    current: Option<(
        std::io::BufWriter<std::fs::File>,
        std::path::PathBuf,
        String,
    )>,
    /// Files written.
    pub written: usize,
}

impl Part10Files {
    /// Writes into `dir` (which must exist).
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        Part10Files {
            dir: dir.into(),
            current: None,
            written: 0,
        }
    }
}

impl InstanceSink for Part10Files {
    fn begin(&mut self, class: &str, instance: &str, ts: &str) -> Result<(), String> {
        use std::io::Write;
        let meta = dicom_object::meta::FileMetaTableBuilder::new()
            .transfer_syntax(ts)
            .media_storage_sop_class_uid(class)
            .media_storage_sop_instance_uid(instance)
            .implementation_class_uid(crate::implementation::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::implementation::IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(|e| e.to_string())?;
        let name = dicomnode_core::sanitize::path_component(instance);
        let temp = self.dir.join(format!(".{name}.partial"));
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&temp).map_err(|e| e.to_string())?);
        out.write_all(&[0u8; 128])
            .and_then(|()| out.write_all(b"DICM"))
            .map_err(|e| e.to_string())?;
        meta.write(&mut out).map_err(|e| e.to_string())?;
        self.current = Some((out, temp, format!("{name}.dcm")));
        Ok(())
    }

    fn data(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        use std::io::Write;
        match &mut self.current {
            Some((out, _, _)) => out.write_all(&bytes).map_err(|e| e.to_string()),
            None => Err("data before its instance".into()),
        }
    }

    fn end(&mut self) -> Result<(), String> {
        let Some((out, temp, name)) = self.current.take() else {
            return Err("no instance begun".into());
        };
        out.into_inner()
            .map_err(|e| e.into_error().to_string())?
            .sync_all()
            .and_then(|()| std::fs::rename(&temp, self.dir.join(name)))
            .map_err(|e| e.to_string())?;
        self.written += 1;
        Ok(())
    }

    fn abandon(&mut self) {
        if let Some((_, temp, _)) = self.current.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Sends a C-FIND to `pacs`; returns the identifiers it answered, in order (at most
/// `options.max_answers`: after that many the query is cancelled).
pub fn find(
    pacs: &Address,
    options: &QrOptions,
    query: &Query,
) -> Result<Vec<InMemDicomObject>, RetrieveError> {
    let model = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND;
    let mut exchange = Exchange::open(pacs, options, "C-FIND", model, &[])?;
    let id = exchange.request(dimse::find_request, query.identifier())?;
    let mut answers = Vec::new();
    let mut cancelled = false;
    loop {
        match exchange.next(id)? {
            Step::Pending { identifier, .. } => {
                if let Some(identifier) = identifier {
                    if answers.len() < options.max_answers {
                        answers.push(identifier);
                    }
                }
                if answers.len() >= options.max_answers && !cancelled {
                    exchange.cancel(id)?;
                    cancelled = true;
                }
            }
            Step::Final {
                status, comment, ..
            } => {
                exchange.finish();
                return match status {
                    0x0000 | 0xFE00 => Ok(answers),
                    _ => Err(exchange.failed(status, comment)),
                };
            }
        }
    }
}

/// Asks `pacs` with a C-MOVE to send what `query` (a study, usually) names to the AE
/// title `destination`; `progress` sees each pending response. The instances arrive on
/// associations the PACS opens to `destination`, not here.
pub fn move_to(
    pacs: &Address,
    options: &QrOptions,
    query: &Query,
    destination: &str,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RetrieveReport, RetrieveError> {
    let model = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE;
    let mut exchange = Exchange::open(pacs, options, "C-MOVE", model, &[])?;
    let id = exchange.request(
        |id, class| dimse::move_request(id, class, destination),
        query.identifier(),
    )?;
    retrieval(exchange, id, progress, 0)
}

/// Retrieves what `query` names from `pacs` with a C-GET: the instances come on this
/// association, each streamed to `sink` (an `Err` answers that C-STORE with a failure
/// status and is counted by the PACS as failed). `sop_classes` are proposed for the
/// instances (with the SCP role); empty: the usual image, document and RT classes.
pub fn get(
    pacs: &Address,
    options: &QrOptions,
    query: &Query,
    sop_classes: &[String],
    sink: &mut dyn InstanceSink,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RetrieveReport, RetrieveError> {
    let model = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET;
    let classes: Vec<String> = if sop_classes.is_empty() {
        COMMON_STORAGE_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect()
    } else {
        sop_classes.to_vec()
    };
    let mut exchange = Exchange::open(pacs, options, "C-GET", model, &classes)?;
    let id = exchange.request(dimse::get_request, query.identifier())?;
    let mut counting = Counting { sink, received: 0 };
    exchange.on_store(&mut counting);
    let report = retrieval(exchange, id, progress, 0)?;
    Ok(RetrieveReport {
        received: counting.received,
        ..report
    })
}

/// Counts the instances a sink kept.
struct Counting<'a> {
    sink: &'a mut dyn InstanceSink,
    received: usize,
}

impl InstanceSink for Counting<'_> {
    fn begin(&mut self, class: &str, instance: &str, ts: &str) -> Result<(), String> {
        self.sink.begin(class, instance, ts)
    }

    fn data(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.sink.data(bytes)
    }

    fn end(&mut self) -> Result<(), String> {
        self.sink.end()?;
        self.received += 1;
        Ok(())
    }

    fn abandon(&mut self) {
        self.sink.abandon();
    }
}

/// Reads the responses of a C-MOVE or C-GET to its end.
fn retrieval(
    mut exchange: Exchange<'_>,
    id: u16,
    progress: &mut dyn FnMut(&Progress),
    received: usize,
) -> Result<RetrieveReport, RetrieveError> {
    loop {
        match exchange.next(id)? {
            Step::Pending { sub_operations, .. } => {
                progress(&Progress::from_response(sub_operations))
            }
            Step::Final {
                status,
                comment,
                sub_operations,
            } => {
                exchange.finish();
                let progress = Progress::from_response(sub_operations);
                // Warning 0xB000: some sub-operations failed; the counts say which.
                return match status {
                    0x0000 | 0x0001 | 0xB000..=0xBFFF => Ok(RetrieveReport {
                        status,
                        progress,
                        received,
                    }),
                    _ => Err(exchange.failed(status, comment)),
                };
            }
        }
    }
}

/// Opens an association for `model` (and, for a C-GET, `store_classes` with the SCP role).
fn establish(
    pacs: &Address,
    options: &QrOptions,
    model: &str,
    store_classes: &[String],
) -> Result<ScuAssociation, LinkError> {
    let native = vec![EXPLICIT_LE.to_string(), IMPLICIT_LE.to_string()];
    let mut proposal = ClientAssociationOptions::new()
        .calling_ae_title(options.calling_ae_title.clone())
        .max_pdu_length(256 * 1024)
        // Connecting may take a quarter of the limit (a host that does not answer); the
        // association's reads get the whole limit (a watchdog enforces the deadline once
        // the association stands), so the worst case is a slow connection to a silent
        // peer: 1.25 times the limit.
        .connection_timeout((options.timeout / 4).min(Duration::from_secs(30)))
        .read_timeout(options.timeout)
        .write_timeout(options.timeout)
        .with_presentation_context(model.to_string(), native.clone());
    for class in store_classes.iter().take(60) {
        proposal = proposal
            .with_presentation_context(class.clone(), native.clone())
            .with_presentation_context(
                class.clone(),
                COMPRESSED.iter().map(|ts| ts.to_string()).collect(),
            )
            .with_role_selection(class.clone(), false, true);
    }
    ScuAssociation::establish(pacs, proposal)
}

/// The compressed syntaxes a C-GET accepts besides the native ones.
const COMPRESSED: &[&str] = &[
    "1.2.840.10008.1.2.4.70",  // JPEG lossless SV1
    "1.2.840.10008.1.2.4.57",  // JPEG lossless
    "1.2.840.10008.1.2.4.50",  // JPEG baseline
    "1.2.840.10008.1.2.4.51",  // JPEG extended
    "1.2.840.10008.1.2.4.80",  // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  // JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  // JPEG 2000
    "1.2.840.10008.1.2.5",     // RLE
    "1.2.840.10008.1.2.1.99",  // deflated
    "1.2.840.10008.1.2.4.201", // HTJ2K lossless
];

/// The storage classes a C-GET proposes when the caller names none.
pub const COMMON_STORAGE_CLASSES: &[&str] = &[
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    uids::MR_IMAGE_STORAGE,
    uids::ENHANCED_MR_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
    uids::POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
    uids::ENHANCED_PET_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE,
    uids::NUCLEAR_MEDICINE_IMAGE_STORAGE,
    uids::ULTRASOUND_IMAGE_STORAGE,
    uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::X_RAY_ANGIOGRAPHIC_IMAGE_STORAGE,
    uids::X_RAY_RADIOFLUOROSCOPIC_IMAGE_STORAGE,
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_TRUE_COLOR_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::SEGMENTATION_STORAGE,
    uids::PARAMETRIC_MAP_STORAGE,
    uids::RT_STRUCTURE_SET_STORAGE,
    uids::RT_DOSE_STORAGE,
    uids::RT_PLAN_STORAGE,
    uids::RT_IMAGE_STORAGE,
    uids::ENCAPSULATED_PDF_STORAGE,
    uids::BASIC_TEXT_SR_STORAGE,
    uids::ENHANCED_SR_STORAGE,
    uids::COMPREHENSIVE_SR_STORAGE,
    uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    uids::GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE,
    uids::SPATIAL_REGISTRATION_STORAGE,
    uids::RAW_DATA_STORAGE,
];

/// The time left until `deadline`, or `None` once past it.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}
