//! Global positions and per-stream revisions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A place in the global `$all` order. Positions grow in commit order; the first stored
/// event has a position of at least 1, and [`Position::START`] (0) means "before
/// everything". Positions are not guaranteed to be contiguous: readers must never treat a
/// missing number as a lost event, only compare and resume "after" a position.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event: reading or subscribing "after START" sees everything.
    pub const START: Position = Position(0);

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({})", self.0)
    }
}

impl From<u64> for Position {
    fn from(v: u64) -> Self {
        Position(v)
    }
}

/// What the writer believes the stream's current revision is. Revisions count events in
/// one stream: the first event has revision 1, so a stream at revision `n` holds `n` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedRevision {
    /// Append whatever the stream's state (no concurrency check).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (hold at least one event).
    StreamExists,
    /// The stream's last event must have exactly this revision.
    Exact(u64),
}

impl ExpectedRevision {
    /// Whether a stream currently at `actual` (`None` = no stream) satisfies this expectation.
    pub fn matches(self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (ExpectedRevision::Any, _) => true,
            (ExpectedRevision::NoStream, None) => true,
            (ExpectedRevision::NoStream, Some(_)) => false,
            (ExpectedRevision::StreamExists, actual) => actual.is_some(),
            (ExpectedRevision::Exact(n), Some(a)) => n == a,
            (ExpectedRevision::Exact(_), None) => false,
        }
    }

    /// `Exact(n)` for `Some(n)`, `NoStream` for `None`: the expectation that the stream is
    /// still where a reader last saw it.
    pub fn from_current(current: Option<u64>) -> Self {
        match current {
            Some(n) => ExpectedRevision::Exact(n),
            None => ExpectedRevision::NoStream,
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any"),
            ExpectedRevision::NoStream => f.write_str("no stream"),
            ExpectedRevision::StreamExists => f.write_str("stream exists"),
            ExpectedRevision::Exact(n) => write!(f, "revision {n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_revision_matching() {
        use ExpectedRevision::*;
        assert!(Any.matches(None) && Any.matches(Some(3)));
        assert!(NoStream.matches(None) && !NoStream.matches(Some(1)));
        assert!(!StreamExists.matches(None) && StreamExists.matches(Some(1)));
        assert!(Exact(2).matches(Some(2)) && !Exact(2).matches(Some(3)));
        assert!(!Exact(0).matches(None));
        assert_eq!(ExpectedRevision::from_current(None), NoStream);
        assert_eq!(ExpectedRevision::from_current(Some(4)), Exact(4));
    }
}
