//! Exit codes and the one-line error message the binary prints on failure.

use std::process::ExitCode;

use runnel::connect::ConnectError;
use runnel::dead_letter::DeadLetterError;
use runnel_core::{BusError, StoreError};

use crate::commands::forward::MissingBinary;

/// Exit codes, documented in `runnel --help`.
pub const EXIT_OK: u8 = 0;
/// Anything else went wrong (the store is unreachable, an I/O error, a bug).
pub const EXIT_FAILURE: u8 = 1;
/// The input was rejected (bad arguments, invalid stream name, malformed JSON, limits,
/// an unsupported store URL), or `runnel bench` / `runnel demo` found no binary to run.
/// Nothing was written.
pub const EXIT_BAD_INPUT: u8 = 2;
/// An optimistic-concurrency conflict: the stream was not at the expected revision.
/// Nothing was written.
pub const EXIT_CONFLICT: u8 = 3;
/// What the command names does not exist (a dead-letter id, a saga instance, a
/// projection, a stream job).
pub const EXIT_NOT_FOUND: u8 = 4;
/// The command was interrupted (Ctrl-C) and says where it left off.
pub const EXIT_INTERRUPTED: u8 = 130;
/// What the command names is not in a state the command applies to (resume of a running
/// projection, skip of one not faulted). Nothing was changed.
pub const EXIT_WRONG_STATE: u8 = 5;
/// `runnel schema check` found a backward-incompatible change (each is listed).
pub const EXIT_INCOMPATIBLE: u8 = 6;

/// The exit code table for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  failure (store unreachable, I/O error, ...)
  2  bad input (invalid arguments, stream name, JSON, limits, store URL; the binary that
     bench or demo runs is not built); nothing written
  3  conflict: the stream is not at the --expected revision; nothing written
  4  not found: no dead letter, saga instance, projection or stream job of that name
  5  wrong state: the projection is not in a state the command applies to; nothing changed
  6  incompatible: `schema check` found a backward-incompatible schema change
  130 interrupted (Ctrl-C); the command printed where it left off";

/// Input the CLI refuses before (or instead of) touching the store. Exit code 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// What the command names does not exist (a saga instance). Exit code 4.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// `schema check` found backward-incompatible changes (already listed). Exit code 6.
#[derive(Debug)]
pub struct Incompatible(pub usize);

impl std::fmt::Display for Incompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} backward-incompatible schema change(s)", self.0)
    }
}

impl std::error::Error for Incompatible {}

/// Ctrl-C ended the command after it saved where it was. Exit code 130.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Writing to stdout failed because the reader went away (`runnel … | head`): not an
/// error worth a message.
#[derive(Debug)]
pub struct BrokenPipe;

impl std::fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for BrokenPipe {}

/// The exit code for an error: the first typed cause in the chain decides.
pub fn code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<BadInput>() || cause.is::<MissingBinary>() {
            return EXIT_BAD_INPUT;
        }
        if cause.is::<NotFound>() {
            return EXIT_NOT_FOUND;
        }
        if cause.is::<Incompatible>() {
            return EXIT_INCOMPATIBLE;
        }
        if let Some(e) = cause.downcast_ref::<runnel::catalog::SnapshotError>() {
            return if e.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILURE
            };
        }
        if cause.is::<Interrupted>() {
            return EXIT_INTERRUPTED;
        }
        if let Some(e) = cause.downcast_ref::<runnel::projection::admin::AdminError>() {
            match e {
                runnel::projection::admin::AdminError::Unknown(_) => return EXIT_NOT_FOUND,
                runnel::projection::admin::AdminError::WrongState { .. } => {
                    return EXIT_WRONG_STATE
                }
                // The store error next in the chain decides.
                _ => {}
            }
        }
        if cause.downcast_ref::<BrokenPipe>().is_some() {
            return EXIT_OK;
        }
        if let Some(e) = cause.downcast_ref::<ConnectError>() {
            if e.is_bad_input() {
                return EXIT_BAD_INPUT;
            }
            // A server that could not be reached: its typed cause, next in the chain,
            // decides (a failure, unless it says otherwise).
            continue;
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return store_error_code(e);
        }
        if let Some(e) = cause.downcast_ref::<DeadLetterError>() {
            match e {
                DeadLetterError::NotFound(_) => return EXIT_NOT_FOUND,
                DeadLetterError::InvalidArgument(_) => return EXIT_BAD_INPUT,
                // The bus or the store failed part-way: a failure, whatever the cause.
                DeadLetterError::ReplayInterrupted { .. } => return EXIT_FAILURE,
                // The store error next in the chain decides.
                _ => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<BusError>() {
            return bus_error_code(e);
        }
    }
    EXIT_FAILURE
}

