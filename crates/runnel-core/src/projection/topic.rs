//! Projections fed from a bus topic instead of `$all`. A topic has no position to check
//! against, so exactly-once rests on a per-projection inbox: each message's id is recorded
//! in the same transaction as the read-model rows it writes
//! ([`ProjectionStore::commit_message`](super::ProjectionStore::commit_message)), and a
//! redelivered message finds its id there and writes nothing.
//!
//! The inbox is bounded: it keeps the ids of the last [`MessageCommit::inbox_keep`]
//! messages each projection applied ([`TOPIC_INBOX_KEEP_DEFAULT`]). A duplicate that arrives
//! after that many newer messages were applied is applied again — far beyond any broker's
//! redelivery window, and the bound that keeps the table from growing forever.

use crate::error::StoreError;
use crate::outbox::OutboxMessage;

use super::{validate_identifier, Statement, BATCH_STATEMENTS_MAX};

/// Default number of message ids a topic projection's inbox keeps.
pub const TOPIC_INBOX_KEEP_DEFAULT: u64 = 100_000;
/// Largest inbox a topic projection may keep.
pub const TOPIC_INBOX_KEEP_MAX: u64 = 100_000_000;
/// Longest message id the inbox records, in bytes (a message id's own limit).
pub const TOPIC_MESSAGE_ID_LEN_MAX: usize = 256;
/// Longest topic or group name a topic source records, in bytes.
pub const TOPIC_SOURCE_NAME_LEN_MAX: usize = 256;

/// Where a topic projection reads: a topic, as a consumer group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSource {
    /// The projection.
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// The consumer group it reads it as.
    pub group: String,
}

/// One message's read-model writes, committed with the message's id in the projection's
/// inbox, or not at all.
#[derive(Clone, Debug)]
pub struct MessageCommit {
    /// The projection.
    pub name: String,
    /// The generation written to (its tables, its `events_applied`).
    pub version: u32,
    /// The message's id (CloudEvents `id`): the inbox key.
    pub message_id: String,
    /// The read-model writes, `{table}` placeholders unresolved.
    pub statements: Vec<Statement>,
    /// Messages to send through the outbox in the same transaction.
    pub outbox: Vec<OutboxMessage>,
    /// How many of the projection's newest message ids the inbox keeps after this commit
    /// (older ones are deleted in the same transaction).
    pub inbox_keep: u64,
}

/// What [`ProjectionStore::commit_message`](super::ProjectionStore::commit_message) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageOutcome {
    /// The writes and the inbox row committed together.
    Committed,
    /// The inbox holds the message's id already: nothing was written. Acknowledge it.
    Duplicate,
    /// A statement failed (the handler's SQL): nothing was written, the id is not recorded.
    StatementFailed { index: usize, error: String },
    /// The generation is retired (a newer version of the projection is current): nothing
    /// was written. Hand the message back, for a process running the newer code.
    Retired,
}

/// Checks a topic source: a valid projection name, and non-empty topic and group names.
pub fn validate_topic_source(source: &TopicSource) -> Result<(), StoreError> {
    validate_identifier("projection name", &source.name)?;
    for (what, value) in [("topic", &source.topic), ("group", &source.group)] {
        if value.is_empty() || value.len() > TOPIC_SOURCE_NAME_LEN_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "a topic projection's {what} must be 1..={TOPIC_SOURCE_NAME_LEN_MAX} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks a message commit: a valid name, a message id the inbox can hold, a bounded
/// number of statements and a bounded inbox.
pub fn validate_message_commit(commit: &MessageCommit) -> Result<(), StoreError> {
    validate_identifier("projection name", &commit.name)?;
    if commit.message_id.is_empty() || commit.message_id.len() > TOPIC_MESSAGE_ID_LEN_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a message id must be 1..={TOPIC_MESSAGE_ID_LEN_MAX} bytes"
        )));
    }
    if commit.statements.len() > BATCH_STATEMENTS_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a message carries {} statements; at most {BATCH_STATEMENTS_MAX}",
            commit.statements.len()
        )));
    }
    if commit.inbox_keep == 0 || commit.inbox_keep > TOPIC_INBOX_KEEP_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a topic projection's inbox keeps 1..={TOPIC_INBOX_KEEP_MAX} message ids"
        )));
    }
    Ok(())
}

/// The error a rebuild of a topic projection is refused with.
pub fn rebuild_refused(source: &TopicSource) -> StoreError {
    StoreError::InvalidArgument(format!(
        "projection {} reads topic {} (group {}): a topic cannot be replayed from its start, \
         so it cannot be rebuilt; raise its version for new tables that fill from new \
         messages, or make it a projection of $all to rebuild it from history",
        source.name, source.topic, source.group
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> MessageCommit {
        MessageCommit {
            name: "totals".into(),
            version: 1,
            message_id: "m-1".into(),
            statements: vec![],
            outbox: vec![],
            inbox_keep: TOPIC_INBOX_KEEP_DEFAULT,
        }
    }

    #[test]
    fn message_commits_are_bounded() {
        assert!(validate_message_commit(&commit()).is_ok());
        let empty_id = MessageCommit {
            message_id: String::new(),
            ..commit()
        };
        assert!(validate_message_commit(&empty_id).is_err());
        let long_id = MessageCommit {
            message_id: "x".repeat(TOPIC_MESSAGE_ID_LEN_MAX + 1),
            ..commit()
        };
        assert!(validate_message_commit(&long_id).is_err());
        let no_inbox = MessageCommit {
            inbox_keep: 0,
            ..commit()
        };
        assert!(validate_message_commit(&no_inbox).is_err());
        let bad_name = MessageCommit {
            name: "Totals".into(),
            ..commit()
        };
        assert!(validate_message_commit(&bad_name).is_err());
    }

    #[test]
    fn topic_sources_need_names() {
        let ok = TopicSource {
            name: "totals".into(),
            topic: "orders".into(),
            group: "projection-totals".into(),
        };
        assert!(validate_topic_source(&ok).is_ok());
        let no_topic = TopicSource {
            topic: String::new(),
            ..ok.clone()
        };
        assert!(validate_topic_source(&no_topic).is_err());
        assert!(rebuild_refused(&ok)
            .to_string()
            .contains("cannot be rebuilt"));
    }
}
