//! One request and its responses on an association: the request's command and identifier
//! out; pending and final responses (with their identifiers) in; for a C-GET, the PACS's
//! C-STORE sub-operations answered on the way. Every read is bounded by the deadline.

use super::{establish, time_left, InstanceSink, QrOptions, RetrieveError};
use crate::dimse::{self, status, Command, CommandFragments, SubOperations};
use crate::scu::ScuAssociation;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use dicomnode_core::error::error_chain;
use dicomnode_core::Address;
use std::time::{Duration, Instant};

/// The largest C-FIND, C-MOVE or C-GET response identifier read.
const MAX_IDENTIFIER_BYTES: usize = 1 << 20;

/// What the next response was.
pub(super) enum Step {
    /// A pending response, with its identifier (C-FIND) and counts (C-MOVE, C-GET).
    Pending {
        identifier: Option<InMemDicomObject>,
        sub_operations: SubOperations,
    },
    /// The final response.
    Final {
        status: u16,
        comment: Option<String>,
        sub_operations: SubOperations,
    },
}

/// Takes the instances of a C-GET.
type StoreSink<'a> = &'a mut dyn InstanceSink;

/// A request in flight on its own association.
pub(super) struct Exchange<'a> {
    association: Option<ScuAssociation>,
    operation: &'static str,
    address: String,
    model: String,
    pc: u8,
    deadline: Instant,
    limit: Duration,
    max_instance_bytes: usize,
    fragments: CommandFragments,
    /// A command whose data set is still coming, with its presentation context.
    awaiting: Option<(Command, u8)>,
    /// A C-GET's C-STORE whose data set streams to the sink: its outcome so far.
    streaming: Option<Result<(), String>>,
    data: Vec<u8>,
    /// Fragments received and not yet handled (a PDU may hold several messages).
    queued: std::collections::VecDeque<PDataValue>,
    on_store: Option<StoreSink<'a>>,
    /// Ends the connection at the deadline whatever a read or write is waiting for;
    /// dropped (the exchange over), it stands down.
    _watchdog: Option<std::sync::mpsc::Sender<()>>,
}

impl<'a> Exchange<'a> {
    /// Opens an association for `model` (C-GET: with `store_classes`).
    pub(super) fn open(
        pacs: &Address,
        options: &QrOptions,
        operation: &'static str,
        model: &'static str,
        store_classes: &[String],
    ) -> Result<Self, RetrieveError> {
        let deadline = Instant::now() + options.timeout;
        let address = pacs.to_string();
        let mut association = establish(pacs, options, model, store_classes).map_err(|error| {
            // A PACS that accepts the connection but never answers the A-ASSOCIATE-RQ.
            if time_left(deadline).is_none() {
                RetrieveError::TimedOut {
                    address: address.clone(),
                    operation,
                    limit: options.timeout,
                }
            } else {
                RetrieveError::Link(error)
            }
        })?;
        let watchdog = association.deadline_watchdog(deadline);
        let Some(pc) = association.accepted_context(model, None) else {
            association.abort();
            return Err(RetrieveError::NotOffered {
                address,
                model: match operation {
                    "C-FIND" => "study root C-FIND",
                    "C-MOVE" => "study root C-MOVE",
                    _ => "study root C-GET",
                },
            });
        };
        Ok(Exchange {
            association: Some(association),
            operation,
            address,
            model: model.to_string(),
            pc,
            deadline,
            limit: options.timeout,
            // An identifier is a few hundred bytes; only a C-GET brings instances.
            max_instance_bytes: if store_classes.is_empty() {
                MAX_IDENTIFIER_BYTES
            } else {
                options.max_instance_bytes
            },
            fragments: CommandFragments::default(),
            awaiting: None,
            streaming: None,
            data: Vec::new(),
            queued: std::collections::VecDeque::new(),
            on_store: None,
            _watchdog: watchdog,
        })
    }

    /// Hands the C-STORE sub-operations of a C-GET to `sink`.
    pub(super) fn on_store(&mut self, sink: StoreSink<'a>) {
        self.on_store = Some(sink);
    }

    fn association(&mut self) -> Result<&mut ScuAssociation, RetrieveError> {
        let why = "the association is closed";
        match self.association.as_mut() {
            Some(association) => Ok(association),
            None => Err(RetrieveError::Protocol {
                address: self.address.clone(),
                operation: self.operation,
                why: why.into(),
            }),
        }
    }

