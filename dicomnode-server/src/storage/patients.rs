//! The patients map: instances offered to the inputs, associations adding to a patient,
//! and taking a patient out (once it has enough, or once it expired).

use super::disk::DiskLayout;
use super::entry::{PatientEntry, PriorState};
use super::names::input_dir_name;
use super::priors::FetchRequest;
use super::receive::Staged;
use super::wal::CommitInfo;
use super::{InstanceData, PatientBatch, ReceivedInstance, Storage};
use crate::config::ExpiryAction;
use dicom_dictionary_std::tags;
use dicomnode_core::completion::{display_group_key, HeldInstance};
use dicomnode_core::input::value_of;
use dicomnode_core::{MaxWait, PriorStatus};
use dicomnode_core::{Origin, Rejection};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
        staged: Staged,
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
            // Dropped: what was staged of it goes.
            return Offer::Rejected(rejected);
        }
        let names: Vec<&str> = admitted.iter().map(|&i| self.inputs[i].name()).collect();
        // The patient cannot be taken out meanwhile: this association is adding to it.
        if let Err(error) = self.store_durably(patient_key, &names, &mut instance, staged) {
            return Offer::Failed(error);
        }
        let names = names.into_iter().map(str::to_string).collect();
        let instance = Arc::new(instance);
        let inputs = self.inputs.len();
        let mut patients = self.patients();
        let entry = patients
            .entry(patient_key.to_string())
            .or_insert_with(|| PatientEntry::new(inputs));
        entry.last_added = SystemTime::now();
        if entry.inputs.iter().all(Vec::is_empty) {
            entry.first_added = entry.last_added;
        }
        for &index in &admitted {
            let held = &mut entry.inputs[index];
            held.retain(|i| i.sop_instance_uid != instance.sop_instance_uid);
            held.push(Arc::clone(&instance));
        }
        let fetches = self.start_priors(patient_key, entry, &instance.header);
        drop(patients);
        self.queue_fetches(fetches);
        Offer::Stored(names)
    }

    /// Makes a received instance durable in the group's input directories `names`
    /// (with a data directory): its commit written to the write-ahead log (its files are
    /// written from there later), or its temporary file placed, file and directories
    /// fsynced. On failure nothing of it is left.
    pub(super) fn store_durably(
        &self,
        key: &str,
        names: &[&str],
        instance: &mut ReceivedInstance,
        staged: Staged,
    ) -> std::io::Result<()> {
        let file_name = instance.file_name();
        match (staged, &self.disk) {
            (Staged::Temp(temp), Some(layout)) => {
                layout.place(key, temp.path(), names, &file_name)?;
                temp.placed();
            }
            (Staged::Logged(set), _) => {
                let InstanceData::Memory(bytes) = &instance.data else {
                    return Err(std::io::Error::other("a logged instance without its bytes"));
                };
                instance.logged = Some(set.commit(
                    bytes,
                    CommitInfo {
                        parts: Vec::new(),
                        key: key.to_string(),
                        input_dirs: names.iter().map(|n| input_dir_name(n)).collect(),
                        file_name,
                        sop_class: instance.sop_class_uid.clone(),
                        sop_instance: instance.sop_instance_uid.clone(),
                        transfer_syntax: instance.transfer_syntax.clone(),
                    },
                )?);
            }
            (Staged::InMemory | Staged::Temp(_), _) => return Ok(()),
        }
        instance.data = InstanceData::Disk;
        Ok(())
    }

    /// Marks that an association (or a requeue) ended adding to a patient; if no other
    /// live one adds to it and every input has enough, takes the patient's batch out
    /// (exactly once).
    pub(crate) fn finish_adding(&self, patient_key: &str, origin: &Origin) -> Option<PatientBatch> {
        // A group about to be taken out gets its logged instances' files written first,
        // outside the lock, so other associations keep storing meanwhile (taking it out
        // writes any that came after).
        if let Some(wal) = self
            .wal
            .as_ref()
            .filter(|_| self.last_adder_of_ready(patient_key))
        {
            if let Err(error) = wal.place_group(patient_key) {
                tracing::warn!(patient = %display_group_key(patient_key), %error, "cannot write the patient's logged instances into files yet");
            }
        }
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
        if self.quiet_period.is_some() || !self.has_enough(entry, SystemTime::now()) {
            // With a quiet period the maintenance thread takes it out, when quiet.
            self.log_waiting(patient_key, entry);
            return None;
        }
        self.take_out(&mut patients, patient_key, origin.clone())
    }

    /// Whether the association ending now is the last adding to a group that has enough
    /// (so that the group will be taken out, without a quiet period).
    fn last_adder_of_ready(&self, patient_key: &str) -> bool {
        self.quiet_period.is_none()
            && self
                .patients()
                .get(patient_key)
                .is_some_and(|e| e.live_adders == 1 && self.has_enough(e, SystemTime::now()))
    }

    /// Takes out every patient that has enough, no live association adding to it, and
    /// (with a quiet period) no new instance for that long.
    pub(crate) fn take_ready(&self) -> Vec<PatientBatch> {
        // One critical section: no association can start adding in between.
        let mut patients = self.patients();
        let now = SystemTime::now();
        let ready: Vec<(String, Origin)> = patients
            .iter()
            .filter(|(_, e)| e.live_adders == 0 && self.is_ready(e, now))
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
                    && !self.has_enough(e, now)
                    // A fetch still running ends within its own time limit.
                    && !e.priors.iter().any(|p| matches!(p, Some(PriorState::Fetching)))
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
                    tracing::warn!(patient = %display_group_key(key), instances = count, ?max_age, "patient expired without enough instances: removed");
                    self.batch_succeeded(batch);
                }
                ExpiryAction::Quarantine => {
                    let place = self.quarantine(batch);
                    tracing::warn!(patient = %display_group_key(key), instances = count, ?max_age, %place, "patient expired without enough instances: quarantined");
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
                patient: display_group_key(key),
                associations_adding: entry.live_adders,
                seconds_since_last_instance: now
                    .duration_since(entry.last_added)
                    .unwrap_or_default()
                    .as_secs_f64(),
                inputs: self
                    .inputs
                    .iter()
                    .zip(&entry.inputs)
                    .enumerate()
                    .map(|(index, (input, held))| InputState {
                        name: input.name().to_string(),
                        instances: held.len(),
                        enough: self.input_has_enough(index, entry, now),
                        rule: self.rule_of(index, entry),
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
    pub(super) fn take_out(
        &self,
        patients: &mut HashMap<String, PatientEntry>,
        patient_key: &str,
        origin: Origin,
    ) -> Option<PatientBatch> {
        let dir = match &self.disk {
            Some(layout) => {
                // Its logged instances' files are written before the directory moves.
                if let Some(Err(error)) = self.wal.as_ref().map(|w| w.place_group(patient_key)) {
                    tracing::error!(patient = %patient_key, %error, "cannot write the patient's logged instances into files; it stays stored (in the log)");
                    return None;
                }
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
        let priors = self
            .inputs
            .iter()
            .zip(&entry.priors)
            .filter_map(|(input, state)| match state {
                Some(PriorState::Done(status)) => Some((input.name().to_string(), status.clone())),
                Some(PriorState::Fetching) => Some((
                    input.name().to_string(),
                    PriorStatus::Unavailable(
                        "the group was processed before the fetch ended".into(),
                    ),
                )),
                None => None,
            })
            .collect::<Vec<_>>();
        let missing_required_priors = priors.iter().find_map(|(name, status)| match status {
            PriorStatus::Unavailable(why)
                if self.inputs.iter().any(|i| {
                    i.name() == name
                        && i.prior_source()
                            .is_some_and(dicomnode_core::Priors::is_required)
                }) =>
            {
                Some(format!("input {name:?}: {why}"))
            }
            _ => None,
        });
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
            priors,
            missing_required_priors,
            transient: 0,
        })
    }

    /// Whether a group with no association adding to it goes to processing now: every
    /// input has enough and (with a quiet period) it has been quiet that long.
    pub(super) fn is_ready(&self, entry: &PatientEntry, now: SystemTime) -> bool {
        self.quiet_period
            .is_none_or(|quiet| now.duration_since(entry.last_added).unwrap_or_default() >= quiet)
            && self.has_enough(entry, now)
    }

    /// Whether every input has enough.
    fn has_enough(&self, entry: &PatientEntry, now: SystemTime) -> bool {
        (0..self.inputs.len()).all(|index| self.input_has_enough(index, entry, now))
    }

    /// Whether input `index` has enough: a prior input once its fetch ended; another by
    /// its rule (a rule that panics counts as not enough).
    fn input_has_enough(&self, index: usize, entry: &PatientEntry, now: SystemTime) -> bool {
        let input = &self.inputs[index];
        if input.prior_source().is_some() {
            return matches!(entry.priors[index], Some(PriorState::Done(_)));
        }
        let held: Vec<HeldInstance<'_>> = entry.inputs[index]
            .iter()
            .map(|i| HeldInstance {
                header: &i.header,
                arrived: i.arrived,
            })
            .collect();
        // A rule of the user's that panics must not take the node's state with it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            input.has_enough_at(&held, now)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(
                input = input.name(),
                "the input's enough-rule panicked: counted as not enough"
            );
            false
        })
    }

    /// Input `index`'s rule in words, for the log and the status view.
    fn rule_of(&self, index: usize, entry: &PatientEntry) -> String {
        match (&self.inputs[index].prior_source(), &entry.priors[index]) {
            (Some(_), Some(PriorState::Done(PriorStatus::Fetched(studies)))) => {
                format!("prior studies fetched ({})", studies.len())
            }
            (Some(_), Some(PriorState::Done(PriorStatus::Unavailable(why)))) => {
                format!("prior studies unavailable: {why}")
            }
            (Some(priors), _) => format!("prior studies being fetched from {}", priors.pacs()),
            (None, _) => format!("{:?}", self.inputs[index].enough()),
        }
    }

    /// Logs why a group still waits, when the reason changed.
    fn log_waiting(&self, key: &str, entry: &mut PatientEntry) {
        let now = SystemTime::now();
        let unmet: Vec<String> = (0..self.inputs.len())
            .filter(|&i| !self.input_has_enough(i, entry, now))
            .map(|i| {
                format!(
                    "input {:?} ({} instances): waits for {}",
                    self.inputs[i].name(),
                    entry.inputs[i].len(),
                    self.rule_of(i, entry)
                )
            })
            .collect();
        let reason = if unmet.is_empty() {
            match self.quiet_period {
                Some(quiet) => format!("complete; waits for its quiet period of {quiet:?}"),
                None => "complete".into(),
            }
        } else {
            unmet.join("; ")
        };
        if reason != entry.last_reason {
            tracing::info!(patient = %display_group_key(key), "waiting: {reason}");
            entry.last_reason = reason;
        }
    }

    /// Applies the pipeline's maximum wait: groups waiting that long since their first
    /// instance, not complete, are processed with what they hold or removed. Returns the
    /// batches to process.
    pub(crate) fn force_complete(&self) -> Vec<PatientBatch> {
        let Some((max_wait, policy)) = self.completion.max_wait_policy() else {
            return Vec::new();
        };
        if policy == MaxWait::KeepWaiting {
            return Vec::new();
        }
        let now = SystemTime::now();
        let mut patients = self.patients();
        let overdue: Vec<(String, Origin)> = patients
            .iter()
            .filter(|(_, e)| {
                e.live_adders == 0
                    && now.duration_since(e.first_added).unwrap_or_default() >= max_wait
                    && !self.has_enough(e, now)
                    // A fetch still running is given its own time limit.
                    && !e.priors.iter().any(|p| matches!(p, Some(PriorState::Fetching)))
            })
            .map(|(k, e)| (k.clone(), e.origin()))
            .collect();
        let mut to_process = Vec::new();
        for (key, origin) in overdue {
            let unmet = patients
                .get(&key)
                .map(|e| {
                    (0..self.inputs.len())
                        .filter(|&i| !self.input_has_enough(i, e, now))
                        .map(|i| format!("{:?}: {}", self.inputs[i].name(), self.rule_of(i, e)))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let Some(batch) = self.take_out(&mut patients, &key, origin) else {
                continue;
            };
            let patient = display_group_key(&key);
            let count = batch.instance_count();
            match policy {
                MaxWait::Process => {
                    tracing::warn!(%patient, instances = count, ?max_wait, unmet = %unmet, "maximum wait reached: processing with what is there");
                    to_process.push(batch);
                }
                _ => {
                    tracing::warn!(%patient, instances = count, ?max_wait, unmet = %unmet, "maximum wait reached: discarded");
                    self.batch_succeeded(batch);
                }
            }
        }
        to_process
    }

    /// The prior fetches a new group starts: its entry's prior inputs are marked as
    /// fetching. `header` is the group's first admitted instance.
    pub(super) fn start_priors(
        &self,
        group_key: &str,
        entry: &mut PatientEntry,
        header: &dicom_object::InMemDicomObject,
    ) -> Vec<FetchRequest> {
        let mut requests = Vec::new();
        for (index, input) in self.inputs.iter().enumerate() {
            let Some(priors) = input.prior_source() else {
                continue;
            };
            if entry.priors[index].is_some() {
                continue;
            }
            entry.priors[index] = Some(PriorState::Fetching);
            requests.push(FetchRequest {
                group_key: group_key.to_string(),
                input: index,
                input_name: input.name().to_string(),
                priors: priors.clone(),
                patient_id: value_of(header, tags::PATIENT_ID).unwrap_or_default(),
                current_study: value_of(header, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
                modality: value_of(header, tags::MODALITY),
                study_date: value_of(header, tags::STUDY_DATE),
                generation: entry.generation,
                queued_at: std::time::Instant::now(),
            });
        }
        requests
    }

    /// A fetch ended. An unavailable fetch keeps nothing it half brought. Returns the
    /// group's batch when it is now ready.
    pub(crate) fn prior_finished(
        &self,
        request: &FetchRequest,
        status: PriorStatus,
    ) -> Option<PatientBatch> {
        let (group_key, input) = (request.group_key.as_str(), request.input);
        let name = self.inputs[input].name().to_string();
        let current = |patients: &HashMap<String, PatientEntry>| {
            patients
                .get(group_key)
                .is_some_and(|e| e.generation == request.generation)
        };
        if !current(&self.patients()) {
            // Taken out meanwhile: nothing to record, nothing to hand over.
            return None;
        }
        self.persist_prior_state(group_key, &name, &PriorState::Done(status.clone()));
        let mut patients = self.patients();
        if !current(&patients) {
            return None;
        }
        let entry = patients.get_mut(group_key)?;
        if matches!(status, PriorStatus::Unavailable(_)) {
            let dropped = std::mem::take(&mut entry.inputs[input]);
            // Logged ones are given up in the log: never written, never brought back.
            if let Some(wal) = &self.wal {
                let commits = dropped.iter().filter_map(|i| i.logged).collect();
                if let Err(error) = wal.consume(commits) {
                    tracing::warn!(patient = %display_group_key(group_key), %error, "cannot give up the half-fetched priors in the log; they may come back as strays");
                }
            }
            if let Some(layout) = &self.disk {
                let dir = layout.patient_dir(group_key).join(input_dir_name(&name));
                for instance in dropped {
                    let _ = std::fs::remove_file(dir.join(instance.file_name()));
                }
            }
        }
        entry.priors[input] = Some(PriorState::Done(status.clone()));
        let ready = entry.live_adders == 0 && self.is_ready(entry, std::time::SystemTime::now());
        if !ready {
            return None;
        }
        let origin = entry.origin();
        self.take_out(&mut patients, group_key, origin)
    }
}
