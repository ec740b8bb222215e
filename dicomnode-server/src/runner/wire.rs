//! The wire format between the node and a processing child.
//!
//! The channel is a Unix socket pair (see `supervise`). Both sides send frames: a
//! little-endian `u32` length, then that many bytes of postcard. The parent sends [`Job`]s
//! (one, for a fresh child; several, one after another, for a warm worker) and closes its
//! side when there are no more; the child answers each job with [`ChildMessage::Log`]
//! records as its code logs, then one [`ChildMessage::Report`].

use dicomnode_core::Origin;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Writes one frame.
pub fn write_frame(mut to: impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame larger than 4 GiB"))?;
    to.write_all(&len.to_le_bytes())?;
    to.write_all(payload)?;
    to.flush()
}

/// The largest frame the parent reads from a child (log records and reports are small; a
/// child cannot make the node allocate more than this).
pub const MAX_CHILD_FRAME: usize = 16 << 20;

/// Reads one frame of at most `max` bytes; `None` at a clean end of stream.
pub fn read_frame(mut from: impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match from.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the {max} bytes allowed"),
        ));
    }
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// One patient's job, as sent to the child.
#[derive(Serialize, Deserialize)]
pub struct Job<'a> {
    /// The postcard-encoded pipeline.
    #[serde(with = "serde_bytes")]
    pub pipeline: &'a [u8],
    /// The patient key.
    pub patient_key: &'a str,
    /// Where the batch came from.
    pub origin: Origin,
    /// Where the child makes this job's working directory.
    pub work_root: &'a str,
    /// When the batch was triggered, microseconds since the Unix epoch.
    pub triggered_at_us: u64,
    /// Each input's instances.
    #[serde(borrow)]
    pub inputs: Vec<JobInput<'a>>,
    /// How each prior input's fetch ended.
    pub priors: Vec<(String, dicomnode_core::PriorStatus)>,
}

/// One input of a job.
#[derive(Serialize, Deserialize)]
pub struct JobInput<'a> {
    /// The input's name.
    pub name: &'a str,
    /// Its instances.
    #[serde(borrow)]
    pub instances: Vec<JobInstance<'a>>,
}

/// One instance of a job: its bytes as received, or the file that holds it.
#[derive(Serialize, Deserialize)]
pub struct JobInstance<'a> {
    /// SOP Class UID.
    pub sop_class_uid: &'a str,
    /// SOP Instance UID.
    pub sop_instance_uid: &'a str,
    /// Transfer syntax of `dataset`.
    pub transfer_syntax: &'a str,
    /// The data set, when it is in memory (else empty).
    #[serde(with = "serde_bytes")]
    pub dataset: &'a [u8],
    /// The Part-10 file holding the instance, when it is on disk.
    pub file: Option<String>,
}

/// What the child sends back.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildMessage {
    /// A log event of the child's code.
    Log(LogRecord),
    /// The end of a job.
    Report(Report),
}

/// A log event emitted inside the child, re-emitted by the parent in the patient's span.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    /// 0 error, 1 warn, 2 info, 3 debug, 4 trace.
    pub level: u8,
    /// The event's target (usually its module).
    pub target: String,
    /// The message.
    pub message: String,
    /// The other fields, `name=value` separated by spaces.
    pub fields: String,
}

/// How a job ended inside the child.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// The job's working directory (removed before the report is sent).
    pub workdir: String,
    /// Whether the working directory was removed.
    pub workdir_removed: bool,
    /// When the child entered `process`, microseconds since the Unix epoch.
    pub entered_process_us: Option<u64>,
    /// How long `process` took, in microseconds.
    pub process_us: Option<u64>,
    /// How long the export took, in microseconds.
    pub export_us: Option<u64>,
    /// How it ended.
    pub outcome: ChildOutcome,
}

/// How a job ended inside the child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildOutcome {
    /// Processed and exported; the export's summary.
    Success(String),
    /// The job could not be read or the working directory made.
    Setup(String),
    /// `Processor::build` returned an error.
    BuildFailed(String),
    /// `process` returned an error.
    ProcessFailed(String),
    /// The processor panicked: message and location.
    Panicked(String),
    /// The output could not be exported.
    ExportFailed(String),
}
