//! Safe, distinct, deterministic file names for values that come from the network.

use dicomnode_core::sanitize::path_component;
use sha2::{Digest, Sha256};

/// A directory name for a patient key: a readable, sanitized prefix and a hash of the raw
/// key, so that `../../etc`, `/`, `..`, an empty key, control characters, 300-character and
/// non-ASCII keys all map to distinct names that stay inside their parent directory
/// (`../../etc` becomes `.._.._etc-<hash>`).
pub(crate) fn patient_dir_name(key: &str) -> String {
    format!("{}-{}", readable_prefix(key, 40), short_hash(key))
}

/// The directory of an input inside a patient's directory (prefixed, so that no input
/// name can collide with the files beside it, such as `key`).
pub(crate) fn input_dir_name(input: &str) -> String {
    format!("in-{}", safe_name(input))
}

/// A file or directory name for a UID or an input name: the value itself when it is a
/// plain UID-like token, else a sanitized prefix and a hash.
pub(crate) fn safe_name(value: &str) -> String {
    let plain = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !value.chars().all(|c| c == '.')
        && !value.starts_with('.');
    if plain {
        value.to_string()
    } else {
        format!("{}-{}", readable_prefix(value, 40), short_hash(value))
    }
}

fn readable_prefix(value: &str, max: usize) -> String {
    path_component(&value.chars().take(max).collect::<String>())
}

fn short_hash(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest[..10].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::{Component, Path};

    #[test]
    fn hostile_keys_are_safe_and_distinct() {
        let long = "é".repeat(300);
        let keys = [
            "../../etc",
            "/",
            "..",
            ".",
            "",
            "a\0b",
            "a\nb",
            "\u{7}",
            &long,
            "PAT 1",
            "PAT_1",
            "患者",
            "C:\\x",
            "a/b",
        ];
        let mut seen = HashSet::new();
        for key in keys {
            let name = patient_dir_name(key);
            assert!(seen.insert(name.clone()), "{key:?} collides");
            let components: Vec<_> = Path::new(&name).components().collect();
            assert_eq!(components.len(), 1, "{name}");
            assert!(matches!(components[0], Component::Normal(_)), "{name}");
            assert!(name.len() <= 80 && name.is_ascii(), "{name}");
        }
        assert!(patient_dir_name("../../etc").starts_with(".._.._etc-"));
        assert_eq!(patient_dir_name("x"), patient_dir_name("x"));
        assert_eq!(safe_name("1.2.840.10008"), "1.2.840.10008");
        assert_ne!(safe_name(".."), "..");
        assert_ne!(safe_name("a/b"), safe_name("a_b"));
    }
}
