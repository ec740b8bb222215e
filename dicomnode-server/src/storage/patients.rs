//! The patients map: instances offered to the inputs, associations adding to a patient,
//! and taking a patient out (once it has enough, or once it expired).

use super::disk::{self, DiskLayout};
use super::{InstanceData, PatientBatch, ReceivedInstance, Storage};
use crate::config::ExpiryAction;
use dicom_object::InMemDicomObject;
use dicomnode_core::{Origin, Rejection};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One patient being gathered.
pub(super) struct PatientEntry {
    /// Instances per input, in declaration order.
    pub(super) inputs: Vec<Vec<Arc<ReceivedInstance>>>,
    /// Associations (or requeues) that added to this patient and have not ended.
    pub(super) live_adders: usize,
    /// When an instance last arrived (for expiry and the quiet period).
    pub(super) last_added: SystemTime,
    /// Where the patient's instances last came from (`None`: restored at start-up).
    pub(super) last_origin: Option<Origin>,
}

impl PatientEntry {
    pub(super) fn new(inputs: usize) -> Self {
        PatientEntry {
            inputs: vec![Vec::new(); inputs],
            live_adders: 0,
            last_added: SystemTime::now(),
            last_origin: None,
        }
    }

    /// Where a batch taken out now comes from.
    fn origin(&self) -> Origin {
        self.last_origin.clone().unwrap_or(Origin::Restored)
    }
}

/// A patient held now, for the status view.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct WaitingPatient {
    /// The patient key.
    pub(crate) patient: String,
    /// Each input's state.
    pub(crate) inputs: Vec<InputState>,
    /// Associations still adding to the patient (it waits for them to end).
    pub(crate) associations_adding: usize,
    /// Seconds since its last instance arrived.
    pub(crate) seconds_since_last_instance: f64,
}

/// One input of a waiting patient.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct InputState {
    /// The input's name.
    pub(crate) name: String,
    /// Instances it holds.
    pub(crate) instances: usize,
    /// Whether its rule says it has enough.
    pub(crate) enough: bool,
    /// Its rule, in words.
    pub(crate) rule: String,
}

/// The outcome of offering an instance to the inputs.
#[derive(Debug)]
pub(crate) enum Offer {
    /// Stored in these inputs.
    Stored(Vec<String>),
    /// Entered no input: each input's reason.
    Rejected(Vec<(String, Rejection)>),
    /// Could not be stored (disk full, write error): nothing of it is kept.
    Failed(std::io::Error),
}

impl Storage {
    /// Marks that an association starts adding to a patient; the patient is not taken out
    /// while any association that started adding to it is live.
    pub(crate) fn begin_adding(&self, patient_key: &str) {
        let inputs = self.inputs.len();
        self.patients()
            .entry(patient_key.to_string())
            .or_insert_with(|| PatientEntry::new(inputs))
            .live_adders += 1;
    }

    /// Offers a received instance to every input; stores it in each that admits it (on
    /// disk: durably, before returning). An instance with a SOP Instance UID already held
    /// for the patient replaces the old one.
    pub(crate) fn offer(
        &self,
        patient_key: &str,
        mut instance: ReceivedInstance,
        temp: Option<&Path>,
    ) -> Offer {
        let mut admitted = Vec::new();
        let mut rejected = Vec::new();
        for (index, input) in self.inputs.iter().enumerate() {
            match input.admit(&instance.header) {
                Ok(()) => admitted.push(index),
                Err(reason) => rejected.push((input.name().to_string(), reason)),
            }
        }
        if admitted.is_empty() {
            if let Some(temp) = temp {
                disk::remove_temp(temp);
            }
            return Offer::Rejected(rejected);
        }
        let names: Vec<&str> = admitted.iter().map(|&i| self.inputs[i].name()).collect();
        if let (Some(layout), Some(temp)) = (&self.disk, temp) {
            // The patient cannot be taken out meanwhile: this association is adding to it.
            if let Err(error) = layout.place(patient_key, temp, &names, &instance.file_name()) {
                disk::remove_temp(temp);
                return Offer::Failed(error);
            }
            instance.data = InstanceData::Disk;
        }
        let names = names.into_iter().map(str::to_string).collect();
        let instance = Arc::new(instance);
        let inputs = self.inputs.len();
        let mut patients = self.patients();
        let entry = patients
            .entry(patient_key.to_string())
            .or_insert_with(|| PatientEntry::new(inputs));
        entry.last_added = SystemTime::now();
        for &index in &admitted {
            let held = &mut entry.inputs[index];
            held.retain(|i| i.sop_instance_uid != instance.sop_instance_uid);
            held.push(Arc::clone(&instance));
        }
        Offer::Stored(names)
    }

    /// Marks that an association (or a requeue) ended adding to a patient; if no other
    /// live one adds to it and every input has enough, takes the patient's batch out
    /// (exactly once).
    pub(crate) fn finish_adding(&self, patient_key: &str, origin: &Origin) -> Option<PatientBatch> {
        let mut patients = self.patients();
        let entry = patients.get_mut(patient_key)?;
        entry.live_adders = entry.live_adders.saturating_sub(1);
        entry.last_origin = Some(origin.clone());
        if entry.live_adders > 0 {
            return None;
        }
        if entry.inputs.iter().all(Vec::is_empty) {
            // Every instance of this patient was rejected: nothing to keep.
            patients.remove(patient_key);
            return None;
        }
        if self.quiet_period.is_some() || !self.has_enough(entry) {
            // With a quiet period the maintenance thread takes it out, when quiet.
            return None;
        }
        self.take_out(&mut patients, patient_key, origin.clone())
    }

