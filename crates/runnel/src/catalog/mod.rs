//! The catalog: what an application's messages look like — every described event type
//! (its schema version and JSON Schema), command and query (by name, with a payload schema
//! where one was described) and topic (the event types on it, the consumer groups that
//! receive it, the parts that publish to it).
//!
//! The [`App`](crate::app::App) fills a [`CatalogRegistry`] as parts are registered:
//! consumers, topic projections, sagas and the event store relay describe themselves;
//! event, command and query *schemas* are opt-in, because they need a
//! [`JsonSchema`](schemars::JsonSchema) derive on the application's types
//! ([`App::describe_aggregate`](crate::app::App::describe_aggregate),
//! [`App::describe_events`](crate::app::App::describe_events),
//! [`App::describe_command`](crate::app::App::describe_command), …). Command and query
//! *names* come from the buses, so every registered handler is listed even without a
//! schema.
//!
//! From a [`Catalog`]:
//! * [`Catalog::asyncapi`] generates an AsyncAPI 3.0 document (topics as channels, consumer
//!   groups as `receive` operations, publishers as `send` operations);
//! * [`Catalog::schema_snapshot`] is the file a project commits, and [`check`] /
//!   [`compare`] fail on a backward-incompatible change against it (see [`compat`] for the
//!   rules).
//!
//! ```
//! use runnel::catalog::{compare, CatalogRegistry};
//! use runnel::core::DomainEvent;
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! enum CartEvent {
//!     ItemAdded { sku: String, quantity: u32 },
//!     CheckedOut,
//! }
//!
//! impl DomainEvent for CartEvent {
//!     fn event_type(&self) -> &'static str {
//!         match self {
//!             CartEvent::ItemAdded { .. } => "ItemAdded",
//!             CartEvent::CheckedOut => "CheckedOut",
//!         }
//!     }
//! }
//!
//! let mut registry = CatalogRegistry::new();
//! registry.describe_events::<CartEvent>(Some("Cart")).unwrap();
//! let catalog = registry.build(&[], &[]);
//! assert_eq!(catalog.events.len(), 2);
//! assert_eq!(catalog.events[0].event_type, "CheckedOut");
//! assert_eq!(catalog.events[1].schema["required"], serde_json::json!(["quantity", "sku"]));
//!
//! // Nothing changed since the snapshot: compatible.
//! let snapshot = catalog.schema_snapshot();
//! assert!(compare(&snapshot, &catalog.schema_snapshot()).is_compatible());
//! let doc = catalog.asyncapi("Cart service", "1.0.0");
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! ```

pub mod asyncapi;
pub mod compat;
mod describe;

use std::collections::{BTreeMap, BTreeSet};

use runnel_core::outbox::TopicRouting;
use runnel_core::{DomainEvent, EventFilter, GroupName, TopicName};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Command, Query, Upcasters};

pub use compat::{
    check, compare, Change, ChangeKind, CompatReport, Incompatibility, IncompatibilityKind,
    SchemaSnapshot, SnapshotError, SnapshotEvent, SNAPSHOT_BYTES_MAX, SNAPSHOT_FORMAT,
};

/// Most entries the catalog holds in each list (event types, commands, queries, topics,
/// and consumers or publishers per topic). The catalog is registration-time data; a
/// registration beyond this is [`CatalogError::TooManyEntries`].
pub const CATALOG_ENTRIES_MAX: usize = 10_000;

/// Why a description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The type's JSON Schema is not an externally tagged enum, so the event type names
    /// cannot be read from it.
    #[error(
        "{rust_type} is not an enum with one variant per event type (serde's externally tagged \
         form); describe a struct event with `describe_event::<E>(\"EventType\", …)`"
    )]
    NotAnEventEnum { rust_type: String },
    /// Two different Rust types describe the same event type.
    #[error(
        "event type {event_type:?} is described by both {first} and {second}; an event type \
         has one schema"
    )]
    ConflictingEventType {
        event_type: String,
        first: String,
        second: String,
    },
    /// A list reached [`CATALOG_ENTRIES_MAX`].
    #[error("the catalog holds at most {limit} {what}")]
    TooManyEntries { what: &'static str, limit: usize },
}