    /// Sends the request command (built by `command` from a message ID and the model)
    /// and its identifier; returns the message ID.
    pub(super) fn request(
        &mut self,
        command: impl FnOnce(u16, &str) -> Vec<u8>,
        identifier: &InMemDicomObject,
    ) -> Result<u16, RetrieveError> {
        let pc = self.pc;
        let model = self.model.clone();
        let ts = self.transfer_syntax_of(pc);
        let Some(syntax) = TransferSyntaxRegistry.get(&ts) else {
            return Err(self.protocol(format!("unknown transfer syntax {ts}")));
        };
        let mut bytes = Vec::new();
        identifier
            .write_dataset_with_ts(&mut bytes, syntax)
            .map_err(|e| self.protocol(format!("cannot encode the identifier: {e}")))?;
        let association = self.association()?;
        let id = association.next_message_id();
        association.send_command(pc, command(id, &model))?;
        association.send_data(pc, |w| w.write_all(&bytes).map_err(|e| e.to_string()))?;
        Ok(id)
    }

    /// Asks the PACS to stop answering request `id` (its final response still comes).
    pub(super) fn cancel(&mut self, id: u16) -> Result<(), RetrieveError> {
        let pc = self.pc;
        self.association()?
            .send_command(pc, dimse::cancel_request(id))?;
        Ok(())
    }

    /// Reads until the next response to request `id`, answering C-STORE sub-operations.
    pub(super) fn next(&mut self, id: u16) -> Result<Step, RetrieveError> {
        loop {
            while let Some(pdv) = self.queued.pop_front() {
                if let Some(step) = self.on_pdv(pdv, id)? {
                    return Ok(step);
                }
            }
            let Some(left) = time_left(self.deadline) else {
                return Err(self.timed_out());
            };
            let association = self.association()?;
            association.set_read_timeout(left);
            let pdu = match association.receive() {
                Ok(pdu) => pdu,
                Err(_) if time_left(self.deadline).is_none() => return Err(self.timed_out()),
                Err(error) => {
                    self.drop_association();
                    return Err(error.into());
                }
            };
            let pdvs = match pdu {
                Pdu::PData { data } => data,
                Pdu::AbortRQ { source } => {
                    self.association = None;
                    return Err(self.protocol(format!("the PACS aborted: {source:?}")));
                }
                other => {
                    return Err(self.protocol(format!("unexpected PDU {}", pdu_name(&other))));
                }
            };
            self.queued.extend(pdvs);
        }
    }

