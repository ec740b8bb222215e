//! The node's counters, in one process-wide place: incremented where things happen
//! (associations, C-STORE answers, children), read by the HTTP listener
//! ([`crate::http`]) in the Prometheus text format. Atomics and a few short locks: never
//! a wait on the receive path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the processing time histogram's buckets.
const PROCESSING_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The node's counters and gauges.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    instances_received: AtomicU64,
    bytes_received: AtomicU64,
    store_statuses: Mutex<BTreeMap<u16, u64>>,
    associations_open: AtomicI64,
    associations_total: AtomicU64,
    children_running: AtomicI64,
    processing_buckets: [AtomicU64; PROCESSING_BUCKETS.len()],
    processing_count: AtomicU64,
    processing_sum_micros: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

/// The process's metrics.
pub(crate) fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Gauges read from the node's state when the metrics are rendered.
#[derive(Debug, Clone, Default)]
pub(crate) struct StateGauges {
    pub patients_waiting: usize,
    pub instances_waiting: usize,
    pub quarantined_batches: Option<usize>,
    pub data_dir_used_bytes: Option<u64>,
    pub data_dir_free_bytes: Option<u64>,
}

impl Metrics {
    /// Bytes of data set fragments received.
    pub(crate) fn received_bytes(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A C-STORE answered with `status`.
    pub(crate) fn store_answered(&self, status: u16) {
        if status == 0 {
            self.instances_received.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut statuses) = self.store_statuses.lock() {
            *statuses.entry(status).or_default() += 1;
        }
    }

    /// An association was established.
    pub(crate) fn association_opened(&self) {
        self.associations_open.fetch_add(1, Ordering::Relaxed);
        self.associations_total.fetch_add(1, Ordering::Relaxed);
    }

    /// An established association ended.
    pub(crate) fn association_closed(&self) {
        self.associations_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Established associations open now.
    pub(crate) fn associations_open(&self) -> i64 {
        self.associations_open.load(Ordering::Relaxed)
    }

    /// A child started (or stopped: `-1`).
    pub(crate) fn children(&self, delta: i64) {
        self.children_running.fetch_add(delta, Ordering::Relaxed);
    }

    /// A patient's processing succeeded after `took`.
    pub(crate) fn processed(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, bucket) in PROCESSING_BUCKETS.iter().zip(&self.processing_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.processing_count.fetch_add(1, Ordering::Relaxed);
        self.processing_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// A patient's processing failed for `cause` (a short word: "panicked", ...).
    pub(crate) fn failed(&self, cause: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            *failures.entry(cause.to_string()).or_default() += 1;
        }
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self, state: &StateGauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        let plain = |v: f64| vec![(String::new(), v)];
        metric(
            "dicomnode_instances_received_total",
            "counter",
            "Instances stored (C-STORE answered with success).",
            &plain(self.instances_received.load(Ordering::Relaxed) as f64),
        );
        metric(
            "dicomnode_received_bytes_total",
            "counter",
            "Bytes of data set fragments received.",
            &plain(self.bytes_received.load(Ordering::Relaxed) as f64),
        );
        let statuses: Vec<(String, f64)> = self
            .store_statuses
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(code, n)| (format!("{{status=\"0x{code:04X}\"}}"), *n as f64))
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "dicomnode_store_responses_total",
            "counter",
            "C-STORE responses sent, by status code.",
            &statuses,
        );
        metric(
            "dicomnode_associations_open",
            "gauge",
            "Established associations open now.",
            &plain(self.associations_open.load(Ordering::Relaxed) as f64),
        );
        metric(
            "dicomnode_associations_total",
            "counter",
            "Associations established.",
            &plain(self.associations_total.load(Ordering::Relaxed) as f64),
        );
        metric(
            "dicomnode_patients_waiting",
            "gauge",
            "Patients held that do not have enough yet (or wait for their turn).",
            &plain(state.patients_waiting as f64),
        );
        metric(
            "dicomnode_instances_waiting",
            "gauge",
            "Instances held for waiting patients.",
            &plain(state.instances_waiting as f64),
        );
        metric(
            "dicomnode_children_running",
            "gauge",
            "Processing children running now.",
            &plain(self.children_running.load(Ordering::Relaxed) as f64),
        );
        let mut buckets: Vec<(String, f64)> = PROCESSING_BUCKETS
            .iter()
            .zip(&self.processing_buckets)
            .map(|(bound, n)| {
                (
                    format!("_bucket{{le=\"{bound}\"}}"),
                    n.load(Ordering::Relaxed) as f64,
                )
            })
            .collect();
        let count = self.processing_count.load(Ordering::Relaxed) as f64;
        buckets.push(("_bucket{le=\"+Inf\"}".to_string(), count));
        buckets.push((
            "_sum".to_string(),
            self.processing_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ));
        buckets.push(("_count".to_string(), count));
        metric(
            "dicomnode_processing_seconds",
            "histogram",
            "Duration of successful processing attempts (the child's run and export).",
            &buckets,
        );
        let failures: Vec<(String, f64)> = self
            .failures
            .lock()
            .map(|f| {
                f.iter()
                    .map(|(cause, n)| (format!("{{cause=\"{}\"}}", escape(cause)), *n as f64))
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "dicomnode_processing_failures_total",
            "counter",
            "Failed processing attempts, by cause.",
            &failures,
        );
        // Gauges of the data directory, when there is one.
        for (name, help, value) in [
            (
                "dicomnode_quarantined_batches",
                "Batches in the data directory's quarantine.",
                state.quarantined_batches.map(|n| n as f64),
            ),
            (
                "dicomnode_data_dir_used_bytes",
                "Bytes in use on the data directory's file system.",
                state.data_dir_used_bytes.map(|n| n as f64),
            ),
            (
                "dicomnode_data_dir_free_bytes",
                "Bytes available on the data directory's file system.",
                state.data_dir_free_bytes.map(|n| n as f64),
            ),
        ] {
            if let Some(value) = value {
                metric(name, "gauge", help, &plain(value));
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::default();
        m.store_answered(0);
        m.store_answered(0xA900);
        m.processed(Duration::from_millis(300));
        m.failed("timed \"out\"");
        let text = m.render(&StateGauges::default());
        assert!(
            text.contains("dicomnode_instances_received_total 1\n"),
            "{text}"
        );
        assert!(text.contains("dicomnode_store_responses_total{status=\"0xA900\"} 1\n"));
        assert!(text.contains("dicomnode_processing_seconds_bucket{le=\"0.25\"} 0\n"));
        assert!(text.contains("dicomnode_processing_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(text.contains("dicomnode_processing_failures_total{cause=\"timed \\\"out\\\"\"} 1"));
    }
}
