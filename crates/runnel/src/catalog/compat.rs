//! Schema compatibility: the event schemas of a [`Catalog`] against a committed
//! [`SchemaSnapshot`].
//!
//! Rules, per event type (the snapshot is the previous contract, the catalog the current
//! code):
//!
//! | change | verdict |
//! |---|---|
//! | event type removed | incompatible |
//! | field removed (a rename is a removal plus an addition) | incompatible |
//! | field's type changed (any change of its JSON types, `null` included) | incompatible |
//! | required field added, or an optional field made required | incompatible |
//! | enum value or union variant removed | incompatible |
//! | schema version lowered | incompatible |
//! | schema version raised with no upcaster chain from the snapshot's version | incompatible |
//! | new event type | compatible |
//! | optional field added, a required field made optional | compatible |
//! | schema version raised **and** the application's upcasters bring the snapshot's version to the new one | compatible, whatever the shape change: stored events are upcast on read |
//!
//! Each problem names the event type and the JSON path of the field (`$.items[].price`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Catalog;

/// The `format` of snapshot files this version reads and writes.
pub const SNAPSHOT_FORMAT: &str = "runnel-schema-snapshot/1";
/// Largest snapshot (or catalog) file read, in bytes.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Deepest nesting of schemas compared; deeper levels (only a recursive type reaches them)
/// are not compared.
pub const COMPARE_DEPTH_MAX: usize = 32;

/// One event type in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEvent {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upcast_from: Option<u32>,
    pub schema: Value,
}

/// The event schemas of an application at one point, as committed to its repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchemaSnapshot {
    /// [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// By event type.
    pub events: BTreeMap<String, SnapshotEvent>,
}

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error(
        "{path} is neither a schema snapshot ({SNAPSHOT_FORMAT}) nor a catalog (GET /catalog): {message}"
    )]
    Malformed { path: PathBuf, message: String },
    #[error("{path} is a snapshot of format {found:?}; this version reads {SNAPSHOT_FORMAT:?}")]
    UnsupportedFormat { path: PathBuf, found: String },
}

impl SnapshotError {
    /// Whether the file's content was refused (as opposed to an I/O failure).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SnapshotError::TooLarge { .. }
                | SnapshotError::Malformed { .. }
                | SnapshotError::UnsupportedFormat { .. }
        )
    }
}

impl SchemaSnapshot {
    /// The snapshot of `catalog`'s event schemas.
    pub fn of(catalog: &Catalog) -> Self {
        SchemaSnapshot {
            format: SNAPSHOT_FORMAT.to_string(),
            events: catalog
                .events
                .iter()
                .map(|e| {
                    (
                        e.event_type.clone(),
                        SnapshotEvent {
                            schema_version: e.schema_version,
                            upcast_from: e.upcast_from,
                            schema: e.schema.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Reads a snapshot file, or a catalog file (the body of `GET /catalog`) as its
    /// snapshot. At most [`SNAPSHOT_BYTES_MAX`] bytes.
    pub fn read(path: &Path) -> Result<Self, SnapshotError> {
        let read_err = |source| SnapshotError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(SNAPSHOT_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > SNAPSHOT_BYTES_MAX {
            return Err(SnapshotError::TooLarge {
                path: path.to_path_buf(),
                limit: SNAPSHOT_BYTES_MAX,
            });
        }
        Self::from_slice(&bytes).map_err(|e| match e {
            ParseError::Malformed(message) => SnapshotError::Malformed {
                path: path.to_path_buf(),
                message,
            },
            ParseError::Format(found) => SnapshotError::UnsupportedFormat {
                path: path.to_path_buf(),
                found,
            },
        })
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, ParseError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ParseError::Malformed(e.to_string()))?;
        match value.get("format") {
            Some(Value::String(f)) if f == SNAPSHOT_FORMAT => {
                serde_json::from_value(value).map_err(|e| ParseError::Malformed(e.to_string()))
            }
            Some(other) => Err(ParseError::Format(match other {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })),
            None => serde_json::from_value::<Catalog>(value)
                .map(|c| SchemaSnapshot::of(&c))
                .map_err(|e| ParseError::Malformed(e.to_string())),
        }
    }

    /// Writes the snapshot as pretty JSON (sorted, so diffs stay small), replacing `path`
    /// atomically.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let write_err = |source| SnapshotError::Write {
            path: path.to_path_buf(),
            source,
        };
        // Canonical key order whatever serde_json's `preserve_order`: diffs stay small.
        let mut canonical = self.clone();
        for event in canonical.events.values_mut() {
            event.schema = super::describe::canonical(std::mem::take(&mut event.schema));
        }
        let mut text = serde_json::to_string_pretty(&canonical)
            .map_err(|e| write_err(std::io::Error::other(e)))?;
        text.push('\n');
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }
}

enum ParseError {
    Malformed(String),
    Format(String),
}

/// A backward-incompatible change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incompatibility {
    pub event_type: String,
    /// JSON path of the field (`$` for the event itself).
    pub path: String,
    pub kind: IncompatibilityKind,
}

/// What makes a change incompatible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum IncompatibilityKind {
    EventTypeRemoved,
    FieldRemoved,
    TypeChanged { was: String, now: String },
    RequiredFieldAdded,
    BecameRequired,
    EnumValueRemoved { value: String },
    VariantRemoved { variant: String },
    SchemaVersionLowered { was: u32, now: u32 },
    VersionRaisedWithoutUpcaster { was: u32, now: u32 },
}

/// A compatible change, listed for the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub event_type: String,
    pub path: String,
    pub kind: ChangeKind,
}

/// What a compatible change is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeKind {
    EventTypeAdded,
    OptionalFieldAdded,
    BecameOptional,
    UpcastVersion { was: u32, now: u32 },
}

