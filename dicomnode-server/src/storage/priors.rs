//! The storage's side of prior studies: which groups wait for a fetch, where fetched
//! instances go (C-GET hands them over; C-MOVE brings them to the SCP, routed here by their
//! StudyInstanceUID), and how a fetch ended, kept beside the group's data so that a
//! restart resumes it.

use super::entry::{PatientEntry, PriorState};
use super::receive::Staged;
use super::{ReceivedInstance, Storage};
use crate::storage::names::input_dir_name;
use dicom_dictionary_std::tags;
use dicomnode_core::completion::display_group_key;
use dicomnode_core::input::value_of;
use dicomnode_core::Priors;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A fetch of prior studies to run, for one prior input of one group.
#[derive(Debug, Clone)]
pub(crate) struct FetchRequest {
    /// The group's key.
    pub(crate) group_key: String,
    /// The prior input's index and name.
    pub(crate) input: usize,
    pub(crate) input_name: String,
    /// What to fetch.
    pub(crate) priors: Priors,
    /// PatientID of the current instances (what the PACS is asked for).
    pub(crate) patient_id: String,
    /// The current study (never fetched as a prior).
    pub(crate) current_study: String,
    /// The generation of the group's entry that asked (see `PatientEntry::generation`).
    pub(crate) generation: u64,
    /// When it was queued: the time limit counts from here.
    pub(crate) queued_at: std::time::Instant,
    /// Modality and StudyDate of the instance that started the group.
    pub(crate) modality: Option<String>,
    pub(crate) study_date: Option<String>,
}

/// Where the C-MOVE of one study sends its instances: into this group's prior input
/// (instances of this patient only).
#[derive(Debug, Clone)]
struct Route {
    group_key: String,
    input: usize,
    generation: u64,
    patient_id: String,
}

/// The prior studies being moved, by StudyInstanceUID.
#[derive(Debug, Default)]
pub(crate) struct MoveRoutes(HashMap<String, Route>);

/// The file beside a group's data that keeps a prior input's state.
fn state_file(input_name: &str) -> String {
    format!("prior-{}.json", input_dir_name(input_name))
}

impl Storage {
    /// Queues fetches for the prior service (which may not run yet: they wait).
    pub(super) fn queue_fetches(&self, requests: Vec<FetchRequest>) {
        for request in requests {
            self.persist_prior_state(
                &request.group_key,
                &request.input_name,
                &PriorState::Fetching,
            );
            tracing::info!(patient = %display_group_key(&request.group_key), input = %request.input_name, pacs = %request.priors.pacs(), "fetching prior studies");
            if self.fetches.0.send(request).is_err() {
                tracing::error!("the prior service is gone: the fetch is not run");
            }
        }
    }

