//! The requesting side of an association, shared by every service the node uses as an SCU
//! (C-STORE in `dispatch`; C-FIND, C-MOVE and C-GET in `retrieve`): establishing it, over
//! plain TCP or TLS as the destination's address says, and sending and reading PDUs.

use dicom_ul::association::client::ClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use dicomnode_core::error::error_chain;
use dicomnode_core::Address;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// Why an association as an SCU failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The association could not be established (refused, rejected, timed out).
    #[error("cannot associate with {address}: {}", error_chain(source.as_ref()))]
    Associate {
        /// The peer.
        address: String,
        /// The cause.
        source: Box<dicom_ul::association::Error>,
    },
    /// The TLS settings of the peer's address are not usable.
    #[error("cannot associate with {address} over TLS: {}", error_chain(source))]
    Tls {
        /// The peer.
        address: String,
        /// The cause.
        source: crate::tls::TlsError,
    },
    /// Talking on the association failed (time-out, reset, abort, protocol error).
    #[error("association with {address} failed: {source}")]
    Transfer {
        /// The peer.
        address: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The association, over plain TCP or TLS.
enum Link {
    Plain(ClientAssociation<TcpStream>),
    Tls(Box<ClientAssociation<dicom_ul::association::client::TlsStream>>),
}

/// Runs the same code on either kind of association.
macro_rules! on_link {
    ($link:expr, $association:ident => $body:expr) => {
        match $link {
            Link::Plain($association) => $body,
            Link::Tls($association) => $body,
        }
    };
}

/// An established association as an SCU.
pub(crate) struct ScuAssociation {
    link: Link,
    address: String,
    message_id: u16,
}

impl ScuAssociation {
    /// Establishes an association with `destination`, proposing what `options` say (the
    /// called AE title and the transport come from the address). Sets TCP_NODELAY.
    pub(crate) fn establish(
        destination: &Address,
        options: ClientAssociationOptions<'_>,
    ) -> Result<Self, LinkError> {
        let address = destination.to_string();
        let options = options.called_ae_title(destination.ae_title.clone());
        let failed = |source| LinkError::Associate {
            address: address.clone(),
            source: Box::new(source),
        };
        let target = (destination.host.as_str(), destination.port);
        let mut link = match &destination.tls {
            None => Link::Plain(options.establish(target).map_err(failed)?),
            Some(tls) => {
                let config = crate::tls::client_config(tls).map_err(|source| LinkError::Tls {
                    address: address.clone(),
                    source,
                })?;
                let association = options
                    .tls_config(config)
                    .server_name(&destination.host)
                    .establish_tls(target)
                    .map_err(failed)?;
                Link::Tls(Box::new(association))
            }
        };
        // Without it each message waits on Nagle and delayed ACK.
        let nodelay = match &mut link {
            Link::Plain(a) => a.inner_stream().set_nodelay(true),
            Link::Tls(a) => a.inner_stream().sock.set_nodelay(true),
        };
        if let Err(error) = nodelay {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        Ok(ScuAssociation {
            link,
            address,
            message_id: 0,
        })
    }

    /// A failure while talking to the peer.
    pub(crate) fn transfer_error(
        &self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> LinkError {
        LinkError::Transfer {
            address: self.address.clone(),
            source: source.into(),
        }
    }

    /// The next message ID (never 0).
    pub(crate) fn next_message_id(&mut self) -> u16 {
        self.message_id = self.message_id.wrapping_add(1).max(1);
        self.message_id
    }

    /// The accepted presentation context for `sop_class` (in `ts`, if given).
    pub(crate) fn accepted_context(&self, sop_class: &str, ts: Option<&str>) -> Option<u8> {
        on_link!(&self.link, a => a.presentation_contexts())
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax == sop_class
                    && ts.is_none_or(|ts| pc.transfer_syntax == ts)
            })
            .map(|pc| pc.id)
    }

    /// The abstract and transfer syntax of the accepted presentation context `id`.
    pub(crate) fn context(&self, id: u8) -> Option<(String, String)> {
        on_link!(&self.link, a => a.presentation_contexts())
            .iter()
            .find(|pc| pc.id == id && pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| (pc.abstract_syntax.clone(), pc.transfer_syntax.clone()))
    }

    /// Sends a command set on presentation context `pc`.
    pub(crate) fn send_command(&mut self, pc: u8, command: Vec<u8>) -> Result<(), LinkError> {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        };
        on_link!(&mut self.link, a => a.send(&pdu)).map_err(|e| self.transfer_error(e))
    }

    /// Sends a data set on `pc`, written by `write` straight into P-DATA PDUs sized for the
    /// peer.
    pub(crate) fn send_data(
        &mut self,
        pc: u8,
        write: impl FnOnce(&mut dyn Write) -> Result<(), String>,
    ) -> Result<(), LinkError> {
        let written = on_link!(&mut self.link, a => {
            let mut writer = a.send_pdata(pc);
            write(&mut writer).and_then(|()| writer.finish().map_err(|e| e.to_string()))
        });
        written.map_err(|e| self.transfer_error(e))
    }

    /// Reads the next PDU (bounded by the read time-out).
    pub(crate) fn receive(&mut self) -> Result<Pdu, LinkError> {
        on_link!(&mut self.link, a => a.receive()).map_err(|e| self.transfer_error(e))
    }

    /// Bounds how long one read may wait from now on.
    pub(crate) fn set_read_timeout(&mut self, timeout: Duration) {
        let timeout = Some(timeout.max(Duration::from_millis(1)));
        let set = match &mut self.link {
            Link::Plain(a) => a.inner_stream().set_read_timeout(timeout),
            Link::Tls(a) => a.inner_stream().sock.set_read_timeout(timeout),
        };
        if let Err(error) = set {
            tracing::warn!(%error, "cannot set the read time-out");
        }
    }

    /// Shuts the connection down at `deadline` unless the returned sender is dropped (or
    /// sent to) first: a hard bound on every read and write, however slowly a peer
    /// trickles bytes. `None` when the socket cannot be watched.
    pub(crate) fn deadline_watchdog(
        &mut self,
        deadline: std::time::Instant,
    ) -> Option<std::sync::mpsc::Sender<()>> {
        let socket = match &mut self.link {
            Link::Plain(a) => a.inner_stream().try_clone(),
            Link::Tls(a) => a.inner_stream().sock.try_clone(),
        };
        let socket = match socket {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the association's deadline");
                return None;
            }
        };
        let (stand_down, wait) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("scu-deadline".into())
            .spawn(move || {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(left) {
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                }
            });
        match spawned {
            Ok(_) => Some(stand_down),
            Err(error) => {
                tracing::warn!(%error, "cannot watch the association's deadline");
                None
            }
        }
    }

    /// Releases the association gracefully.
    pub(crate) fn release(self) -> Result<(), LinkError> {
        let address = self.address.clone();
        on_link!(self.link, a => a.release()).map_err(|e| LinkError::Transfer {
            address,
            source: Box::new(e),
        })
    }

    /// Aborts the association (after a failure: no answer is awaited).
    pub(crate) fn abort(self) {
        if let Err(error) = on_link!(self.link, a => a.abort()) {
            tracing::debug!(%error, "abort after a failure");
        }
    }
}
