//! The prior service: for each group whose first instance arrived, it queries the
//! configured PACS for the patient's earlier studies (C-FIND), chooses them by the prior
//! input's rules, and retrieves them (C-MOVE to the node's own AE title, or C-GET) into that
//! input, all within the input's time limit. However the fetch ends, the input gets a
//! status (fetched, or unavailable with the reason), and the group goes on to processing
//! when it is complete.

use crate::handover::{hand_over, Cause};
use crate::retrieve::{self, Level, QrOptions, Query, RetrieveError};
use crate::runner::ChildRunner;
use crate::storage::{FetchRequest, Storage};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicomnode_core::completion::display_group_key;
use dicomnode_core::error::error_chain;
use dicomnode_core::input::value_of;
use dicomnode_core::{PriorStatus, PriorStudy, Retrieval};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fetches run at once (each one an association with the PACS at a time; they mostly
/// wait on the network).
const WORKERS: usize = 4;

/// Starts the prior service's threads, if the storage has fetches to run.
pub(crate) fn start(storage: Arc<Storage>, runner: Arc<ChildRunner>, ae_title: &str) {
    let Some(queue) = storage.take_fetch_queue() else {
        return;
    };
    let queue = Arc::new(Mutex::new(queue));
    for n in 0..WORKERS {
        let (storage, runner, queue) = (
            Arc::clone(&storage),
            Arc::clone(&runner),
            Arc::clone(&queue),
        );
        let ae_title = ae_title.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("priors-{n}"))
            .spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(request) = next else {
                    return;
                };
                // A fetch that panics still ends: the group must not wait for ever.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&storage, &runner, &ae_title, &request)
                }));
                if ran.is_err() {
                    tracing::error!(patient = %display_group_key(&request.group_key), "the prior fetch panicked");
                    let status = PriorStatus::Unavailable("the fetch failed unexpectedly (a panic)".into());
                    if let Some(batch) = storage.prior_finished(&request, status) {
                        hand_over(&runner, [batch], Cause::PriorsFetched);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a prior service thread");
        }
    }
}

