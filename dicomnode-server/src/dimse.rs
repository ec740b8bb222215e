//! The DIMSE messages the node speaks: C-ECHO and C-STORE (both ways), and C-FIND, C-MOVE
//! and C-GET requests as an SCU, with their responses.
//!
//! dicom-ul is a PDU layer; command sets are built and read here. A command set is a group
//! 0000 data set in Implicit VR Little Endian, with its Command Group Length.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// CommandField of a C-STORE-RQ.
pub const C_STORE_RQ: u16 = 0x0001;
/// CommandField of a C-STORE-RSP.
pub const C_STORE_RSP: u16 = 0x8001;
/// CommandField of a C-ECHO-RQ.
pub const C_ECHO_RQ: u16 = 0x0030;
/// CommandField of a C-ECHO-RSP.
pub const C_ECHO_RSP: u16 = 0x8030;
/// CommandField of a C-FIND-RQ.
pub const C_FIND_RQ: u16 = 0x0020;
/// CommandField of a C-FIND-RSP.
pub const C_FIND_RSP: u16 = 0x8020;
/// CommandField of a C-MOVE-RQ.
pub const C_MOVE_RQ: u16 = 0x0021;
/// CommandField of a C-MOVE-RSP.
pub const C_MOVE_RSP: u16 = 0x8021;
/// CommandField of a C-GET-RQ.
pub const C_GET_RQ: u16 = 0x0010;
/// CommandField of a C-GET-RSP.
pub const C_GET_RSP: u16 = 0x8010;
/// CommandField of a C-CANCEL-RQ.
pub const C_CANCEL_RQ: u16 = 0x0FFF;
/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// The longest command set the node reads (commands are a few hundred bytes; DCMTK's own
/// limit is of the same order).
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

/// PS3.4 / PS3.7 status codes the node sends or reads.
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class (used for "accepted by no input").
    pub const DATA_SET_DOES_NOT_MATCH: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;

    /// Whether a C-STORE status means the instance was stored (success or warning).
    pub fn is_stored(status: u16) -> bool {
        matches!(status, 0x0000 | 0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF)
    }
}

/// Why a command set could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The bytes are not an Implicit VR LE data set.
    #[error("cannot parse the command set: {0}")]
    Parse(#[from] dicom_object::ReadError),
    /// The bytes declare lengths beyond their end, or nest sequences.
    #[error("the command set is malformed")]
    Structure(#[from] dicomnode_core::structure::StructureError),
    /// Longer than any command set can be.
    #[error("a command set of {0} bytes is longer than the {MAX_COMMAND_LEN} bytes allowed")]
    TooLong(usize),
    /// A required command element is missing or has the wrong type.
    #[error("the command set lacks a valid {0}")]
    Missing(&'static str),
}

/// A received command, reduced to the fields the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// CommandField (0000,0100).
    pub field: u16,
    /// MessageID (0000,0110).
    pub message_id: u16,
    /// AffectedSOPClassUID (0000,0002), empty if absent.
    pub sop_class_uid: String,
    /// AffectedSOPInstanceUID (0000,1000), empty if absent.
    pub sop_instance_uid: String,
    /// Whether a data set follows the command.
    pub has_data_set: bool,
    /// Status (0000,0900), for responses.
    pub status: Option<u16>,
    /// The sub-operation counts of a C-MOVE or C-GET response.
    pub sub_operations: SubOperations,
    /// MoveOriginatorApplicationEntityTitle (0000,1030) of a C-STORE that a C-MOVE caused.
    pub move_originator: Option<String>,
}

/// The sub-operation counts of a C-MOVE-RSP or C-GET-RSP (each absent when not sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    /// NumberOfRemainingSuboperations (0000,1020).
    pub remaining: Option<u16>,
    /// NumberOfCompletedSuboperations (0000,1021).
    pub completed: Option<u16>,
    /// NumberOfFailedSuboperations (0000,1022).
    pub failed: Option<u16>,
    /// NumberOfWarningSuboperations (0000,1023).
    pub warning: Option<u16>,
}

