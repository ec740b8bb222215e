//! Sending instances on: a C-STORE SCU (and C-ECHO) over dicom-ul.
//!
//! One [`StoreAssociation`] sends any number of instances to one destination; every
//! response status is read and returned to the caller.

use crate::dimse::{self, Command};
use dicom_dictionary_std::uids;
use dicom_ul::association::client::ClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use dicomnode_core::{Address, DicomInstance};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The association could not be established (refused, rejected, timed out).
    #[error("cannot associate with {address}: {source}")]
    Associate {
        /// The destination.
        address: String,
        /// The cause.
        source: Box<dicom_ul::association::Error>,
    },
    /// The peer accepted no presentation context for this SOP class and transfer syntax.
    #[error(
        "{address} accepted no presentation context for SOP class {sop_class} in {transfer_syntax}"
    )]
    NoContext {
        /// The destination.
        address: String,
        /// The SOP class.
        sop_class: String,
        /// The instance's transfer syntax.
        transfer_syntax: String,
    },
    /// Talking on the association failed.
    #[error("association with {address} failed: {message}")]
    Transfer {
        /// The destination.
        address: String,
        /// What went wrong.
        message: String,
    },
}

/// An open association for C-STORE (and C-ECHO) to one destination.
pub struct StoreAssociation {
    association: ClientAssociation<TcpStream>,
    address: String,
    message_id: u16,
}

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

impl StoreAssociation {
    /// Opens an association proposing Verification and, for each (SOP class, transfer
    /// syntax) given, a presentation context with that transfer syntax (plus the native
    /// little endian ones, if it is native).
    pub fn open(
        destination: &Address,
        calling_ae_title: &str,
        contexts: &[(String, String)],
    ) -> Result<Self, DispatchError> {
        let address = destination.to_string();
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(calling_ae_title.to_string())
            .called_ae_title(destination.ae_title.clone())
            .max_pdu_length(256 * 1024)
            .read_timeout(Duration::from_secs(60))
            .write_timeout(Duration::from_secs(60))
            .connection_timeout(Duration::from_secs(10))
            .with_abstract_syntax(uids::VERIFICATION.to_string());
        for (sop_class, ts) in contexts {
            let mut syntaxes = vec![ts.clone()];
            if ts == EXPLICIT_LE || ts == IMPLICIT_LE {
                for native in [EXPLICIT_LE, IMPLICIT_LE] {
                    if native != ts {
                        syntaxes.push(native.to_string());
                    }
                }
            }
            options = options.with_presentation_context(sop_class.clone(), syntaxes);
        }
        let mut association = options
            .establish((destination.host.as_str(), destination.port))
            .map_err(|source| DispatchError::Associate {
                address: address.clone(),
                source: Box::new(source),
            })?;
        // Without it each C-STORE waits on Nagle and delayed ACK.
        if let Err(error) = association.inner_stream().set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        Ok(StoreAssociation {
            association,
            address,
            message_id: 0,
        })
    }

    fn transfer_error(&self, message: impl ToString) -> DispatchError {
        DispatchError::Transfer {
            address: self.address.clone(),
            message: message.to_string(),
        }
    }

    fn next_message_id(&mut self) -> u16 {
        self.message_id = self.message_id.wrapping_add(1).max(1);
        self.message_id
    }

    /// Sends a C-ECHO; returns its status.
    pub fn echo(&mut self) -> Result<u16, DispatchError> {
        let pc = self
            .accepted_context(uids::VERIFICATION, None)
            .ok_or_else(|| self.transfer_error("Verification was not accepted"))?;
        let id = self.next_message_id();
        self.send_command(pc, dimse::echo_request(id))?;
        self.read_response()
    }

    fn accepted_context(&self, sop_class: &str, ts: Option<&str>) -> Option<u8> {
        self.association
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax == sop_class
                    && ts.is_none_or(|ts| pc.transfer_syntax == ts)
            })
            .map(|pc| pc.id)
    }

    fn send_command(&mut self, pc: u8, command: Vec<u8>) -> Result<(), DispatchError> {
        self.association
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: command,
                }],
            })
            .map_err(|e| self.transfer_error(e))
    }

    fn read_response(&mut self) -> Result<u16, DispatchError> {
        let mut command = Vec::new();
        loop {
            match self
                .association
                .receive()
                .map_err(|e| self.transfer_error(e))?
            {
                Pdu::PData { data } => {
                    for pdv in data {
                        if pdv.value_type == PDataValueType::Command {
                            command.extend_from_slice(&pdv.data);
                            if pdv.is_last {
                                let rsp = Command::decode(&command)
                                    .map_err(|e| self.transfer_error(e))?;
                                return rsp.status.ok_or_else(|| {
                                    self.transfer_error("response without a status")
                                });
                            }
                        }
                    }
                }
                Pdu::AbortRQ { source } => {
                    return Err(self.transfer_error(format!("aborted by the peer: {source:?}")))
                }
                other => return Err(self.transfer_error(format!("unexpected PDU: {other:?}"))),
            }
        }
    }

    /// Sends one instance in its own transfer syntax; returns the C-STORE status.
    pub fn store(&mut self, instance: &DicomInstance) -> Result<u16, DispatchError> {
        let meta = instance.meta();
        let sop_class = meta.media_storage_sop_class_uid().trim_end_matches('\0');
        let sop_instance = meta.media_storage_sop_instance_uid().trim_end_matches('\0');
        let ts = meta.transfer_syntax().trim_end_matches('\0');
        let pc =
            self.accepted_context(sop_class, Some(ts))
                .ok_or_else(|| DispatchError::NoContext {
                    address: self.address.clone(),
                    sop_class: sop_class.to_string(),
                    transfer_syntax: ts.to_string(),
                })?;
        let mut dataset = Vec::new();
        instance
            .write_dataset(&mut dataset)
            .map_err(|e| self.transfer_error(format!("cannot encode {sop_instance}: {e}")))?;
        let id = self.next_message_id();
        self.send_command(pc, dimse::store_request(id, sop_class, sop_instance))?;
        let mut writer = self.association.send_pdata(pc);
        let written = writer.write_all(&dataset).and_then(|()| writer.finish());
        written.map_err(|e| self.transfer_error(e))?;
        self.read_response()
    }

    /// Releases the association gracefully.
    pub fn release(self) -> Result<(), DispatchError> {
        let address = self.address.clone();
        self.association
            .release()
            .map_err(|e| DispatchError::Transfer {
                address,
                message: e.to_string(),
            })
    }
}