/// One event type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventEntry {
    /// The stored event type name (`OrderPlaced`).
    pub event_type: String,
    /// The aggregate type (stream category) that records it, when described with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The schema version the application writes and reads.
    pub schema_version: u32,
    /// The oldest schema version the application's upcasters bring to `schema_version`
    /// (`None`: no upcaster chain reaches it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upcast_from: Option<u32>,
    /// The payload's JSON Schema (draft 7, subschemas inlined).
    pub schema: Value,
    /// The Rust type it was described from.
    pub rust_type: String,
}

/// One command or query: its registered name and, when described, its payload's schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

/// What kind of part receives from a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// A consumer registered with [`App::consumer`](crate::app::App::consumer).
    Consumer,
    /// A projection fed from the topic.
    TopicProjection,
}

/// A consumer group receiving from a topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Receiver {
    pub group: String,
    pub kind: ReceiverKind,
}

/// What kind of part publishes to a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublisherKind {
    /// The event store as the outbox.
    EventStoreRelay,
    /// A saga's commands and lifecycle events (through the outbox).
    Saga,
    /// A stream job's results or late records (through the outbox).
    StreamJob,
    /// A part of the application's own, described with
    /// [`App::describe_publisher`](crate::app::App::describe_publisher).
    Application,
}

/// A part publishing to a topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Publisher {
    pub name: String,
    pub kind: PublisherKind,
}

/// One topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicEntry {
    pub topic: String,
    /// The described event types published to it, sorted.
    pub event_types: Vec<String>,
    pub receivers: Vec<Receiver>,
    pub publishers: Vec<Publisher>,
}

/// Everything the application described, sorted by name. Serializes as the body of
/// `GET /catalog`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub events: Vec<EventEntry>,
    pub commands: Vec<RequestEntry>,
    pub queries: Vec<RequestEntry>,
    pub topics: Vec<TopicEntry>,
}

impl Catalog {
    /// The event type `event_type`, if described.
    pub fn event(&self, event_type: &str) -> Option<&EventEntry> {
        self.events.iter().find(|e| e.event_type == event_type)
    }

    /// The topic `topic`, if anything receives from or publishes to it.
    pub fn topic(&self, topic: &str) -> Option<&TopicEntry> {
        self.topics.iter().find(|t| t.topic == topic)
    }

    /// An AsyncAPI 3.0 document of the catalog; see [`asyncapi::document`].
    pub fn asyncapi(&self, title: &str, version: &str) -> Value {
        asyncapi::document(self, title, version)
    }

    /// The event schemas as the snapshot file a project commits.
    pub fn schema_snapshot(&self) -> SchemaSnapshot {
        SchemaSnapshot::of(self)
    }
}

/// An event store relay as registered: which events it publishes and where.
#[derive(Clone, Debug)]
struct RelayDescription {
    name: String,
    routing: TopicRouting,
    filter: EventFilter,
}

/// What the application registered, collected while it is wired; [`CatalogRegistry::build`]
/// turns it into a [`Catalog`]. The [`App`](crate::app::App) holds one.
#[derive(Clone, Debug, Default)]
pub struct CatalogRegistry {
    events: BTreeMap<String, EventEntry>,
    commands: BTreeMap<String, Value>,
    queries: BTreeMap<String, Value>,
    receivers: BTreeMap<String, BTreeSet<Receiver>>,
    publishers: BTreeMap<String, BTreeSet<Publisher>>,
    relays: Vec<RelayDescription>,
    /// `(earliest, latest)` version of each event type's upcaster chain.
    upcasts: BTreeMap<String, (u32, u32)>,
}

