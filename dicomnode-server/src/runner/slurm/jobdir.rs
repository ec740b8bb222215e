//! A Slurm job is a directory on a file system the cluster's nodes share: the job as a
//! local child gets it (`job.bin`, one frame), the instances as Part-10 files, a script
//! that runs the node's own binary in child mode on it, and what the job writes back (its
//! messages in `events.bin`, its stdout and stderr).
//!
//! The node reads what the job writes while it runs: new complete frames of `events.bin`
//! and new complete lines of its output, each time it looks.

use super::super::wire::{read_frame, ChildMessage, Job, JobInput, JobInstance, MAX_CHILD_FRAME};
use super::super::{unix_micros, CHILD_ENV, EVENTS_FILE, JOB_DIR_ENV, JOB_FILE};
use crate::retrieve::{InstanceSink, Part10Files};
use crate::storage::names::input_dir_name;
use crate::storage::{InstanceData, PatientBatch};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The script `sbatch` runs.
pub(crate) const SCRIPT_FILE: &str = "job.sh";
/// The job's standard output and error.
pub(crate) const STDOUT_FILE: &str = "stdout.txt";
pub(crate) const STDERR_FILE: &str = "stderr.txt";
/// The SOP Instance UIDs the job was given, one per line, sorted.
pub(crate) const INSTANCES_FILE: &str = "instances.txt";

/// What a job directory is made from.
pub(crate) struct JobSource<'a> {
    pub(crate) batch: &'a PatientBatch,
    pub(crate) pipeline: &'a [u8],
    pub(crate) pipeline_name: &'a str,
    pub(crate) exe: &'a Path,
}

/// The SOP Instance UIDs of a batch, sorted, one per line.
pub(crate) fn instance_list(batch: &PatientBatch) -> String {
    batch
        .instance_uids()
        .iter()
        .map(|u| format!("{u}\n"))
        .collect()
}

