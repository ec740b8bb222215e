//! One association, from the request to its end: negotiation under the ACSE deadline,
//! then PDUs read with deadlines of their own ([`super::pdu_reader`]), commands and data
//! sets gathered from their fragments and checked against the protocol, each C-STORE
//! taken to storage.

use super::negotiating::{Ended, Negotiating};
use super::pdu_reader::{Deadlines, PduReadError, PduReader};
use super::{CalledAeTitle, Connections, Slot};
use crate::dimse::{self, status, Command, MAX_COMMAND_LEN};
use crate::runner::ChildRunner;
use crate::storage::{Incoming, Offer, ReceiveError, Storage};
use crate::trigger::PatientsTouched;
use crate::NodeConfig;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::{DefaultNegotiation, ServerAssociationOptions};
use dicom_ul::association::ServerAssociation;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, PDataValue, PDataValueType,
    PresentationContextResultReason,
};
use dicom_ul::Pdu;
use dicomnode_core::input::{tag_name, value_of};
use dicomnode_core::sanitize::escape_control;
use dicomnode_core::Sender;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

/// The smallest maximum PDU length a peer may announce: below it, not even a response
/// fits in one PDU, and the peer would wait for ever.
const MIN_PEER_PDU: u32 = 1024;

/// A connection as accepted.
pub(crate) struct Peer {
    stream: TcpStream,
    addr: String,
}

impl Peer {
    pub(crate) fn new(stream: TcpStream) -> Self {
        let addr = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        Peer { stream, addr }
    }
}

/// What one association's thread needs.
pub(crate) struct AssociationSession {
    pub(crate) options: Arc<ServerAssociationOptions<'static, CalledAeTitle, DefaultNegotiation>>,
    /// Whether associations are over TLS (the options hold its configuration).
    pub(crate) tls: bool,
    pub(crate) storage: Arc<Storage>,
    pub(crate) runner: Arc<ChildRunner>,
    pub(crate) config: Arc<NodeConfig>,
    pub(crate) connections: Arc<Connections>,
    pub(crate) negotiating: Arc<Negotiating>,
}

