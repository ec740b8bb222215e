//! One association, from the request to its end: negotiation under the ACSE deadline,
//! then PDUs read with deadlines of their own ([`super::pdu_reader`]), commands and data
//! sets gathered from their fragments and checked against the protocol, each C-STORE
//! taken to storage.

use super::messages::Messages;
use super::messages::{Gathering, Violation};
use super::negotiating::{Ended, Negotiating, Watch};
use super::negotiation::{send_pdu, tls_handshake, Acceptor, Association, NegotiationError};
use super::pdu_reader::{pdu_kind, Deadlines, PduReadError, PduReader};
use super::transport::{Socket, Transport};
use super::{Connections, Slot};
use crate::runner::ChildRunner;
use crate::storage::Storage;
use crate::trigger::PatientsTouched;
use crate::NodeConfig;
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, PDataValue, PDataValueType};
use dicom_ul::Pdu;
use dicomnode_core::error::error_chain;
use dicomnode_core::sanitize::escape_control;
use dicomnode_core::Sender;
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
    pub(crate) acceptor: Arc<Acceptor>,
    /// TLS on this port, with this configuration.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) storage: Arc<Storage>,
    pub(crate) runner: Arc<ChildRunner>,
    pub(crate) config: Arc<NodeConfig>,
    pub(crate) connections: Arc<Connections>,
    pub(crate) negotiating: Arc<Negotiating>,
}

/// Sends an A-ABORT; the connection closes when the association is dropped. The peer's
/// maximum PDU length bounds P-DATA, not an abort: a peer announcing a maximum of 1 byte
/// must still hear it.
fn abort<S: Transport>(association: &mut Association<S>, reason: AbortRQServiceProviderReason) {
    let pdu = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(reason),
    };
    if let Err(error) = send_pdu(&mut association.stream, &pdu) {
        tracing::debug!(%error, "cannot send the abort");
    }
}

/// Sends a P-DATA or release PDU, within the peer's maximum PDU length.
fn send<S: Transport>(association: &mut Association<S>, pdu: &Pdu) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(256);
    dicom_ul::pdu::write_pdu(&mut bytes, pdu).map_err(std::io::Error::other)?;
    if bytes.len() - 6 > association.peer_max_pdu as usize {
        return Err(std::io::Error::other(format!(
            "a PDU of {} bytes is longer than the peer takes ({} bytes)",
            bytes.len() - 6,
            association.peer_max_pdu
        )));
    }
    std::io::Write::write_all(&mut association.stream, &bytes)?;
    std::io::Write::flush(&mut association.stream)
}

impl AssociationSession {
    /// Serves one connection: `watch` holds it to the ACSE deadline until it is
    /// established.
    pub(crate) fn run(self, peer: Peer, _slot: Slot, watch: Option<Watch>) {
        let Peer { stream, addr } = peer;
        let Some(watch) = watch else {
            // Without the watcher nothing could evict it or hold it to its deadline.
            tracing::warn!(peer = %addr, "connection closed: it cannot be watched (out of file descriptors?)");
            return;
        };
        // Without it every C-STORE waits on Nagle and delayed ACK (45-90 ms here).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(peer = %addr, %error, "cannot set TCP_NODELAY");
        }
        let _ = stream.set_write_timeout(Some(self.config.association_timeout));
        // The handshake and the request are held to the ACSE deadline: every read by the
        // socket's own deadline, and the watcher shuts the socket at it besides.
        let mut socket = Socket::new(stream);
        socket.set_deadline(Instant::now() + self.config.acse_timeout);
        let reader = PduReader::new(
            self.config.max_pdu_length,
            Deadlines {
                idle: self.config.acse_timeout,
                pdu: self.config.acse_timeout,
            },
        );
        match &self.tls {
            Some(tls) => match tls_handshake(socket, tls) {
                Ok(stream) => self.establish(stream, reader, watch, &addr),
                Err(error) => {
                    let ended = self.negotiating.finish(watch);
                    self.not_established(&error, ended, &addr);
                }
            },
            None => self.establish(socket, reader, watch, &addr),
        }
    }

    /// Negotiates on `stream`; the acceptance goes out only if the watch ended in time
    /// (a connection the watcher shut down meanwhile is not answered), then serves.
    fn establish<S: Transport>(
        &self,
        mut stream: S,
        mut reader: PduReader,
        watch: Watch,
        addr: &str,
    ) {
        let decided = self.acceptor.negotiate(&mut stream, &mut reader);
        let ended = self.negotiating.finish(watch);
        let established = match (decided, ended) {
            (Ok(accepted), Ended::InTime) => accepted.establish(stream),
            (Ok(_), _) => Err(NegotiationError::Rejected(
                "the connection was shut down while its request was answered".into(),
            )),
            (Err(error), _) => Err(error),
        };
        match established {
            Ok(association) => self.serve(association, reader, addr),
            Err(error) => self.not_established(&error, ended, addr),
        }
    }

    /// Logs why there is no association.
    fn not_established(&self, error: &NegotiationError, ended: Ended, addr: &str) {
        match ended {
            Ended::Late => {
                tracing::warn!(peer = %addr, limit = ?self.config.acse_timeout, "association not established: the peer's request did not arrive in time");
            }
            // Logged, rate-limited, where the eviction happened.
            Ended::Evicted => {}
            Ended::InTime => {
                tracing::warn!(peer = %addr, error = %error_chain(error), "association not established");
            }
        }
    }

    /// Serves an established association until it ends.
    fn serve<S: Transport>(&self, mut association: Association<S>, reader: PduReader, addr: &str) {
        let sender = Sender {
            ae_title: association.peer_ae_title.clone(),
            address: addr.to_string(),
        };
        let span = tracing::info_span!("association", peer = %addr, calling = %escape_control(&sender.ae_title));
        let _entered = span.enter();
        let live = self.connections.live();
        let peer_max = association.peer_max_pdu;
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
        crate::metrics::global().association_opened();
        let mut reader = reader.with_deadlines(Deadlines {
            idle: self.config.association_timeout,
            pdu: self.config.pdu_timeout,
        });
        let mut touched = PatientsTouched::default();
        let mut counts = (0usize, 0usize);
        // Whatever happens in the conversation (even a panic in a user's rule), the
        // association's end is counted and its patients are checked.
        let ending = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.converse(&mut association, &mut reader, &mut touched, &mut counts)
        }))
        .unwrap_or_else(|_| "ended by a panic in the node (see the log above)".to_string());
        crate::metrics::global().association_closed();
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
        association: &mut Association<S>,
        reader: &mut PduReader,
        touched: &mut PatientsTouched,
        counts: &mut (usize, usize),
    ) -> String {
        let messages = Messages {
            storage: &self.storage,
            patient_key: self.config.patient_key,
            ae_title: &self.config.ae_title,
        };
        let mut gathering = Gathering::default();
        loop {
            let pdu = match reader.next(&mut association.stream) {
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
                        let reply = match messages.on_fragment(
                            pdv,
                            &mut gathering,
                            &association.contexts,
                            touched,
                        ) {
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
                        let sent = send(
                            association,
                            &Pdu::PData {
                                data: vec![PDataValue {
                                    presentation_context_id: reply.pc_id,
                                    value_type: PDataValueType::Command,
                                    is_last: true,
                                    data: reply.bytes,
                                }],
                            },
                        );
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
                    if let Err(error) = send(association, &Pdu::ReleaseRP) {
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