/// Quotes a value for a POSIX shell.
fn shell_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Makes the job's directory `dir` (anew, if a crash left one): instances, job, script.
pub(crate) fn prepare(dir: &Path, source: &JobSource<'_>) -> io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let batch = source.batch;
    let mut files: Vec<Vec<String>> = Vec::with_capacity(batch.inputs.len());
    for (input, instances) in &batch.inputs {
        let input_dir = dir.join("instances").join(input_dir_name(input));
        std::fs::create_dir_all(&input_dir)?;
        let mut paths = Vec::with_capacity(instances.len());
        for instance in instances {
            let target = match (&instance.data, batch.file_of(input, instance)) {
                (InstanceData::Disk, Some(file)) => {
                    let target = input_dir.join(instance.file_name());
                    // A link when the job directory shares the data directory's file
                    // system; a copy otherwise.
                    if std::fs::hard_link(&file, &target).is_err() {
                        std::fs::copy(&file, &target)?;
                    }
                    target
                }
                (InstanceData::Memory(bytes), _) => {
                    let mut sink = Part10Files::new(&input_dir);
                    sink.begin(
                        &instance.sop_class_uid,
                        &instance.sop_instance_uid,
                        &instance.transfer_syntax,
                    )
                    .and_then(|()| sink.data(bytes.to_vec()))
                    .and_then(|()| sink.end())
                    .map_err(io::Error::other)?;
                    input_dir.join(format!(
                        "{}.dcm",
                        dicomnode_core::sanitize::path_component(&instance.sop_instance_uid)
                    ))
                }
                (InstanceData::Disk, None) => {
                    return Err(io::Error::other(format!(
                        "instance {} is on disk but its batch has no directory",
                        instance.sop_instance_uid
                    )))
                }
            };
            paths.push(target.to_string_lossy().into_owned());
        }
        files.push(paths);
    }
    let work_root = dir.to_string_lossy().into_owned();
    let job = Job {
        pipeline: source.pipeline,
        patient_key: &batch.patient_key,
        origin: batch.origin.clone(),
        work_root: &work_root,
        triggered_at_us: unix_micros(batch.triggered_at),
        inputs: batch
            .inputs
            .iter()
            .zip(&files)
            .map(|((name, instances), paths)| JobInput {
                name,
                instances: instances
                    .iter()
                    .zip(paths)
                    .map(|(i, path)| JobInstance {
                        sop_class_uid: &i.sop_class_uid,
                        sop_instance_uid: &i.sop_instance_uid,
                        transfer_syntax: &i.transfer_syntax,
                        dataset: &[],
                        file: Some(path.clone()),
                    })
                    .collect(),
            })
            .collect(),
        priors: batch.priors.clone(),
    };
    let encoded = postcard::to_allocvec(&job).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(encoded.len() + 4);
    super::super::wire::write_frame(&mut frame, &encoded)?;
    std::fs::write(dir.join(JOB_FILE), frame)?;
    std::fs::write(dir.join(INSTANCES_FILE), instance_list(batch))?;
    let script = format!(
        "#!/bin/sh\n\
         # A dicomnode job: the node's own binary, in child mode, runs the job in this\n\
         # directory and appends its messages to {EVENTS_FILE}.\n\
         export {CHILD_ENV}={}\n\
         export {JOB_DIR_ENV}={}\n\
         exec {}\n",
        shell_quoted(source.pipeline_name),
        shell_quoted(&dir.to_string_lossy()),
        shell_quoted(&source.exe.to_string_lossy()),
    );
    let script_path = dir.join(SCRIPT_FILE);
    std::fs::write(&script_path, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The messages a job appends to its events file, read as they come.
pub(crate) struct Events {
    path: PathBuf,
    offset: u64,
    broken: bool,
}

impl Events {
    pub(crate) fn new(dir: &Path) -> Self {
        Events {
            path: dir.join(EVENTS_FILE),
            offset: 0,
            broken: false,
        }
    }

    /// The messages whose frames are complete now and were not read before.
    pub(crate) fn read_new(&mut self) -> Vec<ChildMessage> {
        if self.broken {
            return Vec::new();
        }
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        let mut messages = Vec::new();
        let mut at = 0usize;
        while bytes.len() - at >= 4 {
            let mut len = [0u8; 4];
            len.copy_from_slice(&bytes[at..at + 4]);
            let len = u32::from_le_bytes(len) as usize;
            if len > MAX_CHILD_FRAME {
                tracing::warn!(file = %self.path.display(), len, "a frame in the job's events is too large: the rest is not read");
                self.broken = true;
                break;
            }
            if bytes.len() - at - 4 < len {
                // Not all written yet.
                break;
            }
            match read_frame(&bytes[at..], MAX_CHILD_FRAME) {
                Ok(Some(frame)) => match postcard::from_bytes::<ChildMessage>(&frame) {
                    Ok(message) => messages.push(message),
                    Err(error) => {
                        tracing::warn!(%error, "an unreadable message in the job's events");
                    }
                },
                _ => break,
            }
            at += 4 + len;
        }
        self.offset += at as u64;
        messages
    }
}

/// New complete lines of a file a job writes (its stdout or stderr).
pub(crate) struct Lines {
    path: PathBuf,
    offset: u64,
}

/// A line longer than this is cut.
const MAX_LINE: usize = 8 * 1024;

impl Lines {
    pub(crate) fn new(path: PathBuf) -> Self {
        Lines { path, offset: 0 }
    }

    /// The complete lines written since the last call; with `all`, also an unfinished
    /// last line (the job is over).
    pub(crate) fn read_new(&mut self, all: bool) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        // At most 4 MiB a look: a job that prints a lot is read over several looks.
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.take(4 << 20).read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        // A line longer than a look is taken as it is.
        let end = if all || (complete == 0 && bytes.len() >= 4 << 20) {
            bytes.len()
        } else {
            complete
        };
        self.offset += end as u64;
        String::from_utf8_lossy(&bytes[..end])
            .lines()
            .map(|l| l.chars().take(MAX_LINE).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::wire::{write_frame, LogRecord};
    use super::*;
    use std::io::Write;

    fn frame(message: &ChildMessage) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, &postcard::to_allocvec(message).unwrap()).unwrap();
        out
    }

    #[test]
    fn frames_are_read_once_and_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let record = |text: &str| {
            ChildMessage::Log(LogRecord {
                level: 2,
                target: "t".into(),
                message: text.into(),
                fields: String::new(),
            })
        };
        let (one, two) = (frame(&record("one")), frame(&record("two")));
        let mut file = std::fs::File::create(dir.path().join(EVENTS_FILE)).unwrap();
        let mut events = Events::new(dir.path());
        assert!(events.read_new().is_empty(), "no file yet is nothing");
        file.write_all(&one).unwrap();
        file.write_all(&two[..5]).unwrap();
        let read = events.read_new();
        assert_eq!(read.len(), 1);
        assert!(matches!(&read[0], ChildMessage::Log(r) if r.message == "one"));
        assert!(events.read_new().is_empty(), "half a frame waits");
        file.write_all(&two[5..]).unwrap();
        let read = events.read_new();
        assert!(matches!(&read[..], [ChildMessage::Log(r)] if r.message == "two"));
    }

    #[test]
    fn lines_wait_for_their_end_unless_the_job_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STDOUT_FILE);
        let mut file = std::fs::File::create(&path).unwrap();
        let mut lines = Lines::new(path);
        file.write_all(b"first\nsec").unwrap();
        assert_eq!(lines.read_new(false), ["first"]);
        assert!(lines.read_new(false).is_empty());
        file.write_all(b"ond").unwrap();
        assert_eq!(lines.read_new(true), ["second"]);
    }

    #[test]
    fn values_are_quoted_for_the_shell() {
        assert_eq!(shell_quoted("a b"), "'a b'");
        assert_eq!(shell_quoted("it's"), r"'it'\''s'");
    }
}
