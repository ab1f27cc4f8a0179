//! Window definitions: which windows a record's event time falls in, and when each closes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Millis, StreamError};

/// Longest window, gap, grace or correction period: 366 days.
pub const WINDOW_SPAN_MAX: Duration = Duration::from_secs(366 * 24 * 3600);
/// Most windows one record may fall in (a hopping window's size over its advance).
pub const HOPS_MAX: i64 = 1000;

/// A window's bounds: `[start, end)` in event-time milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowBounds {
    /// First millisecond in the window.
    pub start: Millis,
    /// First millisecond after it.
    pub end: Millis,
}

/// When results leave a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Emit {
    /// The running result on every change (a window's last update is its result).
    OnUpdate,
    /// Only the final result, once, when the window closes (watermark past end + grace).
    #[default]
    OnClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Fixed-size, non-overlapping, aligned to the epoch.
    Tumbling { size: Millis },
    /// Fixed-size windows starting every `advance`.
    Hopping { size: Millis, advance: Millis },
    /// For every distinct event time `t` of a key, the window `(t - size, t]`: the
    /// aggregate of the key's last `size` of event time as of each record.
    Sliding { size: Millis },
    /// Activity separated by gaps of at least `gap`: `[first, last + gap)`.
    Session { gap: Millis },
}

/// A window: its shape, grace and correction period.
///
/// ```
/// use std::time::Duration;
/// use runnel::stream::WindowSpec;
/// let w = WindowSpec::hopping(Duration::from_secs(10), Duration::from_secs(2))
///     .grace(Duration::from_secs(1));
/// assert_eq!(w.windows_of(11_000).len(), 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub(crate) kind: Kind,
    pub(crate) grace: Millis,
    pub(crate) retain: Option<Millis>,
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl WindowSpec {
    fn new(kind: Kind) -> Self {
        WindowSpec {
            kind,
            grace: 0,
            retain: None,
        }
    }

    /// Back-to-back windows of `size`, aligned to the Unix epoch.
    pub fn tumbling(size: Duration) -> Self {
        Self::new(Kind::Tumbling { size: millis(size) })
    }

    /// Windows of `size` starting every `advance` (a record falls in `size / advance`).
    pub fn hopping(size: Duration, advance: Duration) -> Self {
        Self::new(Kind::Hopping {
            size: millis(size),
            advance: millis(advance),
        })
    }

    /// For each record, the window of the key's records in the `size` of event time up to
    /// and including it: `(t - size, t]`.
    pub fn sliding(size: Duration) -> Self {
        Self::new(Kind::Sliding { size: millis(size) })
    }

    /// Sessions of activity closed by `gap` of inactivity.
    pub fn session(gap: Duration) -> Self {
        Self::new(Kind::Session { gap: millis(gap) })
    }

    /// How long after its end (in event time, on the watermark) a window still accepts
    /// records. Default 0.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }

    /// Keep each closed window's result for `period` more of event time, so a late record
    /// within it emits a retraction of the emitted result and the amended one (tumbling
    /// and hopping windows). The late record still goes to the late output as well.
    pub fn corrections(mut self, period: Duration) -> Self {
        self.retain = Some(millis(period));
        self
    }

    pub(crate) fn validate(&self) -> Result<(), StreamError> {
        let max = millis(WINDOW_SPAN_MAX);
        let bad = |what: &str, v: Millis| {
            Err(StreamError::Definition(format!(
                "window {what} is {v} ms; it must be between 1 ms and {max} ms"
            )))
        };
        match self.kind {
            Kind::Tumbling { size } | Kind::Sliding { size } if !(1..=max).contains(&size) => {
                return bad("size", size)
            }
            Kind::Session { gap } if !(1..=max).contains(&gap) => return bad("gap", gap),
            Kind::Hopping { size, advance } => {
                if !(1..=max).contains(&size) {
                    return bad("size", size);
                }
                if !(1..=size).contains(&advance) {
                    return Err(StreamError::Definition(format!(
                        "hopping window advance is {advance} ms; it must be between 1 ms and the size ({size} ms)"
                    )));
                }
                if size / advance > HOPS_MAX {
                    return Err(StreamError::Definition(format!(
                        "hopping window of {size} ms every {advance} ms puts each record in {} windows; the limit is {HOPS_MAX}",
                        size / advance
                    )));
                }
            }
            _ => {}
        }
        if !(0..=max).contains(&self.grace) {
            return bad("grace", self.grace);
        }
        if let Some(r) = self.retain {
            if !(0..=max).contains(&r) {
                return bad("correction period", r);
            }
            if matches!(self.kind, Kind::Session { .. } | Kind::Sliding { .. }) {
                return Err(StreamError::Definition(
                    "corrections are for tumbling and hopping windows".into(),
                ));
            }
        }
        Ok(())
    }

    /// The fixed windows (tumbling, hopping) event time `t` falls in, oldest first. Empty
    /// for sliding and session windows, which depend on the other records.
    pub fn windows_of(&self, t: Millis) -> Vec<WindowBounds> {
        match self.kind {
            Kind::Tumbling { size } => {
                let start = t.div_euclid(size) * size;
                vec![WindowBounds {
                    start,
                    end: start.saturating_add(size),
                }]
            }
            Kind::Hopping { size, advance } => {
                let last = t.div_euclid(advance) * advance;
                let mut out = Vec::new();
                let mut start = last;
                while start > t.saturating_sub(size) {
                    out.push(WindowBounds {
                        start,
                        end: start.saturating_add(size),
                    });
                    start -= advance;
                }
                out.reverse();
                out
            }
            Kind::Sliding { .. } | Kind::Session { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_align_to_the_epoch_including_before_it() {
        let w = WindowSpec::tumbling(Duration::from_millis(10));
        assert_eq!(w.windows_of(25), vec![WindowBounds { start: 20, end: 30 }]);
        assert_eq!(w.windows_of(-1), vec![WindowBounds { start: -10, end: 0 }]);
        assert_eq!(w.windows_of(20), vec![WindowBounds { start: 20, end: 30 }]);
    }

    #[test]
    fn hopping_windows_hold_every_window_containing_the_time() {
        let w = WindowSpec::hopping(Duration::from_millis(10), Duration::from_millis(5));
        assert_eq!(
            w.windows_of(12),
            vec![
                WindowBounds { start: 5, end: 15 },
                WindowBounds { start: 10, end: 20 }
            ]
        );
        assert_eq!(
            w.windows_of(10),
            vec![
                WindowBounds { start: 5, end: 15 },
                WindowBounds { start: 10, end: 20 }
            ]
        );
    }

    #[test]
    fn bad_windows_are_refused() {
        assert!(WindowSpec::tumbling(Duration::ZERO).validate().is_err());
        assert!(
            WindowSpec::hopping(Duration::from_millis(10), Duration::from_millis(20))
                .validate()
                .is_err()
        );
        assert!(
            WindowSpec::hopping(Duration::from_secs(100), Duration::from_millis(1))
                .validate()
                .is_err()
        );
        assert!(WindowSpec::session(Duration::from_secs(1))
            .corrections(Duration::from_secs(1))
            .validate()
            .is_err());
    }
}
