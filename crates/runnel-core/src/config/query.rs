//! [`UrlQuery`]: reads a URL's query parameters as typed values, remembers which names it
//! was asked for, and refuses the rest.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use super::duration::{format_duration, parse_duration};
use super::error::{echo, ConfigError};

/// Most parameters one URL may carry (bounds the work done on hostile input).
pub const PARAMETERS_MAX: usize = 256;

/// One `name=value` pair of the query.
#[derive(Debug)]
struct Pair {
    name: String,
    value: String,
    /// The pair exactly as written (still percent-encoded), for a driver that reads it.
    raw: String,
    read: bool,
}

/// The query parameters of one configuration URL.
///
/// A backend asks for each parameter it knows by name with a typed reader
/// ([`UrlQuery::duration`], [`UrlQuery::integer`], [`UrlQuery::bool`],
/// [`UrlQuery::choice`], [`UrlQuery::string`]); each returns `None` when the parameter is
/// absent. Every name asked for counts as valid, whether given or not. Old names are
/// refused with [`UrlQuery::renamed`]; parameters the backend's driver reads itself are
/// handed on with [`UrlQuery::pass_through`]. [`UrlQuery::finish`] then refuses any
/// parameter nobody asked for, listing the valid ones.
///
/// ```
/// use runnel_core::config::{ConfigError, UrlQuery};
///
/// let mut query = UrlQuery::parse("kafka", "linger_ms=5")?;
/// let err = query.renamed("linger_ms", "linger", "5ms").unwrap_err();
/// assert_eq!(err.to_string(), "kafka URL: parameter linger_ms was renamed linger; write linger=5ms");
///
/// let mut query = UrlQuery::parse("kafka", "partitons=3")?;
/// query.integer("partitions", 1..=1024u32)?;
/// query.bool("tls")?;
/// let err = query.finish().unwrap_err();
/// assert!(matches!(&err, ConfigError::UnknownParameter { valid, .. } if valid == &["partitions", "tls"]));
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Debug)]
pub struct UrlQuery {
    scheme: &'static str,
    pairs: Vec<Pair>,
    valid: BTreeSet<&'static str>,
}

