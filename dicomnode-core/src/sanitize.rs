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

/// Text from a peer (an AE title, a patient ID, any tag value), made safe to write into a
/// log line: control characters (CR, LF, ESC, NUL, C1) and the Unicode controls that
/// reorder text are written as escapes, so that a peer cannot forge log lines or move the
/// terminal's cursor.
///
/// ```
/// use dicomnode_core::sanitize::escape_control;
/// assert_eq!(escape_control("PAT\r\nERROR fake\u{1b}[2J\0"), "PAT\\r\\nERROR fake\\u{1b}[2J\\u{0}");
/// assert_eq!(escape_control("Müller^Jo"), "Müller^Jo");
/// ```
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
