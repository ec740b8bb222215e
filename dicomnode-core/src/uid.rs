//! UIDs as they arrive: padded to an even length.

use dicom_object::meta::FileMetaTable;

/// A UID without its padding: DICOM pads a UID of odd length with a NUL, and some senders
/// pad with a space (which a UID never contains).
///
/// ```
/// use dicomnode_core::uid::trim_uid;
/// assert_eq!(trim_uid("1.2.840.10008.1.2\0"), "1.2.840.10008.1.2");
/// assert_eq!(trim_uid("1.2.3 "), "1.2.3");
/// ```
pub fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

/// The SOP Class UID, SOP Instance UID and transfer syntax of a file meta group, without
/// padding.
pub fn meta_uids(meta: &FileMetaTable) -> (&str, &str, &str) {
    (
        trim_uid(meta.media_storage_sop_class_uid()),
        trim_uid(meta.media_storage_sop_instance_uid()),
        trim_uid(meta.transfer_syntax()),
    )
}
