//! Safe path components from values that come from the network.

/// Turns a value (a UID, a patient key) into one safe path component.
///
/// Keeps ASCII letters, digits, `.`, `-` and `_`; replaces anything else with `_`; never
/// returns an empty string, `.` or `..`; caps the length at 128 bytes.
///
/// ```
/// use dicomnode_core::sanitize::path_component;
/// assert_eq!(path_component("1.2.840.10008"), "1.2.840.10008");
/// assert_eq!(path_component("../../etc"), ".._.._etc");
/// assert_eq!(path_component(".."), "_..");
/// assert_eq!(path_component(""), "_");
/// ```
pub fn path_component(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        out.insert(0, '_');
    }
    out
}
