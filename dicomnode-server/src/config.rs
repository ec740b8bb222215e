//! The node's settings: where it listens, who it is, how it keys patients.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a node serves. Build it with [`NodeConfig::new`] and the setters.
///
/// ```
/// use dicomnode_server::NodeConfig;
/// let config = NodeConfig::new("MY_NODE").bind("127.0.0.1:11112".parse().unwrap());
/// assert_eq!(config.ae_title, "MY_NODE");
/// ```
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's AE title; associations calling another title are rejected when
    /// `check_called_ae_title` is set.
    pub ae_title: String,
    /// The address to listen on (port 0 picks a free port; the log says which).
    pub bind: SocketAddr,
    /// Reject associations whose called AE title is not `ae_title`.
    pub check_called_ae_title: bool,
    /// The tag whose value groups instances into patients (PatientID by default).
    pub patient_key: Tag,
    /// The maximum PDU length the node accepts.
    pub max_pdu_length: u32,
    /// How long an association may stay silent before it is dropped.
    pub association_timeout: Duration,
    /// The executable re-executed for each patient (the node's own by default).
    pub worker_exe: Option<PathBuf>,
    /// Where children make their temporary working directories (the system's by default).
    pub work_root: Option<PathBuf>,
}

impl NodeConfig {
    /// Defaults: listen on 127.0.0.1:11112, check the called AE title, key on PatientID.
    pub fn new(ae_title: impl Into<String>) -> Self {
        NodeConfig {
            ae_title: ae_title.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 11112)),
            check_called_ae_title: true,
            patient_key: tags::PATIENT_ID,
            max_pdu_length: 256 * 1024,
            association_timeout: Duration::from_secs(120),
            worker_exe: None,
            work_root: None,
        }
    }

    /// Sets the listening address.
    pub fn bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Sets the tag that keys patients.
    pub fn patient_key(mut self, tag: Tag) -> Self {
        self.patient_key = tag;
        self
    }

    /// Sets where children make their working directories.
    pub fn work_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_root = Some(dir.into());
        self
    }
}
