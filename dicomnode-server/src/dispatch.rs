//! Sending instances on: a C-STORE SCU (and C-ECHO) over dicom-ul.
//!
//! One [`StoreAssociation`] sends any number of instances to one destination; every
//! response status is read and returned to the caller.

use crate::dimse;
use crate::scu::{LinkError, ScuAssociation};
use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_ul::pdu::PDataValueType;
use dicom_ul::{ClientAssociationOptions, Pdu};
use dicomnode_core::error::error_chain;
use dicomnode_core::uid::{meta_uids, trim_uid};
use dicomnode_core::{Address, DicomInstance, Export, ExportError, RetryPolicy, SendFailure};
use std::io::Write;
use std::time::Duration;

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The peer answered a C-STORE with a failure status.
    #[error("{address} refused {sop_instance} with status {status:#06x}")]
    Refused {
        /// The destination.
        address: String,
        /// The instance.
        sop_instance: String,
        /// The status.
        status: u16,
    },
    /// The association could not be established, or talking on it failed.
    #[error(transparent)]
    Link(#[from] LinkError),
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
    /// The destination accepts the instance only uncompressed, and its pixel data could
    /// not be decoded.
    #[error("{address} accepts {sop_instance} only uncompressed, and it cannot be decoded")]
    Decode {
        /// The destination.
        address: String,
        /// The instance.
        sop_instance: String,
        /// Why decoding failed.
        #[source]
        source: dicomnode_core::pixels::PixelError,
    },
}

impl DispatchError {
    /// Whether trying again later may help: a refused connection, a time-out, an abort
    /// may pass; a rejected association or a failure status will not.
    pub fn kind(&self) -> SendFailure {
        use dicom_ul::association::Error as Ul;
        use dicom_ul::pdu::AssociationRJResult;
        match self {
            DispatchError::Link(LinkError::Associate { source, .. }) => match source.as_ref() {
                Ul::Rejected { association_rj, .. }
                    if association_rj.result == AssociationRJResult::Transient =>
                {
                    SendFailure::Transient
                }
                Ul::Rejected { .. }
                | Ul::NoAcceptedPresentationContexts { .. }
                | Ul::ProtocolVersionMismatch { .. } => SendFailure::Permanent,
                _ => SendFailure::Transient,
            },
            // "Out of resources" (e.g. the peer's disk is full) may pass.
            DispatchError::Refused { status, .. } if (0xA700..=0xA7FF).contains(status) => {
                SendFailure::Transient
            }
            DispatchError::NoContext { .. }
            | DispatchError::Refused { .. }
            | DispatchError::Link(LinkError::Tls { .. })
            | DispatchError::Decode { .. } => SendFailure::Permanent,
            DispatchError::Link(LinkError::Transfer { .. }) => SendFailure::Transient,
        }
    }
}

/// An open association for C-STORE (and C-ECHO) to one destination.
pub struct StoreAssociation {
    association: ScuAssociation,
    address: String,
}

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

fn is_native(ts: &str) -> bool {
    ts == EXPLICIT_LE || ts == IMPLICIT_LE
}

