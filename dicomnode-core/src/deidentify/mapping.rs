//! The mapping between identities and their replacements: derived with a keyed hash
//! (HMAC-SHA-256), so that the same key gives the same pseudonym, UIDs and date shift in
//! every process and run, and kept in a file the user names so that results coming back
//! can be re-identified.
//!
//! The file holds JSON lines: first `{"dicomnode_mapping":1,"key":"<hex>"}`, then one
//! entry a line (`{"uid":[original,replacement]}`, `{"patient":{..}}`). Entries are only
//! appended, under an exclusive lock, so that several processes (one child per patient)
//! can share one file. It holds identities: keep it where the identities may be.

use super::DeidentifyError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What de-identification replaced for one patient: the original values of the patient
/// and study identity attributes, by tag (`"0010,0010"`), and the date shift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PatientRecord {
    /// The pseudonym (the new PatientID).
    pub pseudonym: String,
    /// Original values of the patient's identity attributes, by tag.
    pub patient: BTreeMap<String, String>,
    /// Original values of each study's identity attributes, by new StudyInstanceUID.
    pub studies: BTreeMap<String, BTreeMap<String, String>>,
    /// Days added to dates under the modified-dates option (negative: earlier).
    pub date_shift_days: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Uid([String; 2]),
    Patient(PatientRecord),
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    dicomnode_mapping: u32,
    key: String,
}

