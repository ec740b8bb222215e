//! Where accepted instances wait, per patient and per input, until the patient has enough.
//!
//! The storage owns every patient's state: the instances of each input and how many live
//! associations are still adding to the patient. Taking a batch out is atomic, so a patient
//! is handed to the runner exactly once.

use dicom_object::InMemDicomObject;
use dicomnode_core::{Input, Rejection, Sender};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// An instance as received: its data set bytes exactly as sent, in their transfer syntax,
/// plus the header (every element before Pixel Data) for the inputs' rules.
#[derive(Debug)]
pub struct ReceivedInstance {
    /// SOP Class UID from the C-STORE request.
    pub sop_class_uid: String,
    /// SOP Instance UID from the C-STORE request.
    pub sop_instance_uid: String,
    /// The transfer syntax negotiated for the presentation context it came on.
    pub transfer_syntax: String,
    /// The data set bytes, as received.
    pub dataset: Vec<u8>,
    /// The parsed header, without Pixel Data.
    pub header: InMemDicomObject,
}

/// One patient's instances, taken out of storage to be processed.
#[derive(Debug)]
pub struct PatientBatch {
    /// The value of the patient key tag.
    pub patient_key: String,
    /// Each input's name and instances, in declaration order.
    pub inputs: Vec<(String, Vec<Arc<ReceivedInstance>>)>,
    /// The peer whose association completed the batch.
    pub sender: Sender,
    /// When the batch was taken out (the trigger's moment).
    pub triggered_at: SystemTime,
}

impl PatientBatch {
    /// Number of distinct instances over all inputs.
    pub fn instance_count(&self) -> usize {
        let mut uids: Vec<&str> = self
            .inputs
            .iter()
            .flat_map(|(_, v)| v.iter().map(|i| i.sop_instance_uid.as_str()))
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids.len()
    }
}

#[derive(Default)]
struct PatientEntry {
    /// Instances per input, in declaration order.
    inputs: Vec<Vec<Arc<ReceivedInstance>>>,
    /// Associations that added to this patient and have not ended.
    live_adders: usize,
}

/// The outcome of offering an instance to the inputs.
#[derive(Debug)]
pub enum Offer {
    /// Stored in these inputs.
    Stored(Vec<String>),
    /// Entered no input: each input's reason.
    Rejected(Vec<(String, Rejection)>),
}

/// In-memory storage of the patients being gathered.
pub struct MemoryStorage {
    inputs: Vec<Input>,
    patients: Mutex<HashMap<String, PatientEntry>>,
}

impl MemoryStorage {
    /// Storage for a pipeline with these inputs.
    pub fn new(inputs: Vec<Input>) -> Self {
        MemoryStorage {
            inputs,
            patients: Mutex::new(HashMap::new()),
        }
    }

    fn patients(&self) -> MutexGuard<'_, HashMap<String, PatientEntry>> {
        // A panic while holding the lock leaves plain data behind; keep serving with it.
        self.patients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks that an association starts adding to a patient; the patient is not taken out
    /// while any association that started adding to it is live.
    pub fn begin_adding(&self, patient_key: &str) {
        self.patients()
            .entry(patient_key.to_string())
            .or_insert_with(|| PatientEntry {
                inputs: vec![Vec::new(); self.inputs.len()],
                live_adders: 0,
            })
            .live_adders += 1;
    }

    /// Offers an instance to every input; stores it in each that admits it. An instance
    /// with a SOP Instance UID already held for the patient replaces the old one.
    pub fn offer(&self, patient_key: &str, instance: ReceivedInstance) -> Offer {
        let mut admitted = Vec::new();
        let mut rejected = Vec::new();
        for (index, input) in self.inputs.iter().enumerate() {
            match input.admit(&instance.header) {
                Ok(()) => admitted.push(index),
                Err(reason) => rejected.push((input.name().to_string(), reason)),
            }
        }
        if admitted.is_empty() {
            return Offer::Rejected(rejected);
        }
        let instance = Arc::new(instance);
        let mut patients = self.patients();
        let entry = patients
            .entry(patient_key.to_string())
            .or_insert_with(|| PatientEntry {
                inputs: vec![Vec::new(); self.inputs.len()],
                live_adders: 0,
            });
        for &index in &admitted {
            let held = &mut entry.inputs[index];
            held.retain(|i| i.sop_instance_uid != instance.sop_instance_uid);
            held.push(Arc::clone(&instance));
        }
        Offer::Stored(
            admitted
                .into_iter()
                .map(|i| self.inputs[i].name().to_string())
                .collect(),
        )
    }

