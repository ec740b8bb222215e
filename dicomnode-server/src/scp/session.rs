//! One association, from the request to its end: negotiation under the ACSE deadline,
//! then PDUs read with deadlines of their own ([`super::pdu_reader`]), commands and data
//! sets gathered from their fragments and checked against the protocol, each C-STORE
//! taken to storage.

use super::messages::{Gathering, Violation};
use super::negotiating::{Ended, Negotiating};
use super::pdu_reader::{Deadlines, PduReadError, PduReader};
use super::transport::Transport;
use super::{CalledAeTitle, Connections, Slot};
use crate::runner::ChildRunner;
use crate::storage::Storage;
use crate::trigger::PatientsTouched;
use crate::NodeConfig;
use dicom_ul::association::server::{DefaultNegotiation, ServerAssociationOptions};
use dicom_ul::association::ServerAssociation;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, PDataValue, PDataValueType,
    PresentationContextResultReason,
};
use dicom_ul::Pdu;
use dicomnode_core::error::error_chain;
use dicomnode_core::sanitize::escape_control;
use dicomnode_core::Sender;
use std::collections::HashMap;
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
                Err(PduReadError::Closed) if gathering.mid_message() => {
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
