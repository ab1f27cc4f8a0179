//! [`GroupBacklog`]: what a consumer group still has to consume (its lag).

/// What a consumer group still has to consume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBacklog {
    /// Messages not yet acknowledged by the group (in flight, delayed or waiting).
    pub pending: u64,
    /// Of those, the ones leased to a consumer right now.
    pub in_flight: u64,
}

impl GroupBacklog {
    /// A backlog from the two counts a backend's query returns.
    pub fn new(pending: u64, in_flight: u64) -> Self {
        debug_assert!(in_flight <= pending, "in-flight messages are pending too");
        GroupBacklog { pending, in_flight }
    }
}