fn store_error_code(e: &StoreError) -> u8 {
    match e {
        StoreError::Conflict { .. } => EXIT_CONFLICT,
        StoreError::InvalidStreamName { .. }
        | StoreError::InvalidEvent { .. }
        | StoreError::PayloadTooLarge { .. }
        | StoreError::TooManyEvents { .. }
        | StoreError::EmptyAppend
        | StoreError::DuplicateEventId { .. }
        | StoreError::InvalidMessage { .. }
        | StoreError::InvalidArgument(_) => EXIT_BAD_INPUT,
        _ => EXIT_FAILURE,
    }
}

fn bus_error_code(e: &BusError) -> u8 {
    match e {
        BusError::InvalidName { .. }
        | BusError::InvalidMessage { .. }
        | BusError::PayloadTooLarge { .. }
        | BusError::TooManyMessages { .. }
        | BusError::InvalidArgument(_)
        | BusError::EarliestUnavailable { .. } => EXIT_BAD_INPUT,
        _ => EXIT_FAILURE,
    }
}

/// The whole error chain on one line: `outer: inner: root`.
pub fn one_line(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Prints `error: …` to stderr (unless the failure was a closed stdout) and returns the
/// exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    let code = code_for(error);
    if code != EXIT_OK {
        eprintln!("error: {}", one_line(error));
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::ExpectedRevision;

    #[test]
    fn conflicts_bad_input_and_failures_get_distinct_codes() {
        let conflict = anyhow::Error::new(StoreError::Conflict {
            stream: "Order-1".into(),
            expected: ExpectedRevision::Exact(3),
            actual: Some(4),
        });
        assert_eq!(code_for(&conflict), EXIT_CONFLICT);
        assert_eq!(
            one_line(&conflict),
            "conflict on stream Order-1: expected revision 3, but the stream is at revision 4"
        );
        let bad = anyhow::Error::new(BadInput("nope".into())).context("reading --data");
        assert_eq!(code_for(&bad), EXIT_BAD_INPUT);
        assert_eq!(one_line(&bad), "reading --data: nope");
        let down = anyhow::Error::new(StoreError::Unavailable("disk\ngone".into()));
        assert_eq!(code_for(&down), EXIT_FAILURE);
        assert!(!one_line(&down).contains('\n'));
        assert_eq!(code_for(&anyhow::anyhow!("other")), EXIT_FAILURE);
    }

    #[test]
    fn bus_and_dead_letter_errors_get_their_codes() {
        use runnel::core::dead_letter::DeadLetterId;
        let missing = anyhow::Error::new(DeadLetterError::NotFound(DeadLetterId(9)));
        assert_eq!(code_for(&missing), EXIT_NOT_FOUND);
        let bad_topic = anyhow::Error::new(runnel_core::TopicName::new("a b").unwrap_err());
        assert_eq!(code_for(&bad_topic), EXIT_BAD_INPUT);
        let down = anyhow::Error::new(DeadLetterError::Store(StoreError::Unavailable("x".into())));
        assert_eq!(code_for(&down), EXIT_FAILURE);
        let bad_letter = anyhow::Error::new(DeadLetterError::Store(StoreError::InvalidMessage {
            id: String::new(),
            reason: "no id".into(),
        }));
        assert_eq!(code_for(&bad_letter), EXIT_BAD_INPUT);
        let no_instance = anyhow::Error::new(NotFound("no saga instance \"o-1\"".into()));
        assert_eq!(code_for(&no_instance), EXIT_NOT_FOUND);
    }
}