fn uid(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| dicomnode_core::uid::trim_uid(&s).to_string())
        .unwrap_or_default()
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag).and_then(|e| e.to_int::<u16>().ok())
}

impl Command {
    /// Reads a command set from its encoded bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        if bytes.len() > MAX_COMMAND_LEN {
            return Err(CommandError::TooLong(bytes.len()));
        }
        dicomnode_core::structure::check_bytes(bytes, IMPLICIT_VR_LITTLE_ENDIAN.uid())?;
        let obj =
            InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())?;
        Ok(Command {
            field: uint(&obj, tags::COMMAND_FIELD).ok_or(CommandError::Missing("CommandField"))?,
            message_id: uint(&obj, tags::MESSAGE_ID)
                .or_else(|| uint(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO))
                .ok_or(CommandError::Missing("MessageID"))?,
            sop_class_uid: uid(&obj, tags::AFFECTED_SOP_CLASS_UID),
            sop_instance_uid: uid(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
            has_data_set: uint(&obj, tags::COMMAND_DATA_SET_TYPE)
                .ok_or(CommandError::Missing("CommandDataSetType"))?
                != NO_DATA_SET,
            status: uint(&obj, tags::STATUS),
            move_originator: obj
                .get(tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            sub_operations: SubOperations {
                remaining: uint(&obj, tags::NUMBER_OF_REMAINING_SUBOPERATIONS),
                completed: uint(&obj, tags::NUMBER_OF_COMPLETED_SUBOPERATIONS),
                failed: uint(&obj, tags::NUMBER_OF_FAILED_SUBOPERATIONS),
                warning: uint(&obj, tags::NUMBER_OF_WARNING_SUBOPERATIONS),
            },
        })
    }
}

/// A command set gathered from its fragments (a command may span several PDVs and
/// PDUs), never more than [`MAX_COMMAND_LEN`] bytes.
#[derive(Debug, Default)]
pub(crate) struct CommandFragments {
    bytes: Vec<u8>,
}

impl CommandFragments {
    /// Adds a fragment; after the last one, returns the command.
    pub(crate) fn push(
        &mut self,
        data: &[u8],
        is_last: bool,
    ) -> Result<Option<Command>, CommandError> {
        if self.bytes.len() + data.len() > MAX_COMMAND_LEN {
            let length = self.bytes.len() + data.len();
            self.bytes = Vec::new();
            return Err(CommandError::TooLong(length));
        }
        self.bytes.extend_from_slice(data);
        if !is_last {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut self.bytes);
        Command::decode(&bytes).map(Some)
    }
}

fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut bytes = Vec::with_capacity(160);
    // Writing a small in-memory command to a Vec cannot fail for these element types.
    if let Err(error) = obj.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()) {
        tracing::error!(%error, "cannot encode a command set");
    }
    bytes
}

fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

fn ui(tag: Tag, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, value)
}

/// Encodes a response (C-ECHO-RSP or C-STORE-RSP) to `request`.
pub fn response(request: &Command, field: u16, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut elements = vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, &request.sop_class_uid),
        us(tags::COMMAND_FIELD, field),
        us(tags::MESSAGE_ID_BEING_RESPONDED_TO, request.message_id),
        us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        us(tags::STATUS, status),
    ];
    if !request.sop_instance_uid.is_empty() {
        elements.push(ui(
            tags::AFFECTED_SOP_INSTANCE_UID,
            &request.sop_instance_uid,
        ));
    }
    if let Some(comment) = comment {
        // ErrorComment is LO: at most 64 characters.
        let text: String = comment.chars().take(64).collect();
        elements.push(DataElement::new(tags::ERROR_COMMENT, VR::LO, text));
    }
    encode(elements)
}

/// Encodes a C-STORE-RQ.
pub fn store_request(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
    encode(vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class_uid),
        us(tags::COMMAND_FIELD, C_STORE_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::PRIORITY, 0),
        us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance_uid),
    ])
}

/// Encodes a C-FIND-RQ (an identifier follows) for the information model `sop_class_uid`.
pub fn find_request(message_id: u16, sop_class_uid: &str) -> Vec<u8> {
    encode(vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class_uid),
        us(tags::COMMAND_FIELD, C_FIND_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::PRIORITY, 0),
        us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
    ])
}