impl UrlQuery {
    /// Splits `query` (the part after `?`, without it; may be empty) into decoded pairs.
    /// `scheme` names the URL in errors (`nats`, `sqlite`, …). A pair without `=` has an
    /// empty value. Fails on a repeated name, on text that is not percent-encoded UTF-8 and
    /// on more than [`PARAMETERS_MAX`] pairs.
    pub fn parse(scheme: &'static str, query: &str) -> Result<Self, ConfigError> {
        let mut pairs: Vec<Pair> = Vec::new();
        for raw in query.split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == PARAMETERS_MAX {
                return Err(ConfigError::invalid_url(
                    scheme,
                    format!("more than {PARAMETERS_MAX} query parameters"),
                ));
            }
            let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
            let decode = |text: &str| {
                decode_form(text).ok_or_else(|| ConfigError::InvalidEncoding {
                    scheme,
                    near: echo(name),
                })
            };
            let (name, value) = (decode(name)?, decode(value)?);
            if pairs.iter().any(|p| p.name == name) {
                return Err(ConfigError::DuplicateParameter {
                    scheme,
                    name: echo(&name),
                });
            }
            pairs.push(Pair {
                name,
                value,
                raw: raw.to_string(),
                read: false,
            });
        }
        Ok(UrlQuery {
            scheme,
            pairs,
            valid: BTreeSet::new(),
        })
    }

    /// The scheme named in errors.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Whether the URL has no parameters at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The decoded value of `name` without reading it (it still needs a reader, or
    /// [`UrlQuery::finish`] refuses it). For checks that must look before they read, such
    /// as explaining that a value belongs to a renamed parameter.
    pub fn peek(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }

    /// Marks `name` valid and read; its value if given.
    fn take(&mut self, name: &'static str) -> Option<String> {
        self.valid.insert(name);
        let pair = self.pairs.iter_mut().find(|p| p.name == name)?;
        pair.read = true;
        Some(pair.value.clone())
    }

    /// Refuses the old spelling `old` of parameter `new`, with an error that names the new
    /// one; `example` is a value in the new syntax (e.g. `7d`).
    pub fn renamed(
        &mut self,
        old: &'static str,
        new: &'static str,
        example: &'static str,
    ) -> Result<(), ConfigError> {
        if self.pairs.iter().any(|p| p.name == old) {
            return Err(ConfigError::RenamedParameter {
                scheme: self.scheme,
                old,
                new,
                example,
            });
        }
        Ok(())
    }

    /// A text value, as given (after percent-decoding). Never echoed in errors, so it may
    /// hold a secret.
    pub fn string(&mut self, name: &'static str) -> Option<String> {
        self.take(name)
    }

    /// A value read by `read`; `expected` describes the accepted values in the error.
    pub fn parse_with<T>(
        &mut self,
        name: &'static str,
        expected: &str,
        read: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        match read(&value) {
            Some(v) => Ok(Some(v)),
            None => Err(ConfigError::invalid_value(
                self.scheme,
                name,
                &value,
                expected,
            )),
        }
    }

    /// A whole number within `range`.
    pub fn integer<T>(
        &mut self,
        name: &'static str,
        range: RangeInclusive<T>,
    ) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialOrd + Display,
    {
        let expected = format!("a whole number in {}..={}", range.start(), range.end());
        self.parse_with(name, &expected, |v| {
            // `FromStr` for integers takes a leading `+`; the grammar does not.
            if !v.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                return None;
            }
            v.parse::<T>().ok().filter(|n| range.contains(n))
        })
    }

    /// `true` or `false` (`1` and `0` are accepted too).
    pub fn bool(&mut self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        self.parse_with(name, "true or false", |v| match v {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        })
    }

    /// One of `choices` (exact, case-sensitive names).
    pub fn choice<T: Copy>(
        &mut self,
        name: &'static str,
        choices: &[(&'static str, T)],
    ) -> Result<Option<T>, ConfigError> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let expected = format!("one of {}", names.join(", "));
        self.parse_with(name, &expected, |v| {
            choices.iter().find(|(n, _)| *n == v).map(|(_, t)| *t)
        })
    }

    /// A duration in the one syntax (`250ms`, `30s`, `5m`, `2h`, `7d`), any length.
    pub fn duration(&mut self, name: &'static str) -> Result<Option<Duration>, ConfigError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        parse_duration(&value)
            .map(Some)
            .map_err(|source| ConfigError::InvalidDuration {
                scheme: self.scheme,
                name,
                value: echo(&value),
                source,
            })
    }

    /// A duration within `range`.
    pub fn duration_in(
        &mut self,
        name: &'static str,
        range: RangeInclusive<Duration>,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(d) = self.duration(name)? else {
            return Ok(None);
        };
        if range.contains(&d) {
            Ok(Some(d))
        } else {
            Err(ConfigError::invalid_value(
                self.scheme,
                name,
                format_duration(d),
                format!(
                    "a duration in {}..={}",
                    format_duration(*range.start()),
                    format_duration(*range.end())
                ),
            ))
        }
    }

    /// A duration, or `off`: `Some(None)` for `off`, `Some(Some(d))` for a duration, `None`
    /// when absent.
    pub fn duration_or_off(
        &mut self,
        name: &'static str,
    ) -> Result<Option<Option<Duration>>, ConfigError> {
        if self.peek(name) == Some("off") {
            self.take(name);
            return Ok(Some(None));
        }
        self.duration(name).map(|d| d.map(Some))
    }

    /// Marks `name` as a parameter the backend's driver reads itself and returns the pair
    /// as written (still percent-encoded), to append to the driver's URL.
    pub fn pass_through(&mut self, name: &'static str) -> Option<String> {
        self.take(name)?;
        self.pairs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.raw.clone())
    }

    /// Refuses any parameter no reader asked for, with the sorted list of valid names.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.pairs.iter().find(|p| !p.read) {
            None => Ok(()),
            Some(unknown) => Err(ConfigError::UnknownParameter {
                scheme: self.scheme,
                name: echo(&unknown.name),
                valid: self.valid.iter().map(|n| n.to_string()).collect(),
            }),
        }
    }
}

