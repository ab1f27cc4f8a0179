//! Exit codes and the one-line error message on failure: the same codes as the `runnel`
//! binary's for the failures a benchmark can meet.

use std::process::ExitCode;

use runnel::connect::ConnectError;
use runnel_core::StoreError;

/// Success, or stdout closed by its reader.
const EXIT_OK: u8 = 0;
/// The benchmark failed (a database unreachable, an I/O error, a bug).
const EXIT_FAILURE: u8 = 1;
/// The flags were refused (out of range, an unsupported store URL); nothing was measured.
pub const EXIT_BAD_INPUT: u8 = 2;

/// The exit code table for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  failure (database unreachable, I/O error, ...)
  2  bad input (invalid arguments or store URL); nothing measured";

/// Flags refused before anything is measured. Exit code 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Writing to stdout failed because the reader went away (`runnel-bench … | head`): not
/// an error worth a message.
#[derive(Debug)]
pub struct BrokenPipe;

impl std::fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for BrokenPipe {}

/// The exit code for an error: the first typed cause in the chain decides.
fn code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<BadInput>() {
            return EXIT_BAD_INPUT;
        }
        if cause.is::<BrokenPipe>() {
            return EXIT_OK;
        }
        if let Some(e) = cause.downcast_ref::<ConnectError>() {
            if e.is_bad_input() {
                return EXIT_BAD_INPUT;
            }
        }
        // A PostgreSQL URL parameter the store refuses.
        if let Some(StoreError::InvalidArgument(_)) = cause.downcast_ref::<StoreError>() {
            return EXIT_BAD_INPUT;
        }
    }
    EXIT_FAILURE
}

/// Prints `error: …` (the whole chain on one line) to stderr, unless the failure was a
/// closed stdout, and returns the exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    let code = code_for(error);
    if code != EXIT_OK {
        let text = format!("{error:#}");
        eprintln!(
            "error: {}",
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_flags_and_urls_exit_2_other_failures_1() {
        let bad = anyhow::Error::new(BadInput("--seconds must be in (0, 600]".into()));
        assert_eq!(code_for(&bad), EXIT_BAD_INPUT);
        let url = anyhow::Error::new(StoreError::InvalidArgument("pool_size".into()));
        assert_eq!(code_for(&url.context("bench store")), EXIT_BAD_INPUT);
        let closed = anyhow::Error::new(BrokenPipe);
        assert_eq!(code_for(&closed), EXIT_OK);
        let down = anyhow::Error::new(StoreError::Unavailable("gone".into()));
        assert_eq!(code_for(&down), EXIT_FAILURE);
    }
}
