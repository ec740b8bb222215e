//! How often, and how patiently, something that failed is tried again.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Attempts and backoff: sending an output again after a transient failure, or processing
/// a patient again after a failed attempt (`NodeConfig::failure`).
///
/// ```
/// use dicomnode_core::RetryPolicy;
/// use std::time::Duration;
/// let policy = RetryPolicy::new(4, Duration::from_secs(1));
/// assert_eq!(policy.wait_after(1), Duration::from_secs(1));
/// assert_eq!(policy.wait_after(3), Duration::from_secs(4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1 is made).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub first_backoff: Duration,
}

impl RetryPolicy {
    /// `attempts` in all, waiting `first_backoff` before the second, doubling after.
    pub fn new(attempts: u32, first_backoff: Duration) -> Self {
        RetryPolicy {
            attempts,
            first_backoff,
        }
    }

    /// Attempts in all, at least 1.
    pub fn attempts(&self) -> u32 {
        self.attempts.max(1)
    }

    /// How long to wait after failed attempt number `failed` (1 for the first) before the
    /// next: `first_backoff`, doubled for each attempt after the first (at most 2^16 times
    /// the first backoff, however many attempts failed).
    pub fn wait_after(&self, failed: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1 << failed.saturating_sub(1).min(16))
    }
}
