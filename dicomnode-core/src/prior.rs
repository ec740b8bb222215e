//! Prior studies: what a prior input fetches from a PACS, and what the processor learns of
//! the fetch.
//!
//! ```
//! use dicomnode_core::{Address, Input, Priors, Retrieval};
//! use std::time::Duration;
//!
//! let pacs: Address = "PACS@10.0.0.5:104".parse().unwrap();
//! let priors = Input::new("priors").priors(
//!     Priors::from(pacs)
//!         .same_modality()
//!         .within_days(5 * 365)
//!         .max_studies(3)
//!         .retrieve_with(Retrieval::Move)
//!         .time_limit(Duration::from_secs(120)),
//! );
//! assert!(priors.prior_source().is_some());
//! ```

use crate::matching::Matcher;
use crate::Address;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How fetched studies come to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retrieval {
    /// C-MOVE to the node's own AE title: the PACS sends them to the node's port (it must
    /// know the node's AE title, host and port).
    Move,
    /// C-GET: they come back on the query's own association (no PACS configuration).
    Get,
}

/// Which prior studies a prior input fetches, from where, and how patiently.
#[derive(Debug, Clone)]
pub struct Priors {
    pacs: Address,
    retrieval: Retrieval,
    same_modality: bool,
    modalities: Vec<String>,
    within_days: Option<u32>,
    description: Option<Matcher>,
    max_studies: usize,
    time_limit: Duration,
    required: bool,
}

impl Priors {
    /// Prior studies of the same patient from `pacs`: every modality, any date before the
    /// current study, at most 3, by C-MOVE, within 5 minutes, optional.
    pub fn from(pacs: Address) -> Self {
        Priors {
            pacs,
            retrieval: Retrieval::Move,
            same_modality: false,
            modalities: Vec::new(),
            within_days: None,
            description: None,
            max_studies: 3,
            time_limit: Duration::from_secs(300),
            required: false,
        }
    }

    /// Only studies with the modality of the current study's instance that started it.
    pub fn same_modality(mut self) -> Self {
        self.same_modality = true;
        self
    }

    /// Only studies with one of `modalities` (ModalitiesInStudy).
    pub fn modalities<I, S>(mut self, modalities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.modalities = modalities.into_iter().map(Into::into).collect();
        self
    }

    /// Only studies at most `days` before the current one.
    pub fn within_days(mut self, days: u32) -> Self {
        self.within_days = Some(days);
        self
    }

    /// Only studies whose StudyDescription matches.
    pub fn description(mut self, matcher: Matcher) -> Self {
        self.description = Some(matcher);
        self
    }

    /// At most `n` studies, the most recent first.
    pub fn max_studies(mut self, n: usize) -> Self {
        self.max_studies = n;
        self
    }

    /// C-MOVE (default) or C-GET.
    pub fn retrieve_with(mut self, retrieval: Retrieval) -> Self {
        self.retrieval = retrieval;
        self
    }

    /// The time limit of the whole fetch (query and retrievals).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// Without priors the patient is not processed: when they are unavailable, the batch
    /// goes to the quarantine (with the reason) instead of to the processor.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The PACS.
    pub fn pacs(&self) -> &Address {
        &self.pacs
    }

    /// C-MOVE or C-GET.
    pub fn retrieval(&self) -> Retrieval {
        self.retrieval
    }

    /// Whether only the current modality is wanted.
    pub fn wants_same_modality(&self) -> bool {
        self.same_modality
    }

    /// The modalities wanted (empty: any).
    pub fn wanted_modalities(&self) -> &[String] {
        &self.modalities
    }

    /// The age limit in days.
    pub fn max_age_days(&self) -> Option<u32> {
        self.within_days
    }

    /// The description rule.
    pub fn description_rule(&self) -> Option<&Matcher> {
        self.description.as_ref()
    }

    /// The most studies fetched.
    pub fn study_limit(&self) -> usize {
        self.max_studies
    }

    /// The fetch's time limit.
    pub fn limit(&self) -> Duration {
        self.time_limit
    }

    /// Whether processing needs the priors.
    pub fn is_required(&self) -> bool {
        self.required
    }
}

/// One prior study fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorStudy {
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// StudyDate (YYYYMMDD, empty if the PACS gave none).
    pub study_date: String,
    /// StudyDescription, if any.
    pub description: String,
    /// Instances received.
    pub instances: usize,
}

/// How the fetch of a prior input ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PriorStatus {
    /// Fetched: these studies (possibly none: the patient has no prior study).
    Fetched(Vec<PriorStudy>),
    /// Not fetched, and why (the PACS is down, refused, failed or timed out).
    Unavailable(String),
}

impl PriorStatus {
    /// The studies fetched (none when unavailable).
    pub fn studies(&self) -> &[PriorStudy] {
        match self {
            PriorStatus::Fetched(studies) => studies,
            PriorStatus::Unavailable(_) => &[],
        }
    }
}