/// The outcome of a check: incompatible changes (`problems`) and compatible ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompatReport {
    pub problems: Vec<Incompatibility>,
    pub changes: Vec<Change>,
}

impl CompatReport {
    /// No incompatible change.
    pub fn is_compatible(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for IncompatibilityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventTypeRemoved => f.write_str("event type removed"),
            Self::FieldRemoved => f.write_str("field removed (or renamed)"),
            Self::TypeChanged { was, now } => write!(f, "type changed from {was} to {now}"),
            Self::RequiredFieldAdded => f.write_str("required field added"),
            Self::BecameRequired => f.write_str("optional field made required"),
            Self::EnumValueRemoved { value } => write!(f, "enum value {value} removed"),
            Self::VariantRemoved { variant } => write!(f, "variant {variant} removed"),
            Self::SchemaVersionLowered { was, now } => {
                write!(f, "schema version lowered from {was} to {now}")
            }
            Self::VersionRaisedWithoutUpcaster { was, now } => write!(
                f,
                "schema version raised from {was} to {now} without an upcaster chain from {was}"
            ),
        }
    }
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.event_type, self.path, self.kind)
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventTypeAdded => f.write_str("new event type"),
            Self::OptionalFieldAdded => f.write_str("optional field added"),
            Self::BecameOptional => f.write_str("required field made optional"),
            Self::UpcastVersion { was, now } => {
                write!(f, "schema version {was} -> {now}, upcast on read")
            }
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.event_type, self.path, self.kind)
    }
}

/// One line per change (`incompatible: …`, then `compatible: …`), then a summary line.
impl fmt::Display for CompatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "incompatible: {p}")?;
        }
        for c in &self.changes {
            writeln!(f, "compatible: {c}")?;
        }
        if self.is_compatible() {
            write!(
                f,
                "schema check passed: {} compatible change(s)",
                self.changes.len()
            )
        } else {
            write!(
                f,
                "schema check failed: {} incompatible change(s), {} compatible",
                self.problems.len(),
                self.changes.len()
            )
        }
    }
}

/// Checks `catalog`'s event schemas against the snapshot file at `snapshot`.
pub fn check(catalog: &Catalog, snapshot: &Path) -> Result<CompatReport, SnapshotError> {
    let previous = SchemaSnapshot::read(snapshot)?;
    Ok(compare(&previous, &catalog.schema_snapshot()))
}