impl CatalogRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Describes every event type of the enum `E` (one variant per event type), recorded by
    /// aggregates of `category` if given (the relay's topic routing needs it).
    pub fn describe_events<E: DomainEvent + JsonSchema>(
        &mut self,
        category: Option<&str>,
    ) -> Result<&mut Self, CatalogError> {
        let rust_type = std::any::type_name::<E>();
        let described =
            describe::enum_events::<E>().ok_or_else(|| CatalogError::NotAnEventEnum {
                rust_type: rust_type.to_string(),
            })?;
        for (event_type, schema) in described {
            self.insert_event(EventEntry {
                schema_version: E::schema_version(&event_type),
                event_type,
                category: category.map(str::to_string),
                upcast_from: None,
                schema,
                rust_type: rust_type.to_string(),
            })?;
        }
        Ok(self)
    }

    /// Describes the struct event `E` (its whole value is the payload) as `event_type`.
    pub fn describe_event<E: DomainEvent + JsonSchema>(
        &mut self,
        event_type: &str,
        category: Option<&str>,
    ) -> Result<&mut Self, CatalogError> {
        self.insert_event(EventEntry {
            event_type: event_type.to_string(),
            category: category.map(str::to_string),
            schema_version: E::schema_version(event_type),
            upcast_from: None,
            schema: describe::payload_schema::<E>(event_type),
            rust_type: std::any::type_name::<E>().to_string(),
        })?;
        Ok(self)
    }

    fn insert_event(&mut self, entry: EventEntry) -> Result<(), CatalogError> {
        if let Some(existing) = self.events.get(&entry.event_type) {
            if existing.rust_type != entry.rust_type {
                return Err(CatalogError::ConflictingEventType {
                    event_type: entry.event_type,
                    first: existing.rust_type.clone(),
                    second: entry.rust_type,
                });
            }
        } else {
            limit(self.events.len(), "event types")?;
        }
        self.events.insert(entry.event_type.clone(), entry);
        Ok(())
    }

    /// Records which versions `upcasters` bring each event type from.
    pub fn describe_upcasters(&mut self, upcasters: &Upcasters) -> &mut Self {
        for (event_type, earliest, latest) in upcasters.chains() {
            self.upcasts
                .insert(event_type.to_string(), (earliest, latest));
        }
        self
    }

    /// Describes the payload schema of the command `C`.
    pub fn describe_command<C: Command + JsonSchema>(&mut self) -> Result<&mut Self, CatalogError> {
        if !self.commands.contains_key(C::NAME) {
            limit(self.commands.len(), "commands")?;
        }
        self.commands
            .insert(C::NAME.to_string(), describe::payload_schema::<C>(C::NAME));
        Ok(self)
    }

    /// Describes the payload schema of the query `Q`.
    pub fn describe_query<Q: Query + JsonSchema>(&mut self) -> Result<&mut Self, CatalogError> {
        if !self.queries.contains_key(Q::NAME) {
            limit(self.queries.len(), "queries")?;
        }
        self.queries
            .insert(Q::NAME.to_string(), describe::payload_schema::<Q>(Q::NAME));
        Ok(self)
    }

    /// Records that `group` receives from `topic`.
    pub fn receiver(
        &mut self,
        topic: &TopicName,
        group: &GroupName,
        kind: ReceiverKind,
    ) -> Result<&mut Self, CatalogError> {
        let set = entry(&mut self.receivers, topic.as_str(), "topics")?;
        if set.len() >= CATALOG_ENTRIES_MAX {
            return Err(too_many("receivers of one topic"));
        }
        set.insert(Receiver {
            group: group.as_str().to_string(),
            kind,
        });
        Ok(self)
    }

    /// Records that the part `name` publishes to `topic`.
    pub fn publisher(
        &mut self,
        topic: &TopicName,
        name: &str,
        kind: PublisherKind,
    ) -> Result<&mut Self, CatalogError> {
        let set = entry(&mut self.publishers, topic.as_str(), "topics")?;
        if set.len() >= CATALOG_ENTRIES_MAX {
            return Err(too_many("publishers of one topic"));
        }
        set.insert(Publisher {
            name: name.to_string(),
            kind,
        });
        Ok(self)
    }

    /// Records an event store relay: each described event its `filter` lets through is on
    /// the topic its `routing` names (which needs the event's category unless the routing
    /// is a fixed topic).
    pub fn relay(
        &mut self,
        name: &str,
        routing: &TopicRouting,
        filter: &EventFilter,
    ) -> Result<&mut Self, CatalogError> {
        limit(self.relays.len(), "relays")?;
        self.relays.push(RelayDescription {
            name: name.to_string(),
            routing: routing.clone(),
            filter: filter.clone(),
        });
        Ok(self)
    }

    /// The catalog, with the command and query names the buses hold (`commands`,
    /// `queries`; a described one missing from its bus is listed too).
    pub fn build(&self, commands: &[&str], queries: &[&str]) -> Catalog {
        let events: Vec<EventEntry> = self
            .events
            .values()
            .map(|e| {
                let mut e = e.clone();
                e.upcast_from = match self.upcasts.get(&e.event_type) {
                    Some(&(earliest, latest)) if latest == e.schema_version => Some(earliest),
                    _ => None,
                };
                e
            })
            .collect();
        let mut topics: BTreeMap<String, TopicEntry> = BTreeMap::new();
        for (name, receivers) in &self.receivers {
            topic(&mut topics, name).receivers = receivers.iter().cloned().collect();
        }
        for (name, publishers) in &self.publishers {
            topic(&mut topics, name).publishers = publishers.iter().cloned().collect();
        }
        for relay in &self.relays {
            let publisher = Publisher {
                name: relay.name.clone(),
                kind: PublisherKind::EventStoreRelay,
            };
            for event in &events {
                if let Some(name) = relay_topic(relay, event) {
                    let t = topic(&mut topics, &name);
                    if !t.event_types.contains(&event.event_type) {
                        t.event_types.push(event.event_type.clone());
                        t.event_types.sort();
                    }
                    if !t.publishers.contains(&publisher) {
                        t.publishers.push(publisher.clone());
                        t.publishers.sort();
                    }
                }
            }
        }
        Catalog {
            events,
            commands: requests(commands, &self.commands),
            queries: requests(queries, &self.queries),
            topics: topics.into_values().collect(),
        }
    }
}