/// Encodes a C-MOVE-RQ (an identifier follows) asking for the instances to be sent to the
/// AE title `destination`.
pub fn move_request(message_id: u16, sop_class_uid: &str, destination: &str) -> Vec<u8> {
    encode(vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class_uid),
        us(tags::COMMAND_FIELD, C_MOVE_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::PRIORITY, 0),
        us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
        DataElement::new(tags::MOVE_DESTINATION, VR::AE, destination),
    ])
}

/// Encodes a C-GET-RQ (an identifier follows).
pub fn get_request(message_id: u16, sop_class_uid: &str) -> Vec<u8> {
    encode(vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class_uid),
        us(tags::COMMAND_FIELD, C_GET_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::PRIORITY, 0),
        us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
    ])
}

/// Encodes a C-CANCEL-RQ for the request `message_id`.
pub fn cancel_request(message_id: u16) -> Vec<u8> {
    encode(vec![
        us(tags::COMMAND_FIELD, C_CANCEL_RQ),
        us(tags::MESSAGE_ID_BEING_RESPONDED_TO, message_id),
        us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
    ])
}

/// Encodes a C-ECHO-RQ.
pub fn echo_request(message_id: u16) -> Vec<u8> {
    encode(vec![
        ui(
            tags::AFFECTED_SOP_CLASS_UID,
            dicom_dictionary_std::uids::VERIFICATION,
        ),
        us(tags::COMMAND_FIELD, C_ECHO_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_request_round_trips_and_response_answers_it() {
        let rq = Command::decode(&store_request(7, "1.2.3", "4.5.6")).unwrap();
        assert_eq!(rq.field, C_STORE_RQ);
        assert_eq!(rq.message_id, 7);
        assert_eq!(rq.sop_class_uid, "1.2.3");
        assert_eq!(rq.sop_instance_uid, "4.5.6");
        assert!(rq.has_data_set);
        let rsp = Command::decode(&response(&rq, C_STORE_RSP, 0xA900, Some("no input"))).unwrap();
        assert_eq!(rsp.field, C_STORE_RSP);
        assert_eq!(rsp.message_id, 7);
        assert_eq!(rsp.status, Some(0xA900));
        assert!(!rsp.has_data_set);
        assert!(Command::decode(b"garbage").is_err());
    }

    #[test]
    fn retrieve_requests_carry_their_fields_and_responses_their_counts() {
        let mv = Command::decode(&move_request(3, "1.2.840.10008.5.1.4.1.2.2.2", "NODE")).unwrap();
        assert_eq!(
            (mv.field, mv.message_id, mv.has_data_set),
            (C_MOVE_RQ, 3, true)
        );
        let get = Command::decode(&get_request(4, "1.2.840.10008.5.1.4.1.2.2.3")).unwrap();
        assert_eq!((get.field, get.message_id), (C_GET_RQ, 4));
        let find = Command::decode(&find_request(5, "1.2.840.10008.5.1.4.1.2.2.1")).unwrap();
        assert_eq!((find.field, find.has_data_set), (C_FIND_RQ, true));
        let cancel = Command::decode(&cancel_request(5)).unwrap();
        assert_eq!(
            (cancel.field, cancel.message_id, cancel.has_data_set),
            (C_CANCEL_RQ, 5, false)
        );
        let rsp = encode(vec![
            us(tags::COMMAND_FIELD, C_MOVE_RSP),
            us(tags::MESSAGE_ID_BEING_RESPONDED_TO, 3),
            us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
            us(tags::STATUS, 0xFF00),
            us(tags::NUMBER_OF_REMAINING_SUBOPERATIONS, 7),
            us(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, 2),
            us(tags::NUMBER_OF_FAILED_SUBOPERATIONS, 1),
        ]);
        let rsp = Command::decode(&rsp).unwrap();
        assert_eq!(rsp.status, Some(0xFF00));
        assert_eq!(
            rsp.sub_operations,
            SubOperations {
                remaining: Some(7),
                completed: Some(2),
                failed: Some(1),
                warning: None
            }
        );
    }
}
