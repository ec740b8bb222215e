//! The release trigger: when an association ends, each patient it added to is checked,
//! and those that have enough (and no other association still adding) go to the runner.

use crate::handover::{hand_over, Cause};
use crate::runner::ChildRunner;
use crate::storage::Storage;
use dicomnode_core::{Origin, Sender};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The patients one association has added to.
#[derive(Debug, Default)]
pub(crate) struct PatientsTouched {
    keys: BTreeSet<String>,
}

impl PatientsTouched {
    /// Records that the association adds to `patient_key`; the first time, the storage is
    /// told, so that no other association's end takes the patient out meanwhile.
    pub(crate) fn touch(&mut self, storage: &Storage, patient_key: &str) {
        if !self.keys.contains(patient_key) {
            storage.begin_adding(patient_key);
            self.keys.insert(patient_key.to_string());
        }
    }

    /// The association ended (released, aborted or dropped): hands every patient that now
    /// has enough to the runner. Never waits for processing.
    pub(crate) fn association_ended(
        self,
        storage: &Storage,
        runner: &Arc<ChildRunner>,
        sender: &Sender,
    ) {
        let origin = Origin::Association(sender.clone());
        for key in self.keys {
            match storage.finish_adding(&key, &origin) {
                Some(batch) => hand_over(runner, [batch], Cause::AssociationEnded),
                None => {
                    tracing::debug!(patient = %key, held = storage.held_for(&key), "patient waits for more")
                }
            }
        }
    }
}