/// Compares `current` with `previous` by the rules in the [module documentation](self).
pub fn compare(previous: &SchemaSnapshot, current: &SchemaSnapshot) -> CompatReport {
    let mut report = CompatReport::default();
    for (event_type, old) in &previous.events {
        let Some(new) = current.events.get(event_type) else {
            report.problems.push(Incompatibility {
                event_type: event_type.clone(),
                path: "$".into(),
                kind: IncompatibilityKind::EventTypeRemoved,
            });
            continue;
        };
        let (was, now) = (old.schema_version, new.schema_version);
        if now < was {
            report.problems.push(Incompatibility {
                event_type: event_type.clone(),
                path: "$".into(),
                kind: IncompatibilityKind::SchemaVersionLowered { was, now },
            });
            continue;
        }
        if now > was {
            if new.upcast_from.is_some_and(|from| from <= was) {
                report.changes.push(Change {
                    event_type: event_type.clone(),
                    path: "$".into(),
                    kind: ChangeKind::UpcastVersion { was, now },
                });
            } else {
                report.problems.push(Incompatibility {
                    event_type: event_type.clone(),
                    path: "$".into(),
                    kind: IncompatibilityKind::VersionRaisedWithoutUpcaster { was, now },
                });
            }
            continue;
        }
        let mut walk = Walk {
            event_type,
            old_root: &old.schema,
            new_root: &new.schema,
            report: &mut report,
        };
        walk.schema(&old.schema, &new.schema, "$", 0);
    }
    for event_type in current.events.keys() {
        if !previous.events.contains_key(event_type) {
            report.changes.push(Change {
                event_type: event_type.clone(),
                path: "$".into(),
                kind: ChangeKind::EventTypeAdded,
            });
        }
    }
    report
}

/// One event type's comparison.
struct Walk<'a> {
    event_type: &'a str,
    old_root: &'a Value,
    new_root: &'a Value,
    report: &'a mut CompatReport,
}

impl<'a> Walk<'a> {
    fn problem(&mut self, path: &str, kind: IncompatibilityKind) {
        self.report.problems.push(Incompatibility {
            event_type: self.event_type.to_string(),
            path: path.to_string(),
            kind,
        });
    }

    fn change(&mut self, path: &str, kind: ChangeKind) {
        self.report.changes.push(Change {
            event_type: self.event_type.to_string(),
            path: path.to_string(),
            kind,
        });
    }

    fn schema(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        if depth > COMPARE_DEPTH_MAX {
            return;
        }
        let old = resolve(self.old_root, old);
        let new = resolve(self.new_root, new);
        let (old_types, new_types) = (types(self.old_root, old), types(self.new_root, new));
        if !old_types.is_empty() && !new_types.is_empty() && old_types != new_types {
            self.problem(
                path,
                IncompatibilityKind::TypeChanged {
                    was: join(&old_types),
                    now: join(&new_types),
                },
            );
            return;
        }
        let (old, new) = (
            strip_null(self.old_root, old),
            strip_null(self.new_root, new),
        );
        self.enum_values(old, new, path);
        self.union(old, new, path, depth);
        self.object(old, new, path, depth);
        if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
            if o.is_object() && n.is_object() {
                self.schema(o, n, &format!("{path}[]"), depth + 1);
            }
        }
    }

    fn enum_values(&mut self, old: &Value, new: &Value, path: &str) {
        let (Some(o), Some(n)) = (enum_of(old), enum_of(new)) else {
            return;
        };
        for value in o.difference(&n) {
            self.problem(
                path,
                IncompatibilityKind::EnumValueRemoved {
                    value: value.clone(),
                },
            );
        }
    }

    fn union(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        let (Some(o), Some(n)) = (branches(old), branches(new)) else {
            return;
        };
        let old_keyed = keyed(self.old_root, o);
        let new_keyed = keyed(self.new_root, n);
        for (key, old_branch) in &old_keyed {
            match new_keyed.get(key) {
                Some(new_branch) => {
                    self.schema(old_branch, new_branch, &format!("{path}.{key}"), depth + 1)
                }
                None => self.problem(
                    path,
                    IncompatibilityKind::VariantRemoved {
                        variant: key.clone(),
                    },
                ),
            }
        }
    }

    fn object(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        let old_props = old
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let new_props = new
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let (old_required, new_required) = (required(old), required(new));
        for (name, old_field) in old_props {
            let field_path = format!("{path}.{name}");
            let Some(new_field) = new_props.get(name) else {
                self.problem(&field_path, IncompatibilityKind::FieldRemoved);
                continue;
            };
            match (old_required.contains(name), new_required.contains(name)) {
                (false, true) => self.problem(&field_path, IncompatibilityKind::BecameRequired),
                (true, false) => self.change(&field_path, ChangeKind::BecameOptional),
                _ => {}
            }
            self.schema(old_field, new_field, &field_path, depth + 1);
        }
        for name in new_props.keys() {
            if old_props.contains_key(name) {
                continue;
            }
            let field_path = format!("{path}.{name}");
            if new_required.contains(name) {
                self.problem(&field_path, IncompatibilityKind::RequiredFieldAdded);
            } else {
                self.change(&field_path, ChangeKind::OptionalFieldAdded);
            }
        }
        if let (Some(o), Some(n)) = (
            old.get("additionalProperties"),
            new.get("additionalProperties"),
        ) {
            if o.is_object() && n.is_object() {
                self.schema(o, n, &format!("{path}.*"), depth + 1);
            }
        }
    }
}