    /// Takes out every patient that has enough, no live association adding to it, and
    /// (with a quiet period) no new instance for that long.
    pub(crate) fn take_ready(&self) -> Vec<PatientBatch> {
        // One critical section: no association can start adding in between.
        let mut patients = self.patients();
        let now = SystemTime::now();
        let ready: Vec<(String, Origin)> = patients
            .iter()
            .filter(|(_, e)| {
                e.live_adders == 0
                    && self.quiet_period.is_none_or(|quiet| {
                        now.duration_since(e.last_added).unwrap_or_default() >= quiet
                    })
                    && self.has_enough(e)
            })
            .map(|(k, e)| (k.clone(), e.origin()))
            .collect();
        ready
            .into_iter()
            .filter_map(|(key, origin)| self.take_out(&mut patients, &key, origin))
            .collect()
    }

    /// Removes or quarantines patients that never got enough within `max_age` of their
    /// last instance; returns their keys.
    pub(crate) fn expire(&self, max_age: Duration, action: ExpiryAction) -> Vec<String> {
        let now = SystemTime::now();
        let mut patients = self.patients();
        let expired: Vec<(String, Origin)> = patients
            .iter()
            .filter(|(_, e)| {
                e.live_adders == 0
                    && now.duration_since(e.last_added).unwrap_or_default() > max_age
                    // A patient with enough is waiting for processing, not expiring.
                    && !self.has_enough(e)
            })
            .map(|(k, e)| (k.clone(), e.origin()))
            .collect();
        for (key, origin) in &expired {
            let Some(batch) = self.take_out(&mut patients, key, origin.clone()) else {
                continue;
            };
            let count = batch.instance_count();
            match action {
                ExpiryAction::Remove => {
                    tracing::warn!(patient = %key, instances = count, ?max_age, "patient expired without enough instances: removed");
                    self.batch_succeeded(batch);
                }
                ExpiryAction::Quarantine => {
                    let place = self.quarantine(batch);
                    tracing::warn!(patient = %key, instances = count, ?max_age, %place, "patient expired without enough instances: quarantined");
                }
            }
        }
        expired.into_iter().map(|(key, _)| key).collect()
    }

    /// What every patient held now has, input by input, and why it waits.
    pub(crate) fn waiting(&self) -> Vec<WaitingPatient> {
        let now = SystemTime::now();
        let patients = self.patients();
        let mut out: Vec<WaitingPatient> = patients
            .iter()
            .map(|(key, entry)| WaitingPatient {
                patient: key.clone(),
                associations_adding: entry.live_adders,
                seconds_since_last_instance: now
                    .duration_since(entry.last_added)
                    .unwrap_or_default()
                    .as_secs_f64(),
                inputs: self
                    .inputs
                    .iter()
                    .zip(&entry.inputs)
                    .map(|(input, held)| {
                        let headers: Vec<&InMemDicomObject> =
                            held.iter().map(|i| &i.header).collect();
                        InputState {
                            name: input.name().to_string(),
                            instances: held.len(),
                            enough: std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                input.has_enough(&headers)
                            }))
                            .unwrap_or(false),
                            rule: format!("{:?}", input.enough()),
                        }
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.patient.cmp(&b.patient));
        out
    }

    /// Number of instances held for a patient (0 if unknown).
    pub(crate) fn held_for(&self, patient_key: &str) -> usize {
        self.patients()
            .get(patient_key)
            .map_or(0, |e| e.inputs.iter().map(Vec::len).sum())
    }

    /// Takes a patient's batch out of the map (on disk: its directory to `processing/`).
    fn take_out(
        &self,
        patients: &mut HashMap<String, PatientEntry>,
        patient_key: &str,
        origin: Origin,
    ) -> Option<PatientBatch> {
        let dir = match &self.disk {
            Some(layout) => {
                let sequence = self.sequence.fetch_add(1, Ordering::SeqCst);
                match layout.take_out(patient_key, sequence) {
                    Ok(dir) => Some(dir),
                    Err(error) => {
                        tracing::error!(patient = %patient_key, %error, "cannot take the patient out for processing; it stays stored");
                        return None;
                    }
                }
            }
            None => None,
        };
        let entry = patients.remove(patient_key)?;
        // Failed attempts recorded beside the data (before a restart, say) still count.
        let attempt = dir.as_deref().map_or(0, DiskLayout::failed_attempts) + 1;
        Some(PatientBatch {
            patient_key: patient_key.to_string(),
            inputs: self
                .inputs
                .iter()
                .map(|i| i.name().to_string())
                .zip(entry.inputs)
                .collect(),
            origin,
            triggered_at: SystemTime::now(),
            attempt,
            dir,
        })
    }

    /// Whether every input has enough; a rule that panics counts as not enough.
    fn has_enough(&self, entry: &PatientEntry) -> bool {
        self.inputs.iter().zip(&entry.inputs).all(|(input, held)| {
            let headers: Vec<&InMemDicomObject> = held.iter().map(|i| &i.header).collect();
            // A rule of the user's that panics must not take the node's state with it.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.has_enough(&headers)))
                .unwrap_or_else(|_| {
                    tracing::error!(
                        input = input.name(),
                        "the input's enough-rule panicked: counted as not enough"
                    );
                    false
                })
        })
    }
}