impl StoreAssociation {
    /// Opens an association proposing Verification and, for each (SOP class, transfer
    /// syntax) given, a presentation context with that transfer syntax (plus the native
    /// little endian ones, if it is native). A compressed syntax gets a second context
    /// with the native ones, so that a peer that does not take it can be sent the
    /// instance decoded.
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
        // One native context per SOP class is enough for any number of compressed syntaxes
        // (and none when the class is proposed natively anyway): 128 contexts at most.
        let mut native_for: std::collections::BTreeSet<&str> = contexts
            .iter()
            .filter(|(_, ts)| is_native(ts))
            .map(|(class, _)| class.as_str())
            .collect();
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
            if !is_native(ts) && native_for.insert(sop_class.as_str()) {
                options = options.with_presentation_context(
                    sop_class.clone(),
                    vec![EXPLICIT_LE.to_string(), IMPLICIT_LE.to_string()],
                );
            }
        }
        let association = ScuAssociation::establish(destination, options)?;
        Ok(StoreAssociation {
            association,
            address,
        })
    }

    fn transfer_error(
        &self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DispatchError {
        DispatchError::Link(self.association.transfer_error(source))
    }

    /// Sends a C-ECHO; returns its status.
    pub fn echo(&mut self) -> Result<u16, DispatchError> {
        let pc = self
            .accepted_context(uids::VERIFICATION, None)
            .ok_or_else(|| self.transfer_error("Verification was not accepted"))?;
        let id = self.association.next_message_id();
        self.association.send_command(pc, dimse::echo_request(id))?;
        self.read_response()
    }

    fn accepted_context(&self, sop_class: &str, ts: Option<&str>) -> Option<u8> {
        self.association.accepted_context(sop_class, ts)
    }

    fn read_response(&mut self) -> Result<u16, DispatchError> {
        let mut command = dimse::CommandFragments::default();
        loop {
            match self.association.receive()? {
                Pdu::PData { data } => {
                    for pdv in data {
                        if pdv.value_type == PDataValueType::Command {
                            let gathered = command
                                .push(&pdv.data, pdv.is_last)
                                .map_err(|e| self.transfer_error(e))?;
                            if let Some(rsp) = gathered {
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

    /// Sends one instance; returns the C-STORE status. It goes in its own transfer syntax,
    /// or, when the peer accepted only a native little endian one for its SOP class, in
    /// that: a native data set converts without touching its pixel data, a compressed one
    /// is decoded first.
    pub fn store(&mut self, instance: &DicomInstance) -> Result<u16, DispatchError> {
        let (sop_class, sop_instance, own) = meta_uids(instance.meta());
        if self.accepted_context(sop_class, Some(own)).is_none() && !is_native(own) {
            if let Some(native) = [EXPLICIT_LE, IMPLICIT_LE]
                .into_iter()
                .find(|native| self.accepted_context(sop_class, Some(native)).is_some())
            {
                let decoded = dicomnode_core::pixels::decompressed(instance).map_err(|source| {
                    DispatchError::Decode {
                        address: self.address.clone(),
                        sop_instance: sop_instance.to_string(),
                        source,
                    }
                })?;
                tracing::info!(
                    destination = %self.address,
                    sop_instance,
                    from = own,
                    to = native,
                    "the destination does not accept the instance's transfer syntax: sending it decoded"
                );
                return self.store_native(&decoded, native);
            }
        }
        let ts = if self.accepted_context(sop_class, Some(own)).is_some() {
            own
        } else {
            [EXPLICIT_LE, IMPLICIT_LE]
                .into_iter()
                .filter(|_| is_native(own))
                .find(|native| self.accepted_context(sop_class, Some(native)).is_some())
                .unwrap_or(own)
        };
        self.store_native(instance, ts)
    }

    /// Sends `instance` in `ts`, re-encoding its data set if `ts` is not its own.
    fn store_native(&mut self, instance: &DicomInstance, ts: &str) -> Result<u16, DispatchError> {
        let (sop_class, sop_instance, own) = meta_uids(instance.meta());
        let Some(syntax) = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(ts) else {
            return Err(self.transfer_error(format!("unknown transfer syntax {ts}")));
        };
        // Encoded straight into P-DATA PDUs sized for the peer: no intermediate copy.
        self.send_store(sop_class, sop_instance, ts, |writer| {
            if ts == own {
                instance.write_dataset(writer).map_err(|e| error_chain(&e))
            } else {
                instance
                    .write_dataset_with_ts(writer, syntax)
                    .map_err(|e| error_chain(&e))
            }
        })
    }

    /// Sends a data set already encoded in `transfer_syntax` (e.g. read from a file after its
    /// meta group), as it is; returns the C-STORE status.
    pub fn store_encoded(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        dataset: &[u8],
    ) -> Result<u16, DispatchError> {
        self.send_store(sop_class, sop_instance, transfer_syntax, |writer| {
            writer.write_all(dataset).map_err(|e| e.to_string())
        })
    }

    fn send_store(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        ts: &str,
        write: impl FnOnce(&mut dyn Write) -> Result<(), String>,
    ) -> Result<u16, DispatchError> {
        let pc =
            self.accepted_context(sop_class, Some(ts))
                .ok_or_else(|| DispatchError::NoContext {
                    address: self.address.clone(),
                    sop_class: sop_class.to_string(),
                    transfer_syntax: ts.to_string(),
                })?;
        let id = self.association.next_message_id();
        self.association
            .send_command(pc, dimse::store_request(id, sop_class, sop_instance))?;
        self.association.send_data(pc, |w| {
            write(w).map_err(|e| format!("sending {sop_instance}: {e}"))
        })?;
        self.read_response()
    }

    /// Releases the association gracefully.
    pub fn release(self) -> Result<(), DispatchError> {
        Ok(self.association.release()?)
    }
}

/// Sends a processor's result to one or more DICOM destinations (C-STORE), one association
/// per destination.
///
/// Each destination gets presentation contexts for the instances' SOP classes in their own
/// transfer syntaxes. Every response status is checked. A transient failure (refused
/// connection, time-out, abort) is retried with backoff, resending only what was not yet
/// acknowledged; a permanent one (rejected association, failure status) is not retried.
/// Any failure fails the export, so the node keeps the patient's data.
pub struct DicomOutput {
    destinations: Vec<Address>,
    calling_ae_title: String,
    instances: Vec<DicomInstance>,
    retry: RetryPolicy,
}

impl DicomOutput {
    /// Sends `instances` to each of `destinations`, calling as `DICOMNODE`, retrying a
    /// transient failure twice, 1 s then 2 s later.
    pub fn new(destinations: Vec<Address>, instances: Vec<DicomInstance>) -> Self {
        DicomOutput {
            destinations,
            calling_ae_title: "DICOMNODE".to_string(),
            instances,
            retry: RetryPolicy::new(3, Duration::from_secs(1)),
        }
    }

    /// Sets the calling AE title.
    pub fn calling_ae_title(mut self, ae_title: impl Into<String>) -> Self {
        self.calling_ae_title = ae_title.into();
        self
    }

    /// Sets the retry policy for transient failures.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn contexts(&self) -> Vec<(String, String)> {
        let mut contexts: Vec<(String, String)> = self
            .instances
            .iter()
            .map(|i| {
                let (sop_class, _, transfer_syntax) = meta_uids(i.meta());
                (sop_class.to_string(), transfer_syntax.to_string())
            })
            .collect();
        contexts.sort();
        contexts.dedup();
        contexts
    }

    /// Sends to one destination with retries; returns how many instances it stored.
    fn send_to(
        &self,
        destination: &Address,
        contexts: &[(String, String)],
    ) -> Result<usize, ExportError> {
        let mut acknowledged = vec![false; self.instances.len()];
        let attempts = self.retry.attempts();
        for attempt in 1..=attempts {
            match self.attempt(destination, contexts, &mut acknowledged) {
                Ok(()) => return Ok(acknowledged.len()),
                Err(error) => {
                    let kind = error.kind();
                    tracing::warn!(
                        destination = %destination,
                        attempt,
                        attempts,
                        %kind,
                        error = %error,
                        "sending failed"
                    );
                    if kind == SendFailure::Permanent || attempt == attempts {
                        return Err(ExportError::Send {
                            destination: destination.to_string(),
                            kind,
                            attempts: attempt,
                            source: Box::new(error),
                        });
                    }
                    std::thread::sleep(self.retry.wait_after(attempt));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn attempt(
        &self,
        destination: &Address,
        contexts: &[(String, String)],
        acknowledged: &mut [bool],
    ) -> Result<(), DispatchError> {
        let mut association =
            StoreAssociation::open(destination, &self.calling_ae_title, contexts)?;
        let mut refused = None;
        for (instance, done) in self.instances.iter().zip(acknowledged.iter_mut()) {
            if *done {
                continue;
            }
            let status = association.store(instance)?;
            if dimse::status::is_stored(status) {
                *done = true;
            } else if refused.is_none() {
                // Keep sending the rest: the peer may take them; the export fails anyway.
                refused = Some(DispatchError::Refused {
                    address: destination.to_string(),
                    sop_instance: trim_uid(instance.meta().media_storage_sop_instance_uid())
                        .to_string(),
                    status,
                });
            }
        }
        if let Err(error) = association.release() {
            // Every instance was answered already: a peer that drops the connection instead
            // of answering the release has still stored them.
            tracing::warn!(destination = %destination, %error, "release not answered");
        }
        refused.map_or(Ok(()), Err)
    }
}

impl Export for DicomOutput {
    fn export(self: Box<Self>) -> Result<String, ExportError> {
        let contexts = self.contexts();
        let mut errors = Vec::new();
        let mut sent = Vec::new();
        for destination in &self.destinations {
            match self.send_to(destination, &contexts) {
                Ok(count) => sent.push(format!("{count} instances to {destination}")),
                Err(error) => errors.push(error),
            }
        }
        match errors.len() {
            0 => Ok(format!("sent {}", sent.join(", "))),
            1 => Err(errors.remove(0)),
            _ => Err(ExportError::Several(errors)),
        }
    }
}
