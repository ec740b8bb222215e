//! Typed errors of the model.

use std::fmt;

/// The error a [`Processor`](crate::Processor) returns when it cannot process a patient.
///
/// Any `std::error::Error` converts into it, so `?` works inside `process`; use
/// [`ProcessError::new`] for a message of your own. Its text, with the chain of causes,
/// reaches the node's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError {
    message: String,
}

impl ProcessError {
    /// An error with the given message.
    pub fn new(message: impl fmt::Display) -> Self {
        ProcessError {
            message: message.to_string(),
        }
    }

    /// The message, including the chain of causes.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for ProcessError {
    fn from(error: E) -> Self {
        ProcessError {
            message: error_chain(&error),
        }
    }
}

/// An error's message followed by its causes, `: `-separated. A cause whose text is in
/// the message already (an error that shows its source) is not repeated.
///
/// ```
/// use dicomnode_core::error::error_chain;
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot store: {0}")]
/// struct Store(#[source] std::io::Error);
/// let error = Store(std::io::Error::other("disk full"));
/// assert_eq!(error_chain(&error), "cannot store: disk full");
/// ```
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why an [`Output`](crate::Output) could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path being written.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An instance could not be encoded as a DICOM file.
    #[error("cannot encode instance {sop_instance_uid} to {path}: {source}")]
    Encode {
        /// The SOP Instance UID of the instance.
        sop_instance_uid: String,
        /// The path being written.
        path: std::path::PathBuf,
        /// The underlying error.
        source: Box<dicom_object::WriteError>,
    },
    /// An instance lacks an attribute the output needs (e.g. a UID to name its file).
    #[error("instance lacks {0}")]
    MissingAttribute(&'static str),
    /// Sending to a DICOM destination failed.
    #[error("sending to {destination} failed ({kind}) after {attempts} attempt(s): {source}")]
    Send {
        /// The destination, `AE@host:port`.
        destination: String,
        /// Whether trying again later may help.
        kind: SendFailure,
        /// How many attempts were made.
        attempts: u32,
        /// What went wrong (the last attempt's error).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Several outputs failed (a [`MultiOutput`](crate::MultiOutput)).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<ExportError>),
    /// Any other failure, described.
    #[error("{0}")]
    Other(String),
}

/// Whether a failed send may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// Connection refused, timed out, aborted: worth retrying later.
    Transient,
    /// Association rejected, failure status: retrying the same will fail the same way.
    Permanent,
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendFailure::Transient => "transient",
            SendFailure::Permanent => "permanent",
        })
    }
}

/// Why synthetic test data could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyntheticError {
    /// The series has no slices (or a slice has no pixels).
    #[error("a synthetic series needs at least one slice with pixels")]
    Empty,
    /// The file meta group could not be built.
    #[error("cannot attach the file meta group: {0}")]
    WithMeta(#[from] Box<dicom_object::WithMetaError>),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path being written.
        path: std::path::PathBuf,
        /// The underlying error.
        source: Box<dicom_object::WriteError>,
    },
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("terse")]
    struct Terse(#[source] std::io::Error);

    /// Shows its whole chain, like `DispatchError::Associate`.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot associate: {}", error_chain(.0))]
    struct Shows(#[source] Terse);

    #[derive(Debug, thiserror::Error)]
    #[error("sending failed: {0}")]
    struct Outer(#[source] Shows);

    #[test]
    fn causes_follow_once() {
        let terse = || Terse(std::io::Error::other("refused"));
        assert_eq!(error_chain(&terse()), "terse: refused");
        assert_eq!(
            error_chain(&Outer(Shows(terse()))),
            "sending failed: cannot associate: terse: refused"
        );
        assert_eq!(
            ProcessError::from(Outer(Shows(terse()))).message(),
            "sending failed: cannot associate: terse: refused"
        );
    }
}
