//! The association negotiation, on dicom-ul's PDU codec: the A-ASSOCIATE-RQ is read with
//! the node's own deadlines, checked (protocol, application context, AE titles), and
//! answered with an A-ASSOCIATE-AC for the presentation contexts the node takes, or an
//! A-ASSOCIATE-RJ; TLS is a rustls handshake done here first.
//!
//! dicom-ul's `ServerAssociationOptions::establish` is not used: with its TLS feature on,
//! a connection that ends before a complete request (a port scan, a peer shut out at its
//! deadline) sends its fallback TLS probe into a loop on end-of-stream, one spinning
//! thread for each such connection, and its TLS handshake has the same loop.

use super::pdu_reader::{pdu_kind, PduReadError, PduReader};
use super::transport::{Socket, Transport};
use super::CalledAeTitle;
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceUserReason,
    AssociationRJSource, PresentationContextResult, PresentationContextResultReason,
    UserVariableItem,
};
use dicom_ul::Pdu;
use dicomnode_core::uid::trim_uid;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::Arc;

/// The DICOM application context, the only one there is.
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// A negotiated association: its stream and what was agreed.
pub(crate) struct Association<S> {
    pub(crate) stream: S,
    /// The calling AE title, trimmed.
    pub(crate) peer_ae_title: String,
    /// The longest P-DATA PDU the peer takes.
    pub(crate) peer_max_pdu: u32,
    /// Accepted presentation contexts: id → (abstract syntax, transfer syntax).
    pub(crate) contexts: HashMap<u8, (String, String)>,
}

