//! Functional groups of enhanced multi-frame instances (PS3.3 C.7.6.16): per-frame values
//! with shared ones as the fallback.

use crate::DicomInstance;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// The first item of the macro sequence `macro_tag` in the shared functional groups.
pub(crate) fn shared_item(instance: &DicomInstance, macro_tag: Tag) -> Option<&InMemDicomObject> {
    let shared = instance
        .get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)?
        .items()?
        .first()?;
    shared.get(macro_tag)?.items()?.first()
}

/// The first item of the macro sequence `macro_tag` for `frame` (0-based): the frame's own
/// functional group, else the shared one.
pub(crate) fn frame_item(
    instance: &DicomInstance,
    frame: usize,
    macro_tag: Tag,
) -> Option<&InMemDicomObject> {
    let own = instance
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.get(frame))
        .and_then(|group| group.get(macro_tag))
        .and_then(|e| e.items())
        .and_then(|items| items.first());
    own.or_else(|| shared_item(instance, macro_tag))
}

/// Whether the instance carries functional groups (an enhanced multi-frame IOD).
pub(crate) fn is_enhanced(instance: &DicomInstance) -> bool {
    instance
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .is_some()
        || instance
            .get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
            .is_some()
}

/// The numbers of a multi-valued decimal attribute (`a\b\c`), if all parse and are finite
/// (Rust would read "NaN" and "inf", which no DICOM decimal string holds).
pub(crate) fn numbers(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let text = crate::input::value_of(obj, tag)?;
    text.split('\\')
        .map(|v| v.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect()
}
