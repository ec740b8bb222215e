//! The one place where a patient's batch passes from the storage to the runner, whatever
//! took it out: the end of an association, a quiet period, the start-up, a requeue.

use crate::runner::ChildRunner;
use crate::storage::PatientBatch;
use std::fmt;

/// What took a patient out for processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The last association adding to the patient ended (released, aborted or dropped).
    AssociationEnded,
    /// No instance arrived for the patient for the quiet period.
    QuietPeriod,
    /// A maintenance round found the patient ready (without a quiet period: e.g. a
    /// take-out that failed before).
    Maintenance,
    /// The patient was complete in the data directory at start-up.
    Restored,
    /// A person put the patient's batch back (`dicomnode requeue`).
    Requeued,
    /// The fetch of its prior studies ended, and that completed it.
    PriorsFetched,
    /// It waited the pipeline's maximum wait, and is processed with what it holds.
    MaxWait,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::AssociationEnded => "association ended",
            Cause::QuietPeriod => "quiet period",
            Cause::Maintenance => "maintenance round",
            Cause::Restored => "restored",
            Cause::Requeued => "requeued",
            Cause::PriorsFetched => "prior studies fetched",
            Cause::MaxWait => "maximum wait reached",
        })
    }
}

/// Hands batches that have enough to the runner; returns at once.
pub(crate) fn hand_over(
    runner: &ChildRunner,
    batches: impl IntoIterator<Item = PatientBatch>,
    cause: Cause,
) {
    for batch in batches {
        tracing::info!(
            patient = %dicomnode_core::completion::display_group_key(&batch.patient_key),
            instances = batch.instance_count(),
            %cause,
            origin = %batch.origin,
            "patient has enough: starting processing"
        );
        runner.submit(batch);
    }
}