/// Splits `url` into the part before `?` and the query after it (without a `#fragment`).
///
/// ```
/// use runnel_core::config::split_query;
/// assert_eq!(split_query("nats://h:4222?retention=7d"), ("nats://h:4222", "retention=7d"));
/// assert_eq!(split_query("sqlite:runnel.db"), ("sqlite:runnel.db", ""));
/// ```
pub fn split_query(url: &str) -> (&str, &str) {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    url.split_once('?').unwrap_or((url, ""))
}

/// Percent-decodes `text` (a URL's user name or password: `+` stays a plus); `None` when
/// the bytes are not UTF-8.
///
/// ```
/// assert_eq!(runnel_core::config::percent_decode("p%40ss+1").as_deref(), Some("p@ss+1"));
/// ```
pub fn percent_decode(text: &str) -> Option<String> {
    decode_bytes(text, false)
}

/// Decodes a query name or value: `+` is a space, `%XX` a byte.
fn decode_form(text: &str) -> Option<String> {
    decode_bytes(text, true)
}

fn decode_bytes(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    // A lone `%` is kept as written, as browsers and the `url` crate do.
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> UrlQuery {
        UrlQuery::parse("test", q).expect("valid query")
    }

    #[test]
    fn values_are_percent_decoded() {
        let mut q = query("prefix=a%2Fb&name=x+y&token=p%40ss%2B&empty=&flag");
        assert_eq!(q.string("prefix").as_deref(), Some("a/b"));
        assert_eq!(q.string("name").as_deref(), Some("x y"));
        assert_eq!(q.string("token").as_deref(), Some("p@ss+"));
        assert_eq!(q.string("empty").as_deref(), Some(""));
        assert_eq!(q.string("flag").as_deref(), Some(""));
        q.finish().expect("all read");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let err = UrlQuery::parse("test", "name=%FF%FE").unwrap_err();
        assert!(matches!(err, ConfigError::InvalidEncoding { .. }), "{err}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = UrlQuery::parse("nats", "retention=1d&x=1&retention=2d").unwrap_err();
        assert_eq!(
            err,
            ConfigError::DuplicateParameter {
                scheme: "nats",
                name: "retention".into()
            }
        );
        // The same name spelled with an escape is the same parameter.
        assert!(UrlQuery::parse("nats", "tls=true&%74ls=false").is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_sorted_valid_names() {
        let mut q = query("retention=1d&max_deliveres=3");
        q.integer("max_deliveries", 1..=10u32)
            .expect("absent is fine");
        q.duration("retention").expect("valid");
        q.bool("tls").expect("absent");
        let err = q.finish().unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownParameter {
                scheme: "test",
                name: "max_deliveres".into(),
                valid: vec!["max_deliveries".into(), "retention".into(), "tls".into()],
            }
        );
        assert!(err
            .to_string()
            .contains("the valid parameters are max_deliveries, retention, tls"));
    }

    #[test]
    fn a_query_whose_keys_were_all_read_finishes() {
        let mut q = query("a=1&b=2s");
        assert_eq!(q.integer("a", 0..=9u8).expect("valid"), Some(1));
        assert_eq!(
            q.duration("b").expect("valid"),
            Some(Duration::from_secs(2))
        );
        q.finish().expect("nothing unknown");
        query("").finish().expect("empty");
    }

    #[test]
    fn renamed_keys_name_the_new_spelling() {
        let mut q = query("max_deliver=3");
        let err = q
            .renamed("max_deliver", "max_deliveries", "20")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test URL: parameter max_deliver was renamed max_deliveries; write max_deliveries=20"
        );
        query("max_deliveries=3")
            .renamed("max_deliver", "max_deliveries", "20")
            .expect("new name is fine");
    }

    #[test]
    fn integers_are_bounded() {
        let mut q = query("n=0&m=1001&k=x&j=+5&i=-1&h=1000");
        assert!(q.integer("n", 1..=1000u32).is_err());
        assert!(q.integer("m", 1..=1000u32).is_err());
        assert!(q.integer("k", 1..=1000u32).is_err());
        assert!(q.integer("j", 1..=1000u32).is_err());
        assert!(q.integer("i", 0..=1000u32).is_err());
        assert_eq!(q.integer("h", 1..=1000u32).expect("in range"), Some(1000));
        let err = query("n=0").integer("n", 1..=1000u32).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test URL: n=\"0\" is invalid; expected a whole number in 1..=1000"
        );
        assert_eq!(
            query("n=-3").integer("n", -5..=5i64).expect("signed"),
            Some(-3)
        );
    }

    #[test]
    fn booleans_and_choices() {
        let mut q = query("a=true&b=0&c=maybe&d=memory&e=disk");
        assert_eq!(q.bool("a").expect("valid"), Some(true));
        assert_eq!(q.bool("b").expect("valid"), Some(false));
        assert!(q.bool("c").is_err());
        let choices = [("file", 1), ("memory", 2)];
        assert_eq!(q.choice("d", &choices).expect("valid"), Some(2));
        let err = q.choice("e", &choices).unwrap_err();
        assert!(err.to_string().contains("one of file, memory"), "{err}");
    }

    #[test]
    fn durations_use_the_one_syntax() {
        let mut q = query("a=30s&b=30&c=20s&d=21s&e=off&f=7d");
        assert_eq!(
            q.duration("a").expect("valid"),
            Some(Duration::from_secs(30))
        );
        let err = q.duration("b").unwrap_err();
        assert!(
            matches!(&err, ConfigError::InvalidDuration { name: "b", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("30s"), "{err}");
        let upto_20s = Duration::ZERO..=Duration::from_secs(20);
        assert_eq!(
            q.duration_in("c", upto_20s.clone()).expect("in range"),
            Some(Duration::from_secs(20))
        );
        let err = q.duration_in("d", upto_20s).unwrap_err();
        assert!(err.to_string().contains("0s..=20s"), "{err}");
        assert_eq!(q.duration_or_off("e").expect("off"), Some(None));
        assert_eq!(
            q.duration_or_off("f").expect("valid"),
            Some(Some(Duration::from_secs(604_800)))
        );
        assert_eq!(q.duration_or_off("g").expect("absent"), None);
        q.finish().expect("all read");
    }

    #[test]
    fn pass_through_keeps_the_pair_as_written() {
        let mut q = query("sslmode=require&application_name=a%20b");
        assert_eq!(
            q.pass_through("sslmode").as_deref(),
            Some("sslmode=require")
        );
        assert_eq!(
            q.pass_through("application_name").as_deref(),
            Some("application_name=a%20b")
        );
        assert_eq!(q.pass_through("sslrootcert"), None);
        q.finish().expect("all handed on");
    }

    #[test]
    fn peek_does_not_read() {
        let q = query("retention=limits");
        assert_eq!(q.peek("retention"), Some("limits"));
        assert!(q.finish().is_err());
    }

    #[test]
    fn long_names_are_cut_in_errors() {
        let long = "x".repeat(500);
        let err = query(&format!("{long}=1")).finish().unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn too_many_parameters_are_refused() {
        let q: Vec<String> = (0..=PARAMETERS_MAX).map(|i| format!("p{i}=1")).collect();
        assert!(UrlQuery::parse("test", &q.join("&")).is_err());
    }

    #[test]
    fn urls_split_at_the_query() {
        assert_eq!(split_query("a://h?x=1#frag"), ("a://h", "x=1"));
        assert_eq!(split_query("a://h#f?x=1"), ("a://h", ""));
        assert_eq!(percent_decode("%E2%9C%93").as_deref(), Some("✓"));
        assert_eq!(percent_decode("100%"), Some("100%".into()));
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn config_errors_become_invalid_arguments() {
        let err = query("x=1").finish().unwrap_err();
        let text = err.to_string();
        assert_eq!(
            crate::BusError::from(err.clone()),
            crate::BusError::InvalidArgument(text.clone())
        );
        assert_eq!(
            crate::StoreError::from(err),
            crate::StoreError::InvalidArgument(text)
        );
    }
}
