//! Reads an established association's PDUs with deadlines of its own.
//!
//! dicom-ul's `receive` reads with the socket's per-read time-out only, so a peer sending
//! one byte every few seconds holds a thread for ever. Here the reader knows where each
//! PDU starts: the wait for a PDU's first byte is bounded by the idle limit, and once it
//! has started the whole PDU must arrive within the PDU limit. A PDU longer than the
//! node's maximum is refused from its header, before anything is buffered for it.

use super::transport::Transport;
use dicom_ul::Pdu;
use std::io;
use std::time::{Duration, Instant};

/// How long a peer may take, as the reader enforces it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// From the end of one PDU to the first byte of the next.
    pub idle: Duration,
    /// From the first byte of a PDU to its last.
    pub pdu: Duration,
}

/// Why no PDU was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PduReadError {
    /// The peer closed the connection between PDUs.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a PDU.
    #[error("the peer closed the connection in the middle of a PDU ({have} of {want} bytes)")]
    ClosedInPdu {
        /// Bytes received of it.
        have: usize,
        /// Its declared size.
        want: usize,
    },
    /// Nothing arrived within the idle limit.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// A PDU did not complete within the PDU limit.
    #[error("a PDU took longer than {limit:?} to arrive ({have} of {want} bytes in that time)")]
    Slow {
        /// The limit.
        limit: Duration,
        /// Bytes received of it.
        have: usize,
        /// Its declared size (0: its header is not complete).
        want: usize,
    },
    /// A PDU declared a length beyond the node's maximum.
    #[error("a PDU of {length} bytes is longer than the {max} bytes this node accepts")]
    TooLong {
        /// Declared length.
        length: u32,
        /// The node's maximum.
        max: u32,
    },
    /// The PDU could not be parsed.
    #[error("malformed PDU")]
    Malformed(#[source] dicom_ul::pdu::ReadError),
    /// Reading failed.
    #[error("cannot read from the peer")]
    Io(#[source] io::Error),
}

/// PDU header: type, reserved, 4-byte length.
const HEADER: usize = 6;

/// Reads PDUs from a stream whose socket it can set time-outs on.
pub(crate) struct PduReader {
    buffer: Vec<u8>,
    max_pdu_length: u32,
    deadlines: Deadlines,
}

impl PduReader {
    pub(crate) fn new(max_pdu_length: u32, deadlines: Deadlines) -> Self {
        PduReader {
            buffer: Vec::new(),
            max_pdu_length,
            deadlines,
        }
    }

    /// The same reader (what it has buffered beyond the last PDU included), held to other
    /// deadlines from now on.
    pub(crate) fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// The next PDU; the time-outs are set on the TCP socket under `stream`.
    pub(crate) fn next<S: Transport>(&mut self, stream: &mut S) -> Result<Pdu, PduReadError> {
        let waiting_since = Instant::now();
        // Bytes of the next PDU may have come with the last one: it has started then.
        let mut started: Option<Instant> = (!self.buffer.is_empty()).then(Instant::now);
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(pdu) = self.complete_pdu()? {
                return Ok(pdu);
            }
            let now = Instant::now();
            let deadline = match started {
                None => waiting_since + self.deadlines.idle,
                Some(at) => at + self.deadlines.pdu,
            };
            if now >= deadline {
                return Err(self.late(started.is_some()));
            }
            // Every read of the socket under the stream is held to it (TLS included).
            stream.set_deadline(deadline);
            // Never read past the end of the current PDU's declared length by much: the
            // buffer stays within one PDU plus one chunk.
            match stream.read(&mut chunk) {
                Ok(0) if self.buffer.is_empty() => return Err(PduReadError::Closed),
                Ok(0) => {
                    return Err(PduReadError::ClosedInPdu {
                        have: self.buffer.len(),
                        want: self.declared().unwrap_or(0),
                    })
                }
                Ok(n) => {
                    // The PDU starts when its first byte arrives, not when the wait began.
                    started.get_or_insert_with(Instant::now);
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(self.late(started.is_some()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PduReadError::Io(e)),
            }
        }
    }

    fn late(&self, started: bool) -> PduReadError {
        if started {
            PduReadError::Slow {
                limit: self.deadlines.pdu,
                have: self.buffer.len(),
                want: self.declared().unwrap_or(0),
            }
        } else {
            PduReadError::Idle(self.deadlines.idle)
        }
    }

    /// The whole size of the PDU being read, once its header is in.
    fn declared(&self) -> Option<usize> {
        let header: [u8; HEADER] = self.buffer.get(..HEADER)?.try_into().ok()?;
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        Some(HEADER + length as usize)
    }

    /// A PDU, if the buffer holds a whole one; checks the declared length first.
    fn complete_pdu(&mut self) -> Result<Option<Pdu>, PduReadError> {
        if self.buffer.len() < HEADER {
            return Ok(None);
        }
        let length = u32::from_be_bytes([
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
            self.buffer[5],
        ]);
        // The node's maximum applies to P-DATA; association PDUs (A-ASSOCIATE-RQ with
        // many presentation contexts) are held to the same bound.
        if length > self.max_pdu_length {
            return Err(PduReadError::TooLong {
                length,
                max: self.max_pdu_length,
            });
        }
        let total = HEADER + length as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        let parsed = {
            let bytes = &self.buffer[..total];
            // dicom-ul's parser is not ours: a panic inside it is a malformed PDU.
            std::panic::catch_unwind(|| dicom_ul::pdu::read_pdu(bytes, self.max_pdu_length, true))
        };
        self.buffer.drain(..total);
        match parsed {
            Ok(Ok(Some(pdu))) => Ok(Some(pdu)),
            Ok(Ok(None)) => Err(PduReadError::ClosedInPdu {
                have: total,
                want: total,
            }),
            Ok(Err(error)) => Err(PduReadError::Malformed(error)),
            Err(_) => Err(PduReadError::Io(io::Error::other(
                "the PDU parser panicked on this PDU",
            ))),
        }
    }
}

/// What kind of PDU it is, for the log.
pub(crate) fn pdu_kind(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::Unknown { .. } => "unknown PDU",
        _ => "PDU",
    }
}