fn topic<'m>(topics: &'m mut BTreeMap<String, TopicEntry>, name: &str) -> &'m mut TopicEntry {
    topics
        .entry(name.to_string())
        .or_insert_with(|| TopicEntry {
            topic: name.to_string(),
            event_types: Vec::new(),
            receivers: Vec::new(),
            publishers: Vec::new(),
        })
}

/// The topic `relay` publishes `event` to, if its filter lets it through and the topic can
/// be told.
fn relay_topic(relay: &RelayDescription, event: &EventEntry) -> Option<String> {
    let filter = &relay.filter;
    if !filter.event_types.is_empty() && !filter.event_types.contains(&event.event_type) {
        return None;
    }
    match (&relay.routing, &event.category) {
        (TopicRouting::Fixed(topic), category) => {
            let passes = filter.categories.is_empty()
                || category
                    .as_ref()
                    .is_some_and(|c| filter.categories.contains(c));
            passes.then(|| topic.as_str().to_string())
        }
        (routing, Some(category)) => {
            if !filter.categories.is_empty() && !filter.categories.contains(category) {
                return None;
            }
            routing
                .topic(category, &event.event_type)
                .ok()
                .map(|t| t.as_str().to_string())
        }
        (_, None) => None,
    }
}

fn requests(names: &[&str], schemas: &BTreeMap<String, Value>) -> Vec<RequestEntry> {
    let mut all: BTreeMap<String, Option<Value>> =
        names.iter().map(|n| (n.to_string(), None)).collect();
    for (name, schema) in schemas {
        all.insert(name.clone(), Some(schema.clone()));
    }
    all.into_iter()
        .take(CATALOG_ENTRIES_MAX)
        .map(|(name, schema)| RequestEntry { name, schema })
        .collect()
}

fn entry<'a, T: Default>(
    map: &'a mut BTreeMap<String, T>,
    key: &str,
    what: &'static str,
) -> Result<&'a mut T, CatalogError> {
    if !map.contains_key(key) {
        limit(map.len(), what)?;
    }
    Ok(map.entry(key.to_string()).or_default())
}

fn limit(len: usize, what: &'static str) -> Result<(), CatalogError> {
    if len >= CATALOG_ENTRIES_MAX {
        return Err(too_many(what));
    }
    Ok(())
}

fn too_many(what: &'static str) -> CatalogError {
    CatalogError::TooManyEntries {
        what,
        limit: CATALOG_ENTRIES_MAX,
    }
}