/// Why no association was established.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NegotiationError {
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    /// The request could not be read.
    #[error("cannot read the association request")]
    Read(#[source] PduReadError),
    /// The first PDU was not an association request.
    #[error("the first PDU was {0}, not an A-ASSOCIATE-RQ")]
    NotARequest(&'static str),
    /// The request was rejected (the A-ASSOCIATE-RJ was sent).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The answer could not be sent.
    #[error("cannot send the answer")]
    Write(#[source] io::Error),
}

/// What the node accepts.
pub(crate) struct Acceptor {
    pub(crate) ae_title: String,
    pub(crate) access: CalledAeTitle,
    pub(crate) abstract_syntaxes: HashSet<String>,
    pub(crate) max_pdu_length: u32,
}

/// Encodes and sends one PDU.
pub(crate) fn send_pdu<S: Write>(stream: &mut S, pdu: &Pdu) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(256);
    dicom_ul::pdu::write_pdu(&mut bytes, pdu).map_err(io::Error::other)?;
    stream.write_all(&bytes)?;
    stream.flush()
}

/// The TLS handshake, driven here so that an end of stream ends it; the socket's deadline
/// (the ACSE deadline) bounds every read of it.
pub(crate) fn tls_handshake(
    socket: Socket,
    config: &Arc<rustls::ServerConfig>,
) -> Result<rustls::StreamOwned<rustls::ServerConnection, Socket>, NegotiationError> {
    let connection = rustls::ServerConnection::new(Arc::clone(config))
        .map_err(|e| NegotiationError::Tls(io::Error::other(e)))?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok((0, 0)) => {
                return Err(NegotiationError::Tls(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(error) => return Err(NegotiationError::Tls(error)),
        }
    }
    Ok(stream)
}

/// An association request the node accepts: the answer to send, and what was agreed.
pub(crate) struct Accepted {
    answer: Pdu,
    peer_ae_title: String,
    peer_max_pdu: u32,
    contexts: HashMap<u8, (String, String)>,
}

impl Accepted {
    /// Sends the A-ASSOCIATE-AC: the association is established.
    pub(crate) fn establish<S: Transport>(
        self,
        mut stream: S,
    ) -> Result<Association<S>, NegotiationError> {
        send_pdu(&mut stream, &self.answer).map_err(NegotiationError::Write)?;
        Ok(Association {
            stream,
            peer_ae_title: self.peer_ae_title,
            peer_max_pdu: self.peer_max_pdu,
            contexts: self.contexts,
        })
    }
}

impl Acceptor {
    /// Reads the association request from `stream` and decides: a rejection is sent at
    /// once; an acceptance is returned, to be sent with [`Accepted::establish`].
    pub(crate) fn negotiate<S: Transport>(
        &self,
        stream: &mut S,
        reader: &mut PduReader,
    ) -> Result<Accepted, NegotiationError> {
        let pdu = reader.next(stream).map_err(NegotiationError::Read)?;
        let Pdu::AssociationRQ(request) = pdu else {
            let abort = Pdu::AbortRQ {
                source: dicom_ul::pdu::AbortRQSource::ServiceProvider(
                    dicom_ul::pdu::AbortRQServiceProviderReason::UnexpectedPdu,
                ),
            };
            let _ = send_pdu(stream, &abort);
            return Err(NegotiationError::NotARequest(pdu_kind(&pdu)));
        };
        let calling = request.calling_ae_title.trim().to_string();
        let reject = |stream: &mut S, reason: AssociationRJServiceUserReason, why: String| {
            let rejection = Pdu::AssociationRJ(AssociationRJ {
                result: AssociationRJResult::Permanent,
                source: AssociationRJSource::ServiceUser(reason),
            });
            match send_pdu(stream, &rejection) {
                Ok(()) => NegotiationError::Rejected(why),
                Err(error) => NegotiationError::Write(error),
            }
        };
        if request.protocol_version & 1 == 0 {
            return Err(reject(
                stream,
                AssociationRJServiceUserReason::NoReasonGiven,
                format!("protocol version {:#06x}", request.protocol_version),
            ));
        }
        if trim_uid(&request.application_context_name) != APPLICATION_CONTEXT {
            return Err(reject(
                stream,
                AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
                "an application context other than DICOM's".into(),
            ));
        }
        if let Err(reason) = self.access.check(
            &self.ae_title,
            &request.calling_ae_title,
            &request.called_ae_title,
        ) {
            return Err(reject(stream, reason, "AE title not accepted".into()));
        }
        let peer_max_pdu = request
            .user_variables
            .iter()
            .find_map(|v| match v {
                UserVariableItem::MaxLength(0) => Some(u32::MAX),
                UserVariableItem::MaxLength(len) => Some(*len),
                _ => None,
            })
            // The standard's default when the item is absent is "no limit" in practice;
            // DCMTK assumes 16 KiB. The smaller is safe.
            .unwrap_or(16 * 1024);
        let mut contexts = HashMap::new();
        let results = request
            .presentation_contexts
            .iter()
            .map(|pc| {
                let abstract_syntax = trim_uid(&pc.abstract_syntax).to_string();
                let chosen = self
                    .abstract_syntaxes
                    .contains(&abstract_syntax)
                    .then(|| {
                        dicom_ul::association::server::choose_supported(
                            pc.transfer_syntaxes.iter().map(|ts| trim_uid(ts)),
                        )
                    })
                    .flatten();
                let (reason, transfer_syntax) = match chosen {
                    Some(ts) => {
                        contexts.insert(pc.id, (abstract_syntax, ts.to_string()));
                        (PresentationContextResultReason::Acceptance, ts.to_string())
                    }
                    None if self.abstract_syntaxes.contains(&abstract_syntax) => (
                        PresentationContextResultReason::TransferSyntaxesNotSupported,
                        "1.2.840.10008.1.2".to_string(),
                    ),
                    None => (
                        PresentationContextResultReason::AbstractSyntaxNotSupported,
                        "1.2.840.10008.1.2".to_string(),
                    ),
                };
                PresentationContextResult {
                    id: pc.id,
                    reason,
                    transfer_syntax,
                }
            })
            .collect();
        let accept = Pdu::AssociationAC(AssociationAC {
            protocol_version: 1,
            calling_ae_title: request.calling_ae_title.clone(),
            called_ae_title: request.called_ae_title.clone(),
            application_context_name: APPLICATION_CONTEXT.to_string(),
            presentation_contexts: results,
            user_variables: vec![
                UserVariableItem::MaxLength(self.max_pdu_length),
                UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
                UserVariableItem::ImplementationVersionName(
                    IMPLEMENTATION_VERSION_NAME.to_string(),
                ),
            ],
        });
        Ok(Accepted {
            answer: accept,
            peer_ae_title: calling,
            peer_max_pdu,
            contexts,
        })
    }
}
