//! Stream names: `{category}-{id}`, validated once at construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Longest stream name accepted, in bytes. Names are indexed and repeated in every
/// message header, so they are kept short on purpose.
pub const STREAM_NAME_LEN_MAX: usize = 200;

/// A validated stream name of the form `{category}-{id}`.
///
/// * `category` (the aggregate type) starts with an ASCII letter and holds ASCII letters,
///   digits and `_`. It ends at the first `-`.
/// * `id` is non-empty and holds ASCII letters, digits and `-`, `_`, `.`, `:`, `@`.
/// * The whole name is at most [`STREAM_NAME_LEN_MAX`] bytes. Names starting with `$` are
///   reserved for system streams such as `$all`.
///
/// ```
/// use runnel_core::StreamName;
/// let s: StreamName = "Order-7f3c".parse().unwrap();
/// assert_eq!(s.category(), "Order");
/// assert_eq!(s.id(), "7f3c");
/// assert!("Order".parse::<StreamName>().is_err());       // no id
/// assert!("Or der-1".parse::<StreamName>().is_err());    // bad character
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName {
    name: String,
    dash: usize,
}

impl StreamName {
    /// Validates `name` as a stream name.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        let invalid = |reason: &str| StoreError::InvalidStreamName {
            name: truncate_for_error(&name),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > STREAM_NAME_LEN_MAX {
            return Err(invalid(&format!(
                "it is {} bytes long; the limit is {STREAM_NAME_LEN_MAX}",
                name.len()
            )));
        }
        if name.starts_with('$') {
            return Err(invalid(
                "names starting with '$' are reserved for system streams",
            ));
        }
        let Some(dash) = name.find('-') else {
            return Err(invalid("expected '{category}-{id}', found no '-'"));
        };
        let (category, id) = (&name[..dash], &name[dash + 1..]);
        if !category.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(invalid("the category must start with an ASCII letter"));
        }
        if !category
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(
                "the category may hold only ASCII letters, digits and '_'",
            ));
        }
        if id.is_empty() {
            return Err(invalid("the id after '-' is empty"));
        }
        if !id.chars().all(is_id_char) {
            return Err(invalid(
                "the id may hold only ASCII letters, digits and '-', '_', '.', ':', '@'",
            ));
        }
        Ok(Self { name, dash })
    }

    /// Builds `{category}-{id}`, validating both parts.
    pub fn from_parts(category: &str, id: &str) -> Result<Self, StoreError> {
        Self::new(format!("{category}-{id}"))
    }

    /// The category: the part before the first `-` (the aggregate type).
    pub fn category(&self) -> &str {
        &self.name[..self.dash]
    }

    /// The id: everything after the first `-`.
    pub fn id(&self) -> &str {
        &self.name[self.dash + 1..]
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')
}

/// Checks a category name (as used in `$all` filters) with the same rules as
/// [`StreamName::category`].
pub fn validate_category(category: &str) -> Result<(), StoreError> {
    let name = StreamName::from_parts(category, "x")?;
    // `from_parts` alone accepts "Order-1": its category ends at the first '-', and the
    // rest passes as part of the id.
    if name.category() != category {
        return Err(StoreError::InvalidStreamName {
            name: truncate_for_error(category),
            reason: "a category may hold only ASCII letters, digits and '_'".to_string(),
        });
    }
    Ok(())
}

fn truncate_for_error(name: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 64;
    if name.chars().count() <= SHOWN_CHARS_MAX {
        name.to_string()
    } else {
        let head: String = name.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{head}…")
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamName({:?})", self.name)
    }
}

impl FromStr for StreamName {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for StreamName {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = StoreError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<StreamName> for String {
    fn from(s: StreamName) -> String {
        s.name
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_split_into_category_and_id() {
        let s = StreamName::new("Order-0190a-b.c:d@e_f").unwrap();
        assert_eq!(s.category(), "Order");
        assert_eq!(s.id(), "0190a-b.c:d@e_f");
    }

    #[test]
    fn invalid_names_are_rejected_with_a_reason() {
        for bad in [
            "",
            "Order",
            "Order-",
            "-1",
            "1Order-1",
            "Or der-1",
            "Order-a b",
            "$all",
            "Order-ü",
            "Ord/er-1",
        ] {
            let err = StreamName::new(bad).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidStreamName { .. }),
                "{bad:?} gave {err:?}"
            );
        }
        let long = format!("Order-{}", "x".repeat(STREAM_NAME_LEN_MAX));
        assert!(StreamName::new(long).is_err());
        let just_fits = format!("Order-{}", "x".repeat(STREAM_NAME_LEN_MAX - 6));
        assert!(StreamName::new(just_fits).is_ok());
    }

    #[test]
    fn categories_with_a_dash_are_rejected() {
        assert!(validate_category("Order").is_ok());
        assert!(validate_category("Order_Line2").is_ok());
        for bad in ["Order-1", "Order-", "", "1Order", "Or der"] {
            assert!(validate_category(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_round_trip_validates() {
        let s = StreamName::new("Cart-1").unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"Cart-1\"");
        assert_eq!(serde_json::from_str::<StreamName>(&json).unwrap(), s);
        assert!(serde_json::from_str::<StreamName>("\"nodash\"").is_err());
    }
}