/// Runs one fetch to its end and hands the group over when it is complete.
fn run(storage: &Storage, runner: &ChildRunner, ae_title: &str, request: &FetchRequest) {
    let patient = display_group_key(&request.group_key);
    let start = Instant::now();
    let status = match fetch(storage, ae_title, request) {
        Ok(studies) => {
            tracing::info!(%patient, input = %request.input_name, studies = studies.len(),
                instances = studies.iter().map(|s| s.instances).sum::<usize>(),
                seconds = start.elapsed().as_secs_f64(),
                storage_seconds = storage.prior_storage_time(&request.group_key).as_secs_f64(),
                "prior studies fetched");
            PriorStatus::Fetched(studies)
        }
        Err(error) => {
            let reason = error_chain(&error);
            tracing::warn!(%patient, input = %request.input_name, %reason,
                seconds = start.elapsed().as_secs_f64(), "prior studies unavailable");
            PriorStatus::Unavailable(reason)
        }
    };
    if let Some(batch) = storage.prior_finished(request, status) {
        hand_over(runner, [batch], Cause::PriorsFetched);
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The query or a retrieval failed.
    #[error(transparent)]
    Retrieve(#[from] RetrieveError),
    /// The fetch's time limit passed between operations.
    #[error("the time limit of {0:?} passed")]
    TimeLimit(Duration),
    /// The PACS reported failed sub-operations.
    #[error("instances of study {study} failed to arrive ({failed} counted by the PACS)")]
    Incomplete {
        /// The study.
        study: String,
        /// How many.
        failed: u16,
    },
    /// The instances do not carry the PatientID to query for.
    #[error("the current instances carry no PatientID to query for")]
    NoPatientId,
}

fn fetch(
    storage: &Storage,
    ae_title: &str,
    request: &FetchRequest,
) -> Result<Vec<PriorStudy>, FetchError> {
    let priors = &request.priors;
    let limit = priors.limit();
    // The limit counts from the moment the fetch was asked for, queueing included.
    let deadline = request
        .queued_at
        .checked_add(limit)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
    let options = |deadline: Instant| -> Result<QrOptions, FetchError> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(FetchError::TimeLimit(limit))?;
        Ok(QrOptions::new(ae_title).timeout(left).max_answers(500))
    };
    if request.patient_id.is_empty() {
        return Err(FetchError::NoPatientId);
    }
    // Time-outs name the fetch's own limit, not what was left of it.
    let bounded = |error: RetrieveError| match error {
        RetrieveError::TimedOut {
            address, operation, ..
        } => RetrieveError::TimedOut {
            address,
            operation,
            limit,
        },
        other => other,
    };
    let started = Instant::now();
    let mut answers = retrieve::find(priors.pacs(), &options(deadline)?, &study_query(request))
        .map_err(bounded)?;
    // A PACS that does not answer ModalitiesInStudy (dcmqrscp) is asked per series.
    if !wanted_modalities(request).is_empty() {
        for answer in &mut answers {
            if value_of(answer, tags::MODALITIES_IN_STUDY).is_some() {
                continue;
            }
            let Some(uid) = value_of(answer, tags::STUDY_INSTANCE_UID) else {
                continue;
            };
            let series = Query::new(Level::Series)
                .matching(tags::PATIENT_ID, &request.patient_id)
                .matching(tags::STUDY_INSTANCE_UID, &uid);
            let found =
                retrieve::find(priors.pacs(), &options(deadline)?, &series).map_err(bounded)?;
            let modalities: BTreeSet<String> = found
                .iter()
                .filter_map(|s| value_of(s, tags::MODALITY))
                .collect();
            let joined = modalities.into_iter().collect::<Vec<_>>().join("\\");
            answer.put(dicom_core::DataElement::new(
                tags::MODALITIES_IN_STUDY,
                dicom_core::VR::CS,
                joined,
            ));
        }
    }
    let chosen = choose(request, answers);
    tracing::info!(patient = %display_group_key(&request.group_key), found = chosen.len(),
        seconds = started.elapsed().as_secs_f64(), "C-FIND for prior studies answered");
    let mut studies = Vec::new();
    for mut study in chosen {
        let uid = study.study_instance_uid.clone();
        let retrieving = Instant::now();
        let report = match priors.retrieval() {
            Retrieval::Get => {
                let mut keep = PriorSink {
                    storage,
                    request,
                    current: None,
                };
                retrieve::get(
                    priors.pacs(),
                    &options(deadline)?,
                    &Query::study(&uid),
                    &[],
                    &mut keep,
                    &mut |_| {},
                )
                .map_err(bounded)
            }
            Retrieval::Move => {
                // Another fetch moving the same study first: its instances are its own.
                while !storage.expect_moved_study(&uid, request) {
                    if Instant::now() >= deadline {
                        return Err(FetchError::TimeLimit(limit));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // From here to the close, nothing returns early: the route must close.
                let report = options(deadline).map_err(|_| RetrieveError::TimedOut {
                    address: priors.pacs().to_string(),
                    operation: "C-MOVE",
                    limit,
                });
                let report = report.and_then(|options| {
                    retrieve::move_to(
                        priors.pacs(),
                        &options,
                        &Query::study(&uid),
                        ae_title,
                        &mut |_| {},
                    )
                });
                storage.close_moved_study(&uid);
                report.map_err(bounded)
            }
        }?;
        // A warning status (0xB000..) says sub-operations failed, counted or not.
        if report.progress.failed > 0 || (0xB000..=0xBFFF).contains(&report.status) {
            return Err(FetchError::Incomplete {
                study: uid,
                failed: report.progress.failed,
            });
        }
        study.instances = storage.fetched_count(&request.group_key, request.input, &uid);
        tracing::info!(patient = %display_group_key(&request.group_key), study = %uid,
            instances = study.instances, seconds = retrieving.elapsed().as_secs_f64(),
            method = ?priors.retrieval(), "prior study retrieved");
        studies.push(study);
    }
    Ok(studies)
}

/// Stores the instances a C-GET brings into the group's prior input, streamed as the SCP
/// streams what a sender sends (on disk: a temporary file, fsynced, then placed).
struct PriorSink<'a> {
    storage: &'a Storage,
    request: &'a FetchRequest,
    /// The instance arriving: what it is, where its bytes go, since when.
    current: Option<(String, String, String, crate::storage::Incoming, Instant)>,
}

impl retrieve::InstanceSink for PriorSink<'_> {
    fn begin(&mut self, class: &str, instance: &str, ts: &str) -> Result<(), String> {
        let incoming = self.storage.incoming(class, instance, ts);
        let ids = (class.to_string(), instance.to_string(), ts.to_string());
        self.current = Some((ids.0, ids.1, ids.2, incoming, Instant::now()));
        Ok(())
    }

    fn data(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        match &mut self.current {
            Some((_, _, _, incoming, _)) => {
                // Whether it is the last is not known here.
                incoming.push(bytes, false);
                Ok(())
            }
            None => Err("data before its instance".into()),
        }
    }

    fn end(&mut self) -> Result<(), String> {
        let Some((class, uid, ts, incoming, since)) = self.current.take() else {
            return Err("no instance begun".into());
        };
        let (storage, request) = (self.storage, self.request);
        let (instance, staged) = storage
            .receive(incoming, &class, &uid, &ts)
            .map_err(|e| error_chain(&e))?;
        let found = value_of(&instance.header, tags::PATIENT_ID).unwrap_or_default();
        if found != request.patient_id {
            return Err(format!(
                "an instance with PatientID {found:?}, not the patient's"
            ));
        }
        storage.store_fetched(
            &request.group_key,
            request.input,
            request.generation,
            instance,
            staged,
            since,
        )
    }

    fn abandon(&mut self) {
        // Dropping the incoming data set removes what was written of it.
        self.current = None;
    }
}

/// The C-FIND for the patient's studies, narrowed as far as the PACS is asked to.
fn study_query(request: &FetchRequest) -> Query {
    let priors = &request.priors;
    let mut query = Query::new(Level::Study).matching(tags::PATIENT_ID, &request.patient_id);
    let modalities = wanted_modalities(request);
    if modalities.len() == 1 {
        query = query.matching(tags::MODALITIES_IN_STUDY, &modalities[0]);
    }
    if let (Some(days), Some(date)) = (priors.max_age_days(), &request.study_date) {
        if let Some(from) = days_before(date, days) {
            query = query.matching(tags::STUDY_DATE, format!("{from}-{date}"));
        }
    }
    query
}

fn wanted_modalities(request: &FetchRequest) -> Vec<String> {
    let mut wanted = request.priors.wanted_modalities().to_vec();
    if request.priors.wants_same_modality() {
        wanted.extend(request.modality.clone());
    }
    wanted
}

/// The studies to fetch among the answers: not the current one, of the wanted modalities,
/// dates and description (checked here too: not every PACS matches every key), the most
/// recent first, at most the input's limit.
fn choose(request: &FetchRequest, answers: Vec<InMemDicomObject>) -> Vec<PriorStudy> {
    let priors = &request.priors;
    let modalities = wanted_modalities(request);
    let from = match (priors.max_age_days(), &request.study_date) {
        (Some(days), Some(date)) => days_before(date, days),
        _ => None,
    };
    let mut chosen: Vec<PriorStudy> = answers
        .iter()
        .filter(|a| value_of(a, tags::PATIENT_ID).is_none_or(|id| id == request.patient_id))
        .filter(|a| {
            modalities.is_empty()
                || value_of(a, tags::MODALITIES_IN_STUDY).is_none_or(|found| {
                    found
                        .split('\\')
                        .any(|m| modalities.iter().any(|w| w == m.trim()))
                })
        })
        .filter_map(|a| {
            Some(PriorStudy {
                study_instance_uid: value_of(a, tags::STUDY_INSTANCE_UID)?,
                study_date: value_of(a, tags::STUDY_DATE).unwrap_or_default(),
                description: value_of(a, tags::STUDY_DESCRIPTION).unwrap_or_default(),
                instances: 0,
            })
        })
        .filter(|s| s.study_instance_uid != request.current_study)
        .filter(|s| match &request.study_date {
            // Priors are earlier (or the same day); a study without a date is kept.
            Some(current) if !s.study_date.is_empty() => s.study_date.as_str() <= current.as_str(),
            _ => true,
        })
        .filter(|s| match &from {
            Some(from) if !s.study_date.is_empty() => s.study_date.as_str() >= from.as_str(),
            _ => true,
        })
        .filter(|s| {
            priors
                .description_rule()
                .is_none_or(|rule| rule.matches(&s.description))
        })
        .collect();
    chosen.sort_by(|a, b| b.study_date.cmp(&a.study_date));
    chosen.dedup_by(|a, b| a.study_instance_uid == b.study_instance_uid);
    chosen.truncate(priors.study_limit());
    chosen
}

/// The date `days` before `date` (YYYYMMDD).
fn days_before(date: &str, days: u32) -> Option<String> {
    let (y, m, d) = dicomnode_core::dates::parse_da(date)?;
    let day = dicomnode_core::dates::days_from_civil(y, m, d) - i64::from(days);
    let (y, m, d) = dicomnode_core::dates::civil_from_days(day);
    Some(format!("{y:04}{m:02}{d:02}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};
    use dicomnode_core::Priors;

    fn answer(uid: &str, date: &str, modalities: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::PATIENT_ID, VR::LO, "P1"),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, uid),
            DataElement::new(tags::STUDY_DATE, VR::DA, date),
            DataElement::new(tags::MODALITIES_IN_STUDY, VR::CS, modalities),
        ])
    }

    #[test]
    fn priors_are_earlier_studies_of_the_modality_newest_first() {
        let request = FetchRequest {
            group_key: "P1".into(),
            input: 1,
            input_name: "priors".into(),
            priors: Priors::from("PACS@127.0.0.1:1".parse().unwrap())
                .same_modality()
                .within_days(365)
                .max_studies(2),
            patient_id: "P1".into(),
            current_study: "1.9".into(),
            modality: Some("CT".into()),
            study_date: Some("20240301".into()),
            generation: 1,
            queued_at: Instant::now(),
        };
        let answers = vec![
            answer("1.1", "20230101", "CT"), // too old
            answer("1.2", "20230601", "CT\\PT"),
            answer("1.3", "20231201", "CT"),
            answer("1.4", "20240101", "MR"), // other modality
            answer("1.5", "20240201", "CT"),
            answer("1.9", "20240301", "CT"), // the current study
            answer("1.6", "20240401", "CT"), // later
        ];
        let chosen: Vec<String> = choose(&request, answers)
            .into_iter()
            .map(|s| s.study_instance_uid)
            .collect();
        assert_eq!(chosen, ["1.5", "1.3"]);
        assert_eq!(days_before("20240301", 365).as_deref(), Some("20230302"));
        let query = study_query(&request);
        assert_eq!(
            query.value(tags::MODALITIES_IN_STUDY).as_deref(),
            Some("CT")
        );
        assert_eq!(
            query.value(tags::STUDY_DATE).as_deref(),
            Some("20230302-20240301")
        );
    }
}