/// A stream an association runs on, and the TCP socket under it (for time-outs).
pub(crate) trait Transport: Read + Write + dicom_ul::association::CloseSocket {
    /// The TCP socket.
    fn socket(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Transport for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// A message being gathered from P-DATA fragments.
#[derive(Default)]
struct Gathering {
    command: Vec<u8>,
    /// A command that announced a data set.
    pending: Option<Pending>,
    /// The data set, written where it will be stored as it arrives (none when the
    /// command is refused anyway).
    data: Option<Incoming>,
}

/// A command waiting for its data set.
struct Pending {
    command: Command,
    /// Its presentation context: the data set must come on the same one.
    pc_id: u8,
    /// Set when the answer is a refusal whatever the data set holds: the command's field
    /// for the response, the status and why.
    refusal: Option<(u16, u16, String)>,
}

/// What to send after a fragment.
struct Reply {
    bytes: Vec<u8>,
    pc_id: u8,
    /// For a C-STORE: whether the instance was stored.
    stored: Option<bool>,
}

/// Why the conversation must end with an A-ABORT.
struct Violation {
    reason: AbortRQServiceProviderReason,
    why: String,
}

fn violation(reason: AbortRQServiceProviderReason, why: impl Into<String>) -> Violation {
    Violation {
        reason,
        why: why.into(),
    }
}

/// Sends an A-ABORT; the connection closes when the association is dropped. Written to
/// the stream directly: the peer's maximum PDU length bounds P-DATA, not an abort (and a
/// peer announcing a maximum of 1 byte must still hear it).
fn abort<S: Transport>(
    association: &mut ServerAssociation<S>,
    reason: AbortRQServiceProviderReason,
) {
    let pdu = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(reason),
    };
    let mut bytes = Vec::with_capacity(10);
    if dicom_ul::pdu::write_pdu(&mut bytes, &pdu).is_ok() {
        let stream = association.inner_stream();
        if let Err(error) = stream.write_all(&bytes).and_then(|()| stream.flush()) {
            tracing::debug!(%error, "cannot send the abort");
        }
    }
}

impl AssociationSession {
    pub(crate) fn run(self, peer: Peer, _slot: Slot) {
        let Peer { stream, addr } = peer;
        // Without it every C-STORE waits on Nagle and delayed ACK (45-90 ms here).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(peer = %addr, %error, "cannot set TCP_NODELAY");
        }
        let watch = self
            .negotiating
            .watch(&stream, Instant::now() + self.config.acse_timeout);
        let options = Arc::clone(&self.options);
        // dicom-ul's negotiation is not ours: a panic in it ends this connection only.
        if self.tls {
            let established = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                options.establish_tls(stream)
            }));
            let ended = watch.map(|w| self.negotiating.finish(w));
            if let Some(association) = self.established(established, ended, &addr) {
                self.serve(association, &addr);
            }
        } else {
            let established = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                options.establish(stream)
            }));
            let ended = watch.map(|w| self.negotiating.finish(w));
            if let Some(association) = self.established(established, ended, &addr) {
                self.serve(association, &addr);
            }
        }
    }

    /// The association, or why there is none (logged).
    fn established<S>(
        &self,
        established: std::thread::Result<
            Result<ServerAssociation<S>, dicom_ul::association::Error>,
        >,
        ended: Option<Ended>,
        addr: &str,
    ) -> Option<ServerAssociation<S>> {
        match established {
            Ok(Ok(association)) => Some(association),
            Ok(Err(_)) if ended == Some(Ended::Late) => {
                tracing::warn!(peer = %addr, limit = ?self.config.acse_timeout, "association not established: the peer's request did not arrive in time");
                None
            }
            // Logged, rate-limited, where the eviction happened.
            Ok(Err(_)) if ended == Some(Ended::Evicted) => None,
            Ok(Err(error)) => {
                tracing::warn!(peer = %addr, error = %error_chain(&error), "association not established");
                None
            }
            Err(_) => {
                tracing::warn!(peer = %addr, "association not established: its request could not be read");
                None
            }
        }
    }

    /// Serves an established association until it ends.
    fn serve<S: Transport>(&self, mut association: ServerAssociation<S>, addr: &str) {
        let sender = Sender {
            ae_title: dicom_ul::association::Association::peer_ae_title(&association)
                .trim()
                .to_string(),
            address: addr.to_string(),
        };
        let span = tracing::info_span!("association", peer = %addr, calling = %escape_control(&sender.ae_title));
        let _entered = span.enter();
        let live = self.connections.live();
        let peer_max = association.requestor_max_pdu_length();
        if peer_max < MIN_PEER_PDU {
            tracing::warn!(
                peer_max_pdu = peer_max,
                "association aborted: the peer's maximum PDU length is too small for any answer (at least {MIN_PEER_PDU} bytes)"
            );
            abort(
                &mut association,
                AbortRQServiceProviderReason::InvalidPduParameter,
            );
            return;
        }
        tracing::info!(live, "association established");

        let contexts: HashMap<u8, (String, String)> = association
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    (pc.abstract_syntax.clone(), pc.transfer_syntax.clone()),
                )
            })
            .collect();

        let mut touched = PatientsTouched::default();
        let mut counts = (0usize, 0usize);
        // Whatever happens in the conversation (even a panic in a user's rule), the
        // association's end is counted and its patients are checked.
        let ending = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.converse(&mut association, &contexts, &mut touched, &mut counts)
        }))
        .unwrap_or_else(|_| "ended by a panic in the node (see the log above)".to_string());
        let (stored, refused) = counts;
        tracing::info!(
            stored,
            refused,
            live = self.connections.live() - 1,
            "association ended: {ending}"
        );
        touched.association_ended(&self.storage, &self.runner, &sender);
    }

    /// Receives and answers until the association ends; returns how it ended.
    fn converse<S: Transport>(
        &self,
        association: &mut ServerAssociation<S>,
        contexts: &HashMap<u8, (String, String)>,
        touched: &mut PatientsTouched,
        counts: &mut (usize, usize),
    ) -> String {
        let mut reader = PduReader::new(
            self.config.max_pdu_length,
            Deadlines {
                idle: self.config.association_timeout,
                pdu: self.config.pdu_timeout,
            },
        );
        let mut gathering = Gathering::default();
        loop {
            let pdu = match reader.next(association.inner_stream()) {
                Ok(pdu) => pdu,
                Err(PduReadError::Closed) if gathering.pending.is_some() => {
                    return "connection lost: the peer closed it in the middle of a message (what it sent of that data set is discarded)".into()
                }
                Err(PduReadError::Closed) => {
                    return "connection lost: the peer closed it without a release".into()
                }
                Err(error @ (PduReadError::Io(_) | PduReadError::ClosedInPdu { .. })) => {
                    return format!("connection lost: {}", error_chain(&error))
                }
                Err(error) => {
                    let reason = match error {
                        PduReadError::TooLong { .. } | PduReadError::Malformed(_) => {
                            AbortRQServiceProviderReason::InvalidPduParameter
                        }
                        _ => AbortRQServiceProviderReason::ReasonNotSpecified,
                    };
                    abort(association, reason);
                    return format!("aborted by the node: {}", error_chain(&error));
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        let reply = match self.on_fragment(pdv, &mut gathering, contexts, touched) {
                            Ok(reply) => reply,
                            Err(Violation { reason, why }) => {
                                abort(association, reason);
                                return format!("aborted by the node: {why}");
                            }
                        };
                        let Some(reply) = reply else { continue };
                        match reply.stored {
                            Some(true) => counts.0 += 1,
                            Some(false) => counts.1 += 1,
                            None => {}
                        }
                        let sent = association.send(&Pdu::PData {
                            data: vec![PDataValue {
                                presentation_context_id: reply.pc_id,
                                value_type: PDataValueType::Command,
                                is_last: true,
                                data: reply.bytes,
                            }],
                        });
                        if let Err(error) = sent {
                            // The peer waits for this answer: do not leave it waiting.
                            abort(
                                association,
                                AbortRQServiceProviderReason::ReasonNotSpecified,
                            );
                            return format!("cannot send a response: {}", error_chain(&error));
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if let Err(error) = association.send(&Pdu::ReleaseRP) {
                        tracing::warn!(%error, "cannot send the release response");
                    }
                    return "released".to_string();
                }
                Pdu::AbortRQ { source } => return format!("aborted by the peer ({source:?})"),
                other => {
                    let kind = pdu_kind(&other);
                    abort(association, AbortRQServiceProviderReason::UnexpectedPdu);
                    return format!(
                        "aborted by the node: unexpected {kind} during the association"
                    );
                }
            }
        }
    }

    /// Handles one fragment; returns a response to send, or why the association must be
    /// aborted.
    fn on_fragment(
        &self,
        pdv: PDataValue,
        gathering: &mut Gathering,
        contexts: &HashMap<u8, (String, String)>,
        touched: &mut PatientsTouched,
    ) -> Result<Option<Reply>, Violation> {
        let pc_id = pdv.presentation_context_id;
        let Some((abstract_syntax, transfer_syntax)) = contexts.get(&pc_id) else {
            return Err(violation(
                AbortRQServiceProviderReason::UnexpectedPduParameter,
                format!("a fragment on presentation context {pc_id}, which was not accepted"),
            ));
        };
        match pdv.value_type {
            PDataValueType::Command => {
                if gathering.pending.is_some() {
                    return Err(violation(
                        AbortRQServiceProviderReason::UnexpectedPduParameter,
                        "a new command before the data set of the last one was complete",
                    ));
                }
                if gathering.command.len() + pdv.data.len() > MAX_COMMAND_LEN {
                    return Err(violation(
                        AbortRQServiceProviderReason::InvalidPduParameter,
                        format!("command fragments beyond {MAX_COMMAND_LEN} bytes"),
                    ));
                }
                gathering.command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return Ok(None);
                }
                let bytes = std::mem::take(&mut gathering.command);
                let command = Command::decode(&bytes).map_err(|error| {
                    // No message ID to answer: the peer would wait for ever.
                    violation(
                        AbortRQServiceProviderReason::InvalidPduParameter,
                        format!("unreadable command: {}", error_chain(&error)),
                    )
                })?;
                Ok(self.on_command(command, pc_id, abstract_syntax, gathering))
            }
            PDataValueType::Data => {
                let Some(pending) = &gathering.pending else {
                    return Err(violation(
                        AbortRQServiceProviderReason::UnexpectedPduParameter,
                        "a data set fragment without a command announcing it",
                    ));
                };
                if pending.pc_id != pc_id {
                    return Err(violation(
                        AbortRQServiceProviderReason::UnexpectedPduParameter,
                        format!(
                            "a data set on presentation context {pc_id} for a command on {}",
                            pending.pc_id
                        ),
                    ));
                }
                if pending.refusal.is_none() {
                    // The data set's transfer syntax is that of its own presentation context.
                    let command = &pending.command;
                    let incoming = gathering.data.get_or_insert_with(|| {
                        self.storage.incoming(
                            &command.sop_class_uid,
                            &command.sop_instance_uid,
                            transfer_syntax,
                        )
                    });
                    incoming.push(pdv.data);
                }
                if !pdv.is_last {
                    return Ok(None);
                }
                let incoming = gathering.data.take();
                let Some(pending) = gathering.pending.take() else {
                    return Ok(None);
                };
                let (field, code, comment) = match (pending.refusal, incoming) {
                    (Some((field, code, why)), _) => (field, code, Some(why)),
                    (None, Some(incoming)) => {
                        let (code, comment) =
                            self.store(&pending.command, transfer_syntax, incoming, touched);
                        (dimse::C_STORE_RSP, code, comment)
                    }
                    (None, None) => (
                        dimse::C_STORE_RSP,
                        status::CANNOT_UNDERSTAND,
                        Some("no data set".to_string()),
                    ),
                };
                Ok(Some(Reply {
                    bytes: dimse::response(&pending.command, field, code, comment.as_deref()),
                    pc_id: pending.pc_id,
                    stored: (field == dimse::C_STORE_RSP).then_some(code == status::SUCCESS),
                }))
            }
        }
    }

    /// A complete command: answered at once, or waiting for its data set.
    fn on_command(
        &self,
        command: Command,
        pc_id: u8,
        abstract_syntax: &str,
        gathering: &mut Gathering,
    ) -> Option<Reply> {
        let refuse_now = |field: u16, code: u16, why: String| {
            Some(Reply {
                bytes: dimse::response(&command, field, code, Some(&why)),
                pc_id,
                stored: (field == dimse::C_STORE_RSP).then_some(false),
            })
        };
        let refusal = match command.field {
            dimse::C_ECHO_RQ if !command.has_data_set => {
                tracing::debug!("C-ECHO");
                return Some(Reply {
                    bytes: dimse::response(&command, dimse::C_ECHO_RSP, status::SUCCESS, None),
                    pc_id,
                    stored: None,
                });
            }
            dimse::C_STORE_RQ if !command.has_data_set => {
                tracing::warn!("C-STORE refused: the request announces no data set");
                return refuse_now(
                    dimse::C_STORE_RSP,
                    status::CANNOT_UNDERSTAND,
                    "a C-STORE request without a data set".into(),
                );
            }
            dimse::C_STORE_RQ if command.sop_instance_uid.is_empty() => Some((
                dimse::C_STORE_RSP,
                status::CANNOT_UNDERSTAND,
                "no Affected SOP Instance UID".to_string(),
            )),
            dimse::C_STORE_RQ if command.sop_class_uid != abstract_syntax => Some((
                dimse::C_STORE_RSP,
                status::SOP_CLASS_NOT_SUPPORTED,
                "SOP class differs from its presentation context's".to_string(),
            )),
            dimse::C_STORE_RQ => None,
            field => Some((
                field | 0x8000,
                status::UNRECOGNIZED_OPERATION,
                "operation not supported by this node".to_string(),
            )),
        };
        if let Some((field, code, why)) = &refusal {
            tracing::warn!(
                command = format!("{:#06x}", command.field),
                sop_instance = %escape_control(&command.sop_instance_uid),
                status = format!("{code:#06x}"),
                "request refused: {why}"
            );
            if !command.has_data_set {
                return refuse_now(*field, *code, why.clone());
            }
        }
        // Its data set follows; the answer comes when it is complete.
        gathering.pending = Some(Pending {
            command,
            pc_id,
            refusal,
        });
        gathering.data = None;
        None
    }

    /// Stores one instance; returns the C-STORE status and, on failure, a comment.
    fn store(
        &self,
        command: &Command,
        transfer_syntax: &str,
        incoming: Incoming,
        touched: &mut PatientsTouched,
    ) -> (u16, Option<String>) {
        let uid = escape_control(&command.sop_instance_uid);
        let refuse = |code: u16, why: String| {
            tracing::warn!(sop_instance = %uid, status = format!("{code:#06x}"), "C-STORE refused: {}", escape_control(&why));
            (code, Some(why))
        };
        if TransferSyntaxRegistry.get(transfer_syntax).is_none() {
            return refuse(
                status::CANNOT_UNDERSTAND,
                format!("no known transfer syntax for the data set ({transfer_syntax:?})"),
            );
        }
        let received = self.storage.receive(
            incoming,
            &command.sop_class_uid,
            &command.sop_instance_uid,
            transfer_syntax,
        );
        let (instance, temp) = match received {
            Ok(received) => received,
            Err(error @ ReceiveError::Resources(_)) => {
                return refuse(status::OUT_OF_RESOURCES, error.to_string())
            }
            Err(error @ ReceiveError::Unreadable(_)) => {
                return refuse(status::CANNOT_UNDERSTAND, error.to_string())
            }
        };
        let patient_key = self.config.patient_key;
        let Some(key) = value_of(&instance.header, patient_key) else {
            if let Some(temp) = temp {
                crate::storage::disk::remove_temp(&temp);
            }
            return refuse(
                status::DATA_SET_DOES_NOT_MATCH,
                format!(
                    "no patient key: {} is missing or empty",
                    tag_name(patient_key)
                ),
            );
        };
        touched.touch(&self.storage, &key);
        let patient = escape_control(&key);
        match self.storage.offer(&key, instance, temp.as_deref()) {
            Offer::Stored(inputs) => {
                tracing::debug!(%patient, sop_instance = %uid, ?inputs, "stored");
                (status::SUCCESS, None)
            }
            Offer::Rejected(reasons) => {
                let why = reasons
                    .iter()
                    .map(|(input, reason)| format!("input {input:?}: {reason}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(%patient, sop_instance = %uid, "C-STORE refused: accepted by no input ({})", escape_control(&why));
                (
                    status::DATA_SET_DOES_NOT_MATCH,
                    Some("accepted by no input".into()),
                )
            }
            Offer::Failed(why) => refuse(
                status::OUT_OF_RESOURCES,
                format!("cannot store for patient {patient}: {why}"),
            ),
        }
    }
}

/// An error and its sources, joined.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    escape_control(&text).into_owned()
}

fn pdu_kind(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::Unknown { .. } => "unknown PDU",
        _ => "PDU",
    }
}
