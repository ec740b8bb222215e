//! Real query/retrieve peers for end-to-end tests of a C-FIND/C-MOVE/C-GET SCU: Orthanc
//! (Debian's package, `/usr/sbin/Orthanc`) and DCMTK's `dcmqrscp`, each with its own
//! storage in a temporary directory and on free ports; and DCMTK's `findscu` as the
//! reference for what a query should find.
//!
//! Both peers listen on all interfaces. A test must therefore call
//! [`crate::isolated_network`] first, before it takes any port with [`crate::free_port`]:
//! then "all interfaces" is the loopback interface of the test thread's own network
//! namespace, which every process the thread starts (the peer, DCMTK's tools, the node)
//! shares.
//!
//! What the configurations settle (checked by hand against Orthanc 1.10.1 and DCMTK 3.6.7):
//!
//! - Orthanc only moves to the AE titles of `DicomModalities` (another destination: the
//!   C-MOVE fails, status "Failed: UnableToProcess"). C-FIND, C-MOVE and C-GET from an AE
//!   title that is not a modality are refused (C-FIND fails; C-MOVE and C-GET abort the
//!   association) unless `DicomAlwaysAllowFind`, `DicomAlwaysAllowMove` and
//!   `DicomAlwaysAllowGet` are true, which [`OrthancOptions::new`] sets so that `findscu`
//!   and `getscu` with their default titles work. A modality given as a plain list
//!   (`[aet, host, port]`) may do everything, C-GET included. The called AE title is not
//!   checked (`DicomCheckCalledAet` false). Its C-STORE sub-operations carry the Move
//!   Originator AE Title and Message ID.
//! - dcmqrscp moves only to the AE titles of its `HostTable` (another destination:
//!   "Refused: MoveDestinationUnknown"); with `ANY` as the storage area's peers, any calling
//!   AE title may query and retrieve, C-GET included (DCMTK ≥ 3.6 serves C-GET unless
//!   `--disable-get`). Its C-STORE sub-operations carry the Move Originator AE Title and
//!   Message ID. It must run in its default fork-per-association mode: in single-process
//!   mode (`-s`) DCMTK 3.6.7 crashes (SIGSEGV in `DUL_DropAssociation`) after the first
//!   association.

mod dcmqrscp;
mod orthanc;

pub use dcmqrscp::{Dcmqrscp, DcmqrscpOptions};
pub use orthanc::{HttpResponse, Orthanc, OrthancOptions};

use crate::{dcmtk, run};
use dicomnode_server::dicom_core::{DataElement, VR};
use dicomnode_server::input::value_of;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::{dicom_dictionary_std::tags, dicom_object, DicomInstance};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long a peer may take to listen.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one REST request may take.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The text of a log file, empty if it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Waits until 127.0.0.1 accepts connections on every one of `ports`; panics with the
/// peer's log if it exits first or after [`START_TIMEOUT`].
pub(crate) fn wait_until_listening(child: &mut Child, name: &str, ports: &[u16], log: &Path) {
    let start = Instant::now();
    for &port in ports {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited ({status}) before listening on port {port}; log:\n{}",
                    read_log(log)
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "{name} does not listen on port {port} after {START_TIMEOUT:?}; log:\n{}",
                    read_log(log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A file for a peer's standard output and error.
pub(crate) fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::File::create(path).expect("a log file for the peer");
    let second = file.try_clone().expect("a second handle on the log file");
    (Stdio::from(file), Stdio::from(second))
}

/// The reference C-FIND: DCMTK's `findscu` in the Study Root model (calling AE title
/// `FINDSCU`) to 127.0.0.1:`port`, at `level` (`PATIENT`, `STUDY`, `SERIES`, `IMAGE`), with
/// `keys` as findscu's `-k` takes them (`PatientID=PID-1` to match, `StudyDate` to ask
/// for a value). Returns every response's identifier, in the order received.
///
/// Panics, with findscu's output, unless the final response has status Success.
pub fn findscu(port: u16, called_ae: &str, level: &str, keys: &[&str]) -> Vec<DicomInstance> {
    let out = tempfile::tempdir().expect("a temporary directory for findscu's responses");
    let mut command = crate::dcmtk("findscu");
    command
        .args(["-v", "-S", "-X", "-od"])
        .arg(out.path())
        .args(["-aec", called_ae, "-k"])
        .arg(format!("QueryRetrieveLevel={level}"));
    for key in keys {
        command.args(["-k", key]);
    }
    command.args(["127.0.0.1", &port.to_string()]);
    let (output, text) = crate::run(command);
    assert!(
        output.status.success() && text.contains("Received Final Find Response (Success)"),
        "findscu to {called_ae} on port {port} failed: {text}"
    );
    // rsp0001.dcm, rsp0002.dcm...: the names sort in the order received.
    let mut files = crate::files_under(out.path());
    files.sort();
    files
        .iter()
        .map(|file| {
            dicom_object::open_file(file).unwrap_or_else(|e| {
                panic!("findscu's response {} does not parse: {e}", file.display())
            })
        })
        .collect()
}

/// A study as the reference C-FIND found it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FoundStudy {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Study Date (YYYYMMDD), if the peer has one.
    pub study_date: Option<String>,
}

/// The studies of a patient according to the reference C-FIND ([`findscu`]) at STUDY
/// level, with `PatientID=patient_id`; sorted by Study Instance UID.
pub fn findscu_studies(port: u16, called_ae: &str, patient_id: &str) -> Vec<FoundStudy> {
    let patient = format!("PatientID={patient_id}");
    let keys = [patient.as_str(), "StudyInstanceUID", "StudyDate"];
    let mut studies: Vec<FoundStudy> = findscu(port, called_ae, "STUDY", &keys)
        .iter()
        .map(|response| FoundStudy {
            study_instance_uid: value_of(response, tags::STUDY_INSTANCE_UID)
                .expect("a C-FIND response at STUDY level has a Study Instance UID"),
            study_date: value_of(response, tags::STUDY_DATE),
        })
        .collect();
    studies.sort();
    studies
}

/// One synthetic study of `patient` on `date`: `count` instances of `modality` (8×8).
pub fn study(patient: &str, modality: &str, date: &str, count: u32) -> Vec<DicomInstance> {
    let series = match modality {
        "MR" => SyntheticSeries::mr(patient, count),
        _ => SyntheticSeries::ct(patient, count),
    };
    let mut instances = series.size(8, 8).build().expect("synthetic series");
    for instance in &mut instances {
        instance.put(DataElement::new(tags::STUDY_DATE, VR::DA, date));
    }
    instances
}

/// The StudyInstanceUID of the first instance.
pub fn study_uid(instances: &[DicomInstance]) -> String {
    value_of(&instances[0], tags::STUDY_INSTANCE_UID).expect("a study UID")
}

/// Writes instances as Part-10 files into `dir`.
pub fn write_files(dir: &Path, instances: &[DicomInstance]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    instances
        .iter()
        .map(|i| {
            let path = dir.join(format!(
                "{}.dcm",
                i.meta()
                    .media_storage_sop_instance_uid()
                    .trim_end_matches('\0')
            ));
            i.write_to_file(&path).unwrap();
            path
        })
        .collect()
}

/// Sends files to 127.0.0.1:`port` with DCMTK's storescu.
pub fn storescu(port: u16, called: &str, files: &[PathBuf]) {
    let mut command = dcmtk("storescu");
    command.args(["-aec", called, "127.0.0.1", &port.to_string()]);
    command.args(files);
    let (output, text) = run(command);
    assert!(output.status.success(), "storescu failed: {text}");
}
