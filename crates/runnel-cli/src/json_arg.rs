//! JSON arguments (`--data`, `--metadata`) given inline, from a file or from standard
//! input, the way curl's `--data` takes them:
//!
//! * `--data '{"total": 42}'`: the JSON itself;
//! * `--data @order.json`: the contents of `order.json`;
//! * `--data -`: everything on standard input.
//!
//! Files and standard input lift the operating system's limit on one argument (128 KiB on
//! Linux), so a payload can reach the store's own limit. A JSON *string* that starts with
//! `@` or is `-` stays possible inline because JSON strings are quoted: `--data '"@home"'`.

use std::io::Read as _;
use std::path::Path;

use crate::exit::BadInput;

/// Most bytes one JSON argument reads from a file or standard input: the highest payload
/// limit a store accepts (`max_payload_bytes` of SQLite at most 256 MiB). Anything larger
/// could never be stored, so it is refused rather than read into memory (`@/dev/zero`).
pub const JSON_INPUT_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Where a JSON argument's text comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source<'a> {
    Inline(&'a str),
    File(&'a Path),
    Stdin,
}

fn source<'a>(flag: &str, raw: &'a str) -> Result<Source<'a>, BadInput> {
    if raw == "-" {
        return Ok(Source::Stdin);
    }
    match raw.strip_prefix('@') {
        Some("") => Err(BadInput(format!(
            "{flag} @: no file name after @; write {flag} @FILE to read a file (a JSON string \
             starting with @ is quoted: {flag} '\"@...\"')"
        ))),
        Some(path) => Ok(Source::File(Path::new(path))),
        None => Ok(Source::Inline(raw)),
    }
}

/// Reads the JSON arguments of one command. Standard input can be read only once, so a
/// second argument given as `-` is refused.
#[derive(Debug, Default)]
pub struct JsonArgs {
    /// The flag that already read standard input.
    stdin_read_by: Option<&'static str>,
}

impl JsonArgs {
    /// The JSON value `raw` gives for `flag`: inline text, `@FILE` or `-`. A missing or
    /// unreadable file, an empty name after `@`, input over [`JSON_INPUT_BYTES_MAX`] and
    /// text that is not JSON are [`BadInput`].
    pub fn parse(&mut self, flag: &'static str, raw: &str) -> Result<serde_json::Value, BadInput> {
        let (bytes, origin) = match source(flag, raw)? {
            Source::Inline(text) => {
                return serde_json::from_str(text)
                    .map_err(|e| BadInput(format!("{flag} is not valid JSON: {e}")));
            }
            Source::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| {
                    BadInput(format!(
                        "{flag} @{}: cannot open the file: {e}",
                        path.display()
                    ))
                })?;
                let bytes = read_bounded(file, JSON_INPUT_BYTES_MAX).map_err(|e| {
                    BadInput(format!(
                        "{flag} @{}: cannot read the file: {e}",
                        path.display()
                    ))
                })?;
                (bytes, format!("{flag} @{}", path.display()))
            }
            Source::Stdin => {
                if let Some(first) = self.stdin_read_by {
                    return Err(BadInput(format!(
                        "{first} - and {flag} - both read standard input, which can be read \
                         only once; give one of them as @FILE"
                    )));
                }
                self.stdin_read_by = Some(flag);
                let bytes = read_bounded(std::io::stdin().lock(), JSON_INPUT_BYTES_MAX)
                    .map_err(|e| BadInput(format!("{flag} -: cannot read standard input: {e}")))?;
                (bytes, format!("{flag} - (standard input)"))
            }
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| BadInput(format!("{origin} is not valid JSON: {e}")))
    }
}

/// Everything `input` holds, or an error once it goes over `bytes_max`.
fn read_bounded(input: impl std::io::Read, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input.take(bytes_max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > bytes_max {
        return Err(std::io::Error::other(format!(
            "over {bytes_max} bytes, more than any store accepts as one payload"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_and_dash_name_sources_and_quoted_strings_stay_inline() {
        assert_eq!(source("--data", "-").unwrap(), Source::Stdin);
        assert_eq!(
            source("--data", "@a.json").unwrap(),
            Source::File(Path::new("a.json"))
        );
        assert_eq!(
            source("--data", "\"@a\"").unwrap(),
            Source::Inline("\"@a\"")
        );
        assert_eq!(source("--data", "\"-\"").unwrap(), Source::Inline("\"-\""));
        let err = source("--data", "@").unwrap_err();
        assert!(err.0.contains("no file name after @"), "{err}");
    }

    #[test]
    fn a_file_is_read_and_a_quoted_at_string_is_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.json");
        std::fs::write(&path, br#"{"total": 42}"#).unwrap();
        let mut args = JsonArgs::default();
        let from_file = args
            .parse("--data", &format!("@{}", path.display()))
            .unwrap();
        assert_eq!(from_file, serde_json::json!({"total": 42}));
        assert_eq!(
            args.parse("--data", "\"@x\"").unwrap(),
            serde_json::json!("@x")
        );
    }

    #[test]
    fn missing_files_and_invalid_json_are_bad_input_naming_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = JsonArgs::default()
            .parse("--data", &format!("@{}", missing.display()))
            .unwrap_err();
        assert!(err.0.contains("cannot open the file"), "{err}");
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, b"{total: 42").unwrap();
        let err = JsonArgs::default()
            .parse("--metadata", &format!("@{}", broken.display()))
            .unwrap_err();
        assert!(
            err.0.starts_with(&format!(
                "--metadata @{} is not valid JSON",
                broken.display()
            )),
            "{err}"
        );
        let err = JsonArgs::default().parse("--data", "{").unwrap_err();
        assert!(err.0.starts_with("--data is not valid JSON"), "{err}");
    }

    #[test]
    fn input_over_the_limit_is_refused() {
        assert_eq!(read_bounded(&b"1234"[..], 4).unwrap(), b"1234");
        let err = read_bounded(std::io::repeat(b' '), 4).unwrap_err();
        assert!(err.to_string().contains("over 4 bytes"), "{err}");
    }

    #[test]
    fn standard_input_is_read_once_only() {
        let mut args = JsonArgs {
            stdin_read_by: Some("--data"),
        };
        let err = args.parse("--metadata", "-").unwrap_err();
        assert!(err.0.contains("can be read only once"), "{err}");
    }
}