    fn on_pdv(&mut self, pdv: PDataValue, id: u16) -> Result<Option<Step>, RetrieveError> {
        match pdv.value_type {
            PDataValueType::Command => {
                let command = self
                    .fragments
                    .push(&pdv.data, pdv.is_last)
                    .map_err(|e| self.protocol(error_chain(&e)))?;
                let Some(command) = command else {
                    return Ok(None);
                };
                if command.has_data_set {
                    let pc = pdv.presentation_context_id;
                    // A C-GET's instance streams to the sink: memory stays bounded.
                    self.streaming = (command.field == dimse::C_STORE_RQ)
                        .then(|| self.begin_sub_store(&command, pc));
                    self.awaiting = Some((command, pc));
                    self.data.clear();
                    return Ok(None);
                }
                self.on_message(command, pdv.presentation_context_id, None, id)
            }
            PDataValueType::Data => {
                if self.awaiting.is_none() {
                    return Err(self.protocol("a data set without a command".into()));
                }
                if let Some(outcome) = self.streaming.take() {
                    let outcome = match (outcome, self.on_store.as_mut()) {
                        (Ok(()), Some(sink)) => sink.data(pdv.data),
                        (Ok(()), None) => Err("a C-STORE outside a C-GET".to_string()),
                        (failed, _) => failed,
                    };
                    if !pdv.is_last {
                        self.streaming = Some(outcome);
                        return Ok(None);
                    }
                    let Some((command, pc)) = self.awaiting.take() else {
                        return Ok(None);
                    };
                    self.end_sub_store(&command, pc, outcome)?;
                    return Ok(None);
                }
                if self.data.len() + pdv.data.len() > self.max_instance_bytes {
                    return Err(
                        self.protocol(format!("a data set over {} bytes", self.max_instance_bytes))
                    );
                }
                self.data.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return Ok(None);
                }
                let Some((command, pc)) = self.awaiting.take() else {
                    return Ok(None);
                };
                let data = std::mem::take(&mut self.data);
                self.on_message(command, pc, Some(data), id)
            }
        }
    }

    fn on_message(
        &mut self,
        command: Command,
        pc: u8,
        data: Option<Vec<u8>>,
        id: u16,
    ) -> Result<Option<Step>, RetrieveError> {
        if command.field == dimse::C_STORE_RQ {
            // Without a data set (its data sets stream, see `on_pdv`).
            self.end_sub_store(&command, pc, Err("no data set".into()))?;
            return Ok(None);
        }
        if command.message_id != id || command.field & 0x8000 == 0 {
            return Err(self.protocol(format!(
                "an unexpected message (command {:#06x}, message {})",
                command.field, command.message_id
            )));
        }
        let Some(code) = command.status else {
            return Err(self.protocol("a response without a status".into()));
        };
        if matches!(code, 0xFF00 | 0xFF01) {
            let identifier = match data {
                Some(bytes) => Some(self.decode(&bytes, pc)?),
                None => None,
            };
            return Ok(Some(Step::Pending {
                identifier,
                sub_operations: command.sub_operations,
            }));
        }
        let comment = match data {
            Some(bytes) => self.decode(&bytes, pc).ok().and_then(|d| {
                dicomnode_core::input::value_of(&d, dicom_dictionary_std::tags::ERROR_COMMENT)
            }),
            None => None,
        };
        Ok(Some(Step::Final {
            status: code,
            comment,
            sub_operations: command.sub_operations,
        }))
    }

    /// A C-STORE of a C-GET begins: the sink is told what comes.
    fn begin_sub_store(&mut self, command: &Command, pc: u8) -> Result<(), String> {
        let ts = self.transfer_syntax_of(pc);
        match self.on_store.as_mut() {
            Some(sink) => sink.begin(&command.sop_class_uid, &command.sop_instance_uid, &ts),
            None => Err("a C-STORE outside a C-GET".to_string()),
        }
    }

    /// Answers one C-STORE of a C-GET once its data set is complete (and the sink has
    /// ended it), with success or a failure status.
    fn end_sub_store(
        &mut self,
        command: &Command,
        pc: u8,
        outcome: Result<(), String>,
    ) -> Result<(), RetrieveError> {
        let outcome = match (outcome, self.on_store.as_mut()) {
            (Ok(()), Some(sink)) => sink.end(),
            (Ok(()), None) => Err("a C-STORE outside a C-GET".to_string()),
            (Err(why), sink) => {
                if let Some(sink) = sink {
                    sink.abandon();
                }
                Err(why)
            }
        };
        let (code, comment) = match &outcome {
            Ok(()) => (status::SUCCESS, None),
            Err(why) => {
                tracing::warn!(sop_instance = %command.sop_instance_uid, "instance of the C-GET not kept: {why}");
                (status::OUT_OF_RESOURCES, Some(why.as_str()))
            }
        };
        let answer = dimse::response(command, dimse::C_STORE_RSP, code, comment);
        self.association()?.send_command(pc, answer)?;
        Ok(())
    }

    /// The transfer syntax accepted for presentation context `pc` (empty if none).
    fn transfer_syntax_of(&self, pc: u8) -> String {
        self.association
            .as_ref()
            .and_then(|a| a.context(pc))
            .map(|(_, ts)| ts)
            .unwrap_or_default()
    }

    fn decode(&self, bytes: &[u8], pc: u8) -> Result<InMemDicomObject, RetrieveError> {
        let ts = self.transfer_syntax_of(pc);
        let Some(syntax) = TransferSyntaxRegistry.get(&ts) else {
            return Err(self.protocol(format!("unknown transfer syntax {ts}")));
        };
        dicomnode_core::structure::check_bytes(bytes, &ts)
            .map_err(|e| self.protocol(format!("a malformed identifier: {e}")))?;
        InMemDicomObject::read_dataset_with_ts(bytes, syntax)
            .map_err(|e| self.protocol(format!("an unreadable identifier: {}", error_chain(&e))))
    }

    /// Releases the association after the final response.
    pub(super) fn finish(&mut self) {
        if let Some(association) = self.association.take() {
            if let Err(error) = association.release() {
                tracing::debug!(%error, "release after the final response");
            }
        }
    }

    /// A failure status, as an error.
    pub(super) fn failed(&self, status: u16, comment: Option<String>) -> RetrieveError {
        RetrieveError::Failed {
            address: self.address.clone(),
            operation: self.operation,
            status,
            comment,
        }
    }

    fn timed_out(&mut self) -> RetrieveError {
        self.drop_association();
        RetrieveError::TimedOut {
            address: self.address.clone(),
            operation: self.operation,
            limit: self.limit,
        }
    }

    fn protocol(&self, why: String) -> RetrieveError {
        RetrieveError::Protocol {
            address: self.address.clone(),
            operation: self.operation,
            why,
        }
    }

    fn drop_association(&mut self) {
        if let Some(association) = self.association.take() {
            association.abort();
        }
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        // Ended early (an error, a time-out): the PACS is told with an A-ABORT.
        self.drop_association();
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        _ => "PDU",
    }
}