/// Identities and their replacements, with the key that derives them. Its `Debug` shows
/// neither.
pub struct Mapping {
    key: Vec<u8>,
    uids: HashMap<String, String>,
    originals: HashMap<String, String>,
    patients: HashMap<String, PatientRecord>,
    path: Option<PathBuf>,
    unsaved: Vec<Entry>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("key", &"(secret)")
            .field("uids", &self.uids.len())
            .field("patients", &self.patients.len())
            .field("path", &self.path)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a file is empty or ends with a newline.
fn ends_with_newline(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

impl Mapping {
    /// A mapping with this secret key (at least 16 bytes), kept in memory only.
    pub fn with_key(key: &[u8]) -> Result<Mapping, DeidentifyError> {
        if key.len() < 16 {
            return Err(DeidentifyError::Key(
                "the key must be at least 16 bytes".into(),
            ));
        }
        Ok(Mapping {
            key: key.to_vec(),
            uids: HashMap::new(),
            originals: HashMap::new(),
            patients: HashMap::new(),
            path: None,
            unsaved: Vec::new(),
        })
    }

    /// A mapping with a new random key, kept in memory only.
    pub fn random() -> Mapping {
        let key: Vec<u8> = uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .chain(uuid::Uuid::new_v4().as_bytes())
            .copied()
            .collect();
        Mapping {
            key,
            uids: HashMap::new(),
            originals: HashMap::new(),
            patients: HashMap::new(),
            path: None,
            unsaved: Vec::new(),
        }
    }

    /// The mapping kept in `path`: read if it exists, else created with a new random key.
    /// [`Mapping::save`] appends what was added since.
    pub fn open(path: impl AsRef<Path>) -> Result<Mapping, DeidentifyError> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let io = |source| DeidentifyError::MappingFile {
            path: path.to_path_buf(),
            source,
        };
        // It holds the key and the identities: readable by its owner only.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut mapping = Mapping::random();
        let mut lines = bytes.split(|&b| b == b'\n');
        match lines.next().filter(|first| !first.is_empty()) {
            None => {
                let header = Header {
                    dicomnode_mapping: 1,
                    key: hex(&mapping.key),
                };
                let text = serde_json::to_string(&header).map_err(|e| io(e.into()))?;
                file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
                writeln!(file, "{text}")
                    .and_then(|()| file.sync_data())
                    .map_err(io)?;
            }
            Some(first) => {
                let header: Header = serde_json::from_slice(first).map_err(|source| {
                    DeidentifyError::NotAMapping {
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
                mapping.key = unhex(&header.key)
                    .filter(|k| k.len() >= 16)
                    .ok_or_else(|| {
                        DeidentifyError::Key(format!(
                            "{}: the key is not at least 16 bytes of hexadecimal",
                            path.display()
                        ))
                    })?;
                for (number, line) in lines.enumerate() {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Entry>(line) {
                        Ok(entry) => mapping.learn(entry),
                        // A line cut by a crash mid-write: the lines around it stand.
                        Err(error) => tracing::warn!(
                            file = %path.display(),
                            line = number + 2,
                            %error,
                            "skipping an unreadable mapping line"
                        ),
                    }
                }
            }
        }
        mapping.path = Some(path.to_path_buf());
        Ok(mapping)
    }

    fn learn(&mut self, entry: Entry) {
        match entry {
            Entry::Uid([original, replacement]) => {
                self.originals.insert(replacement.clone(), original.clone());
                self.uids.insert(original, replacement);
            }
            Entry::Patient(record) => {
                let merged = self.patients.entry(record.pseudonym.clone()).or_default();
                merged.pseudonym = record.pseudonym;
                merged.patient.extend(record.patient);
                merged.studies.extend(record.studies);
                merged.date_shift_days = record.date_shift_days;
            }
        }
    }

    /// Appends the entries added since it was opened (or last saved) to its file, under an
    /// exclusive lock, and syncs it. A mapping without a file keeps them in memory.
    pub fn save(&mut self) -> Result<(), DeidentifyError> {
        let Some(path) = self.path.clone() else {
            self.unsaved.clear();
            return Ok(());
        };
        if self.unsaved.is_empty() {
            return Ok(());
        }
        let io = |source| DeidentifyError::MappingFile {
            path: path.clone(),
            source,
        };
        let mut text = String::new();
        for entry in &self.unsaved {
            text.push_str(&serde_json::to_string(entry).map_err(|e| io(e.into()))?);
            text.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        // After a crash mid-line, start on a line of our own.
        if !ends_with_newline(&mut file).map_err(io)? {
            text.insert(0, '\n');
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        self.unsaved.clear();
        Ok(())
    }

    /// HMAC-SHA-256 of `message` under the key (RFC 2104).
    pub(crate) fn keyed_hash(&self, message: &[u8]) -> [u8; 32] {
        let mut key = [0u8; 64];
        if self.key.len() > 64 {
            key[..32].copy_from_slice(&Sha256::digest(&self.key));
        } else {
            key[..self.key.len()].copy_from_slice(&self.key);
        }
        let inner = Sha256::new()
            .chain_update(key.map(|b| b ^ 0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(key.map(|b| b ^ 0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The replacement of a UID: `2.25.<128 bits of the keyed hash>`, the same for the same
    /// UID and key everywhere.
    pub fn uid(&mut self, original: &str) -> String {
        let original = original.trim_end_matches(['\0', ' ']);
        if let Some(known) = self.uids.get(original) {
            return known.clone();
        }
        let hash = self.keyed_hash(format!("uid:{original}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash[..16]);
        let replacement = format!("2.25.{}", u128::from_be_bytes(bytes));
        self.originals
            .insert(replacement.clone(), original.to_string());
        self.uids.insert(original.to_string(), replacement.clone());
        self.unsaved
            .push(Entry::Uid([original.to_string(), replacement.clone()]));
        replacement
    }

    /// The original of a replacement UID, if this mapping made it.
    pub fn original_uid(&self, replacement: &str) -> Option<&str> {
        self.originals
            .get(replacement.trim_end_matches(['\0', ' ']))
            .map(String::as_str)
    }

    /// The pseudonym derived for a PatientID: `ANON-` and 12 hexadecimal digits of its
    /// keyed hash.
    pub fn derived_pseudonym(&self, patient_id: &str) -> String {
        let hash = self.keyed_hash(format!("patient:{patient_id}").as_bytes());
        format!("ANON-{}", hex(&hash[..6]).to_uppercase())
    }

    /// The date shift of a patient under the modified-dates option: between 1 and 3650
    /// days earlier, derived from the key and the PatientID.
    pub fn date_shift_days(&self, patient_id: &str) -> i64 {
        let hash = self.keyed_hash(format!("dates:{patient_id}").as_bytes());
        -(1 + i64::from(u16::from_be_bytes([hash[0], hash[1]]) % 3650))
    }

    /// What is known of the patient with this pseudonym.
    pub fn patient(&self, pseudonym: &str) -> Option<&PatientRecord> {
        self.patients.get(pseudonym)
    }

    /// Records what was replaced for a patient (merged with what is known).
    pub(crate) fn record_patient(&mut self, record: PatientRecord) {
        let known = self.patients.get(&record.pseudonym);
        let news = match known {
            None => true,
            Some(k) => {
                record
                    .patient
                    .iter()
                    .any(|(t, v)| k.patient.get(t) != Some(v))
                    || record.studies.keys().any(|s| !k.studies.contains_key(s))
            }
        };
        if news {
            self.unsaved.push(Entry::Patient(record.clone()));
            self.learn(Entry::Patient(record));
        }
    }
}
