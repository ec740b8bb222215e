//! One group being gathered (a patient, study or series): its instances per input, the
//! associations adding to it, its times, and the state of its prior fetches.

use super::ReceivedInstance;
use dicomnode_core::{Origin, PriorStatus};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The generation of the next entry.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One patient being gathered.
pub(super) struct PatientEntry {
    /// Tells this entry from a later one with the same key (after an expiry, say): a
    /// prior fetch acts only on the entry that started it.
    pub(super) generation: u64,
    /// Instances per input, in declaration order.
    pub(super) inputs: Vec<Vec<Arc<ReceivedInstance>>>,
    /// Associations (or requeues) that added to this patient and have not ended.
    pub(super) live_adders: usize,
    /// When an instance last arrived (for expiry and the quiet period).
    pub(super) last_added: SystemTime,
    /// Where the patient's instances last came from (`None`: restored at start-up).
    pub(super) last_origin: Option<Origin>,
    /// When its first instance arrived (for the maximum wait).
    pub(super) first_added: SystemTime,
    /// Per input: the fetch of a prior input (`None` for other inputs, and for a prior
    /// input whose fetch has not started).
    pub(super) priors: Vec<Option<PriorState>>,
    /// Why it waited, as last logged (to log only changes).
    pub(super) last_reason: String,
    /// Time spent storing instances fetched as priors (for the log's figures).
    pub(super) prior_storage_time: Duration,
}

impl PatientEntry {
    pub(super) fn new(inputs: usize) -> Self {
        PatientEntry {
            generation: NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            inputs: vec![Vec::new(); inputs],
            live_adders: 0,
            last_added: SystemTime::now(),
            last_origin: None,
            first_added: SystemTime::now(),
            priors: vec![None; inputs],
            last_reason: String::new(),
            prior_storage_time: Duration::ZERO,
        }
    }

    /// Where a batch taken out now comes from.
    pub(super) fn origin(&self) -> Origin {
        self.last_origin.clone().unwrap_or(Origin::Restored)
    }
}

/// Where a prior input's fetch stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum PriorState {
    /// Running (or to be run again after a restart).
    Fetching,
    /// Ended.
    Done(PriorStatus),
}
