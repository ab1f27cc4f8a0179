//! JSON Schemas of Rust types with `schemars`: draft 7, subschemas inlined (so each event
//! type's schema stands alone and can be embedded in an AsyncAPI document), and the split
//! of an event enum's schema into one payload schema per event type.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

const DRAFT_07: &str = "http://json-schema.org/draft-07/schema#";

/// The root schema of `T`: draft 7, every subschema inlined (a recursive type keeps its
/// `definitions`), in canonical form.
fn root_schema<T: JsonSchema>() -> Map<String, Value> {
    let mut settings = SchemaSettings::draft07();
    settings.inline_subschemas = true;
    match canonical(
        settings
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value(),
    ) {
        Value::Object(map) => map,
        // `true` / `false` schemas: anything / nothing.
        Value::Bool(true) => Map::new(),
        other => {
            let mut map = Map::new();
            map.insert("allOf".into(), json!([other]));
            map
        }
    }
}

/// `value` with every object's keys in sorted order and every `required` list sorted:
/// the same schema whatever serde_json's `preserve_order` feature (which another crate
/// of the build may turn on), so snapshot files diff cleanly.
pub(super) fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                let v = match (k.as_str(), v) {
                    ("required", Value::Array(mut names)) => {
                        names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                        Value::Array(names)
                    }
                    (_, v) => canonical(v),
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// The schema of a whole value of `T` (a struct event, a command, a query), titled `name`.
pub(super) fn payload_schema<T: JsonSchema>(name: &str) -> Value {
    let mut root = root_schema::<T>();
    root.insert("$schema".into(), DRAFT_07.into());
    root.insert("title".into(), name.into());
    canonical(Value::Object(root))
}

/// The payload schema of each event type of an externally tagged enum `E` (sorted by
/// event type), or `None` if `E`'s schema is not one. A unit variant's payload is stored
/// as `{}`.
pub(super) fn enum_events<E: JsonSchema>() -> Option<Vec<(String, Value)>> {
    let root = root_schema::<E>();
    let definitions = root.get("definitions").cloned();
    let mut variants: Vec<(String, Map<String, Value>)> = Vec::new();
    match root.get("oneOf").or_else(|| root.get("anyOf")) {
        Some(Value::Array(branches)) => {
            for branch in branches {
                variants.extend(variant(branch.as_object()?)?);
            }
        }
        // A one-variant enum: the variant's own schema (externally tagged variants deny
        // other properties; a plain struct with one field does not, and is refused).
        _ if root.contains_key("enum")
            || root.contains_key("const")
            || root.get("additionalProperties") == Some(&Value::Bool(false)) =>
        {
            variants.extend(variant(&root)?)
        }
        _ => return None,
    }
    let mut out: Vec<(String, Value)> = variants
        .into_iter()
        .map(|(event_type, mut schema)| {
            schema.insert("$schema".into(), DRAFT_07.into());
            schema.insert("title".into(), event_type.clone().into());
            if let Some(definitions) = &definitions {
                schema.insert("definitions".into(), definitions.clone());
            }
            (event_type, canonical(Value::Object(schema)))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}

/// The event types of one branch of an externally tagged enum's schema: a one-property
/// object (a variant with content) or a string enum / const (unit variants).
fn variant(branch: &Map<String, Value>) -> Option<Vec<(String, Map<String, Value>)>> {
    let unit =
        |name: &Value, description: Option<&Value>| -> Option<(String, Map<String, Value>)> {
            let mut schema = Map::new();
            schema.insert("type".into(), "object".into());
            schema.insert("properties".into(), json!({}));
            schema.insert("additionalProperties".into(), false.into());
            if let Some(d) = description {
                schema.insert("description".into(), d.clone());
            }
            Some((name.as_str()?.to_string(), schema))
        };
    let description = branch.get("description");
    if let Some(Value::Array(names)) = branch.get("enum") {
        return names.iter().map(|n| unit(n, description)).collect();
    }
    if let Some(name) = branch.get("const") {
        return Some(vec![unit(name, description)?]);
    }
    let properties = branch.get("properties")?.as_object()?;
    let required = branch.get("required")?.as_array()?;
    if properties.len() != 1 || required.len() != 1 {
        return None;
    }
    let (name, content) = properties.iter().next()?;
    if required[0].as_str() != Some(name.as_str()) {
        return None;
    }
    let mut schema = match content {
        Value::Object(m) => m.clone(),
        // `true`: any payload.
        _ => Map::new(),
    };
    if let (Some(d), false) = (description, schema.contains_key("description")) {
        schema.insert("description".into(), d.clone());
    }
    Some(vec![(name.clone(), schema)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Line {
        sku: String,
        quantity: u32,
    }

    /// Events of a test aggregate.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Ev {
        /// Placed with lines.
        Placed {
            lines: Vec<Line>,
            note: Option<String>,
        },
        Renamed(String),
        Closed,
        Archived,
    }

    #[test]
    fn an_enum_splits_into_one_schema_per_event_type() {
        let events = enum_events::<Ev>().unwrap();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Archived", "Closed", "Placed", "Renamed"]);
        let placed = &events[2].1;
        assert_eq!(placed["type"], "object");
        assert_eq!(placed["required"], json!(["lines"]));
        assert_eq!(placed["description"], "Placed with lines.");
        assert_eq!(
            placed["properties"]["lines"]["items"]["required"],
            json!(["quantity", "sku"])
        );
        assert_eq!(events[3].1["type"], "string");
        assert_eq!(events[0].1["type"], "object");
        assert!(!placed.to_string().contains("$ref"), "{placed}");
    }

    #[test]
    fn a_struct_is_not_an_event_enum() {
        assert!(enum_events::<Line>().is_none());
        assert_eq!(payload_schema::<Line>("LineAdded")["title"], "LineAdded");
    }
}