    /// The queue the prior service takes fetches from (once).
    pub(crate) fn take_fetch_queue(&self) -> Option<std::sync::mpsc::Receiver<FetchRequest>> {
        self.fetches
            .1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// A C-MOVE of `study` for this group's prior input is about to start; `false` while
    /// another group's C-MOVE of the same study runs (its instances cannot go to both).
    pub(crate) fn expect_moved_study(&self, study: &str, request: &FetchRequest) -> bool {
        let mut routes = self.routes();
        if routes.0.contains_key(study) {
            return false;
        }
        routes.0.insert(
            study.to_string(),
            Route {
                group_key: request.group_key.clone(),
                input: request.input,
                generation: request.generation,
                patient_id: request.patient_id.clone(),
            },
        );
        true
    }

    /// The C-MOVE of `study` ended: instances of it that still come (naming the node as
    /// their move originator) are refused.
    pub(crate) fn close_moved_study(&self, study: &str) {
        self.routes().0.remove(study);
    }

    /// Where an instance that a C-MOVE of this node's brought belongs: the group's prior
    /// input and the entry's generation, or why it is refused (no fetch waits for its
    /// study, or it is another patient's).
    pub(crate) fn prior_route(
        &self,
        header: &dicom_object::InMemDicomObject,
    ) -> Result<(String, usize, u64), String> {
        let study = value_of(header, tags::STUDY_INSTANCE_UID).unwrap_or_default();
        let routes = self.routes();
        let Some(route) = routes.0.get(&study) else {
            return Err(format!(
                "a C-MOVE sub-operation for this node that no prior fetch waits for (study {study})"
            ));
        };
        // A PACS that sends another patient's instance under the study's UID.
        let found = value_of(header, tags::PATIENT_ID).unwrap_or_default();
        if found != route.patient_id {
            return Err(format!(
                "an instance of study {study} with PatientID {found:?}, fetched as a prior of another patient"
            ));
        }
        Ok((route.group_key.clone(), route.input, route.generation))
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, MoveRoutes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an instance fetched for a group's prior input (durably, on disk); the time
    /// since `since` (its data set complete) counts as the fetch's storage time.
    pub(crate) fn store_fetched(
        &self,
        group_key: &str,
        input: usize,
        generation: u64,
        mut instance: ReceivedInstance,
        staged: Staged,
        since: std::time::Instant,
    ) -> Result<(), String> {
        let name = self.inputs[input].name();
        let waiting = |patients: &HashMap<String, PatientEntry>| {
            patients
                .get(group_key)
                .is_some_and(|e| e.generation == generation)
        };
        if !waiting(&self.patients()) {
            return Err("the group it was fetched for is no longer waiting".into());
        }
        // Durable as a sender's instance is: logged, or fsynced file by file.
        if let Err(error) = self.store_durably(group_key, &[name], &mut instance, staged) {
            return Err(format!("cannot store: {error}"));
        }
        let mut patients = self.patients();
        let entry = match patients.get_mut(group_key) {
            Some(entry) if entry.generation == generation => entry,
            _ => {
                drop(patients);
                // Taken out while it was stored. A file placed went with the group or
                // stays as a stray that the group's end puts back; a logged one is given
                // up (never written, never brought back). Nothing is acknowledged.
                if let (Some(wal), Some(commit)) = (&self.wal, instance.logged) {
                    if let Err(error) = wal.consume(vec![commit]) {
                        tracing::warn!(%error, "cannot give up a logged prior instance; it may come back after a restart");
                    }
                }
                return Err("the group it was fetched for is no longer waiting".into());
            }
        };
        let held = &mut entry.inputs[input];
        held.retain(|i| i.sop_instance_uid != instance.sop_instance_uid);
        held.push(Arc::new(instance));
        entry.prior_storage_time += since.elapsed();
        Ok(())
    }

    /// The time spent storing fetched instances for a group so far.
    pub(crate) fn prior_storage_time(&self, group_key: &str) -> std::time::Duration {
        self.patients()
            .get(group_key)
            .map_or(std::time::Duration::ZERO, |e| e.prior_storage_time)
    }

    /// Instances of `study` the group's prior input holds.
    pub(crate) fn fetched_count(&self, group_key: &str, input: usize, study: &str) -> usize {
        self.patients().get(group_key).map_or(0, |entry| {
            entry.inputs[input]
                .iter()
                .filter(|i| value_of(&i.header, tags::STUDY_INSTANCE_UID).as_deref() == Some(study))
                .count()
        })
    }

    /// Keeps a prior input's state beside the group's data (with a data directory).
    pub(super) fn persist_prior_state(
        &self,
        group_key: &str,
        input_name: &str,
        state: &PriorState,
    ) {
        let Some(layout) = &self.disk else {
            return;
        };
        let written = serde_json::to_vec(state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| layout.write_beside(group_key, &state_file(input_name), &bytes));
        if let Err(error) = written {
            tracing::warn!(patient = %display_group_key(group_key), %error, "cannot keep the prior fetch's state (a restart fetches again)");
        }
    }

    /// The state kept for a prior input in a group's directory (at a restart); a fetch
    /// that had not ended is run again.
    pub(super) fn read_prior_state(dir: &Path, input_name: &str) -> Option<PriorState> {
        let bytes = std::fs::read(dir.join(state_file(input_name))).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            PriorState::Fetching => None,
            done => Some(done),
        }
    }
}