/// A local `$ref` (`#/definitions/X`) resolved against its root schema, once (a chain of
/// references is followed up to [`COMPARE_DEPTH_MAX`] times).
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..COMPARE_DEPTH_MAX {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        match reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
        {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

/// The JSON types a schema admits, from `type`, `enum`/`const` values, or the union of
/// its `oneOf`/`anyOf` branches (empty: not said).
fn types(root: &Value, schema: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match schema.get("type") {
        Some(Value::String(t)) => {
            out.insert(t.clone());
        }
        Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str).map(String::from)),
        _ => {
            if let Some(values) = schema.get("enum").and_then(Value::as_array) {
                out.extend(values.iter().map(json_type));
            } else if let Some(value) = schema.get("const") {
                out.insert(json_type(value));
            } else if let Some(bs) = branches(schema) {
                for b in bs {
                    let b = resolve(root, b);
                    let t = types(root, b);
                    if t.is_empty() {
                        // A branch says nothing: the union's types are unknown.
                        return BTreeSet::new();
                    }
                    out.extend(t);
                }
            } else if schema.get("properties").is_some() {
                out.insert("object".into());
            }
        }
    }
    out
}

fn json_type(value: &Value) -> String {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
    .to_string()
}

fn join(types: &BTreeSet<String>) -> String {
    types.iter().cloned().collect::<Vec<_>>().join("|")
}

/// `oneOf` / `anyOf` branches.
fn branches(schema: &Value) -> Option<&Vec<Value>> {
    schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
}

/// `Option<T>` as schemars writes it (`anyOf: [T, {"type": "null"}]`): the `T` branch.
fn strip_null<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(bs) = branches(schema) {
        let non_null: Vec<&Value> = bs
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if non_null.len() == 1 && bs.len() == 2 {
            return resolve(root, non_null[0]);
        }
    }
    schema
}

/// String `enum` / `const` values of a schema.
fn enum_of(schema: &Value) -> Option<BTreeSet<String>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(value_key).collect());
    }
    schema
        .get("const")
        .map(|v| std::iter::once(value_key(v)).collect())
}

fn value_key(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Union branches by a stable key: the property name of a one-property object (an
/// externally tagged variant), each `enum`/`const` value (unit variants), else the index.
fn keyed<'a>(root: &'a Value, branches: &'a [Value]) -> BTreeMap<String, &'a Value> {
    let mut out = BTreeMap::new();
    for (i, branch) in branches.iter().enumerate() {
        let branch = resolve(root, branch);
        if let Some(values) = enum_of(branch) {
            for v in values {
                out.insert(v, branch);
            }
            continue;
        }
        let props = branch.get("properties").and_then(Value::as_object);
        match props {
            Some(p) if p.len() == 1 && required(branch).len() == 1 => {
                let (name, content) = p.iter().next().expect("one property");
                out.insert(name.clone(), content);
            }
            _ => {
                out.insert(format!("#{i}"), branch);
            }
        }
    }
    out
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}
