//! The DIMSE messages of an association: commands and data sets gathered from their
//! P-DATA fragments and checked against the protocol, C-ECHO answered, each C-STORE
//! taken to storage.

use crate::dimse::{self, status, Command, CommandFragments};
use crate::storage::{Incoming, Offer, ReceiveError, Storage};
use crate::trigger::PatientsTouched;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{AbortRQServiceProviderReason, PDataValue, PDataValueType};
use dicomnode_core::error::error_chain;
use dicomnode_core::input::{tag_name, value_of};
use dicomnode_core::sanitize::escape_control;
use std::collections::HashMap;

/// A message being gathered from P-DATA fragments.
#[derive(Default)]
pub(super) struct Gathering {
    command: CommandFragments,
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
pub(super) struct Reply {
    pub(super) bytes: Vec<u8>,
    pub(super) pc_id: u8,
    /// For a C-STORE: whether the instance was stored.
    pub(super) stored: Option<bool>,
}

/// Why the conversation must end with an A-ABORT.
pub(super) struct Violation {
    pub(super) reason: AbortRQServiceProviderReason,
    pub(super) why: String,
}

fn violation(reason: AbortRQServiceProviderReason, why: impl Into<String>) -> Violation {
    Violation {
        reason,
        why: why.into(),
    }
}

impl Gathering {
    /// Whether a message is half received (a command waiting for its data set).
    pub(super) fn mid_message(&self) -> bool {
        self.pending.is_some()
    }
}

/// Where the messages of one association are taken: the storage, and the tag that keys
/// patients.
pub(super) struct Messages<'a> {
    pub(super) storage: &'a Storage,
    pub(super) patient_key: dicom_core::Tag,
    /// The node's AE title: a C-STORE whose Move Originator it is was asked for as a prior.
    pub(super) ae_title: &'a str,
}

impl Messages<'_> {
    /// Handles one fragment; returns a response to send, or why the association must be
    /// aborted.
    pub(super) fn on_fragment(
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
                let command = match gathering.command.push(&pdv.data, pdv.is_last) {
                    Ok(Some(command)) => command,
                    Ok(None) => return Ok(None),
                    Err(error) => {
                        // No message ID to answer: the peer would wait for ever.
                        return Err(violation(
                            AbortRQServiceProviderReason::InvalidPduParameter,
                            format!("unreadable command: {}", error_chain(&error)),
                        ));
                    }
                };
                Ok(self.on_command(command, pc_id, abstract_syntax, gathering))
            }
            PDataValueType::Data => {
                crate::metrics::global().received_bytes(pdv.data.len());
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
                    incoming.push(pdv.data, pdv.is_last);
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
                if field == dimse::C_STORE_RSP {
                    crate::metrics::global().store_answered(code);
                }
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
            if field == dimse::C_STORE_RSP {
                crate::metrics::global().store_answered(code);
            }
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
        let receiving = std::time::Instant::now();
        let received = self.storage.receive(
            incoming,
            &command.sop_class_uid,
            &command.sop_instance_uid,
            transfer_syntax,
        );
        let (instance, staged) = match received {
            Ok(received) => received,
            Err(error @ ReceiveError::Resources(_)) => {
                return refuse(status::OUT_OF_RESOURCES, error.to_string())
            }
            Err(error @ ReceiveError::Unreadable(_)) => {
                return refuse(status::CANNOT_UNDERSTAND, error.to_string())
            }
        };
        // A C-MOVE sub-operation of this node's own (its move originator is the node)
        // brings a prior: it goes to the prior input that asked for it, never to a
        // patient of its own. Other instances of the same study are ordinary.
        if command.move_originator.as_deref() == Some(self.ae_title) {
            let stored = self.storage.prior_route(&instance.header).and_then(
                |(group, input, generation)| {
                    self.storage
                        .store_fetched(&group, input, generation, instance, staged, receiving)
                },
            );
            return match stored {
                Ok(()) => {
                    tracing::debug!(sop_instance = %uid, "prior instance stored");
                    (status::SUCCESS, None)
                }
                Err(why) => refuse(status::DATA_SET_DOES_NOT_MATCH, why),
            };
        }
        let patient_key = self.patient_key;
        let Some(patient) = value_of(&instance.header, patient_key) else {
            return refuse(
                status::DATA_SET_DOES_NOT_MATCH,
                format!(
                    "no patient key: {} is missing or empty",
                    tag_name(patient_key)
                ),
            );
        };
        let key = match self.storage.group_key(&patient, &instance.header) {
            Ok(key) => key,
            Err(why) => {
                return refuse(status::DATA_SET_DOES_NOT_MATCH, format!("no group: {why}"));
            }
        };
        touched.touch(self.storage, &key);
        let patient =
            escape_control(&dicomnode_core::completion::display_group_key(&key)).into_owned();
        match self.storage.offer(&key, instance, staged) {
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
