//! When the repository takes a snapshot.

use std::num::NonZeroU64;

/// When the [`crate::Repository`] saves a snapshot after a successful append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// Never: every load replays the whole stream.
    #[default]
    Never,
    /// Whenever the stream's revision crosses a multiple of this many events.
    EveryEvents(NonZeroU64),
}

impl SnapshotPolicy {
    /// Every `n` events; `0` means never.
    pub fn every(n: u64) -> Self {
        match NonZeroU64::new(n) {
            Some(n) => SnapshotPolicy::EveryEvents(n),
            None => SnapshotPolicy::Never,
        }
    }

    /// Whether an append that moved the stream from revision `before` (`None`: no stream)
    /// to `after` calls for a snapshot. One append may add several events, so the test is
    /// "a multiple of n lies in `(before, after]`", not "`after` is a multiple of n".
    pub fn should_snapshot(self, before: Option<u64>, after: u64) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::EveryEvents(n) => {
                let n = n.get();
                after / n > before.unwrap_or(0) / n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_when_the_revision_crosses_a_multiple() {
        let p = SnapshotPolicy::every(3);
        assert!(!p.should_snapshot(None, 2));
        assert!(p.should_snapshot(Some(2), 3));
        assert!(p.should_snapshot(Some(2), 4));
        assert!(!p.should_snapshot(Some(3), 5));
        assert!(p.should_snapshot(None, 7));
        assert!(!SnapshotPolicy::every(0).should_snapshot(None, 1000));
    }
}