    /// Marks that an association ended; if no other live association adds to the patient
    /// and every input has enough, takes the patient's batch out (exactly once).
    pub fn finish_adding(&self, patient_key: &str, sender: &Sender) -> Option<PatientBatch> {
        let mut patients = self.patients();
        let entry = patients.get_mut(patient_key)?;
        entry.live_adders = entry.live_adders.saturating_sub(1);
        if entry.live_adders > 0 {
            return None;
        }
        if entry.inputs.iter().all(Vec::is_empty) {
            // Every instance of this patient was rejected: nothing to keep.
            patients.remove(patient_key);
            return None;
        }
        if !self.has_enough(entry) {
            return None;
        }
        let entry = patients.remove(patient_key)?;
        Some(PatientBatch {
            patient_key: patient_key.to_string(),
            inputs: self
                .inputs
                .iter()
                .map(|i| i.name().to_string())
                .zip(entry.inputs)
                .collect(),
            sender: sender.clone(),
            triggered_at: SystemTime::now(),
        })
    }

    fn has_enough(&self, entry: &PatientEntry) -> bool {
        self.inputs.iter().zip(&entry.inputs).all(|(input, held)| {
            let headers: Vec<&InMemDicomObject> = held.iter().map(|i| &i.header).collect();
            input.has_enough(&headers)
        })
    }

    /// Puts a batch whose processing failed back, so its data is not lost. It is taken out
    /// again when a later association for the patient ends with enough.
    pub fn keep_failed(&self, batch: PatientBatch) {
        let mut patients = self.patients();
        let entry = patients
            .entry(batch.patient_key)
            .or_insert_with(|| PatientEntry {
                inputs: vec![Vec::new(); self.inputs.len()],
                live_adders: 0,
            });
        for (held, (_, returned)) in entry.inputs.iter_mut().zip(batch.inputs) {
            for instance in returned {
                if !held
                    .iter()
                    .any(|i| i.sop_instance_uid == instance.sop_instance_uid)
                {
                    held.push(instance);
                }
            }
        }
    }

    /// Number of instances held for a patient (0 if unknown).
    pub fn held_for(&self, patient_key: &str) -> usize {
        self.patients()
            .get(patient_key)
            .map_or(0, |e| e.inputs.iter().map(Vec::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    use dicomnode_core::{Enough, Matcher};

    fn instance(uid: &str, modality: &str) -> ReceivedInstance {
        ReceivedInstance {
            sop_class_uid: "1.2".into(),
            sop_instance_uid: uid.into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            dataset: Vec::new(),
            header: InMemDicomObject::from_element_iter([DataElement::new(
                tags::MODALITY,
                VR::CS,
                modality,
            )]),
        }
    }

    fn sender() -> Sender {
        Sender {
            ae_title: "SCU".into(),
            address: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn batch_waits_for_every_live_association_and_is_taken_once() {
        let storage = MemoryStorage::new(vec![Input::new("ct")
            .matching(tags::MODALITY, Matcher::exact("CT"))
            .enough_when(Enough::at_least(2))]);
        storage.begin_adding("p");
        storage.begin_adding("p");
        assert!(matches!(
            storage.offer("p", instance("1", "CT")),
            Offer::Stored(_)
        ));
        assert!(matches!(
            storage.offer("p", instance("1", "CT")),
            Offer::Stored(_)
        ));
        assert!(matches!(
            storage.offer("p", instance("2", "MR")),
            Offer::Rejected(_)
        ));
        assert_eq!(
            storage.held_for("p"),
            1,
            "the duplicate SOP instance is stored once"
        );
        assert!(matches!(
            storage.offer("p", instance("3", "CT")),
            Offer::Stored(_)
        ));
        assert!(
            storage.finish_adding("p", &sender()).is_none(),
            "one association still live"
        );
        let batch = storage.finish_adding("p", &sender()).expect("complete");
        assert_eq!(batch.instance_count(), 2);
        assert!(storage.finish_adding("p", &sender()).is_none());
        storage.keep_failed(batch);
        assert_eq!(storage.held_for("p"), 2);
    }
}
