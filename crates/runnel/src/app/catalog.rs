//! The application's [catalog](crate::catalog): what its parts receive and publish
//! (recorded as they are registered) and the schemas it describes (opt-in, below).

use runnel_core::{DomainEvent, TopicName};
use schemars::JsonSchema;

use super::App;
use crate::catalog::{Catalog, CatalogError, CatalogRegistry, PublisherKind};
use crate::{Aggregate, Command, Query, Upcasters};

impl App {
    /// Describes the events of the aggregate `A` (an enum with one variant per event
    /// type, deriving [`JsonSchema`]), recorded in streams of category `A::TYPE`: the
    /// catalog lists each event type with its schema version and JSON Schema, on the
    /// topics the event store relay routes it to.
    pub fn describe_aggregate<A>(&mut self) -> Result<&mut Self, CatalogError>
    where
        A: Aggregate,
        A::Event: JsonSchema,
    {
        self.catalog.describe_events::<A::Event>(Some(A::TYPE))?;
        Ok(self)
    }

    /// Describes the events of the enum `E` (one variant per event type), with no
    /// category: use [`App::describe_aggregate`] for an aggregate's events so the catalog
    /// knows their topics.
    pub fn describe_events<E: DomainEvent + JsonSchema>(
        &mut self,
    ) -> Result<&mut Self, CatalogError> {
        self.catalog.describe_events::<E>(None)?;
        Ok(self)
    }

    /// Describes the struct event `E` as `event_type`, recorded in streams of
    /// `category` if given.
    pub fn describe_event<E: DomainEvent + JsonSchema>(
        &mut self,
        event_type: &str,
        category: Option<&str>,
    ) -> Result<&mut Self, CatalogError> {
        self.catalog.describe_event::<E>(event_type, category)?;
        Ok(self)
    }

    /// Records which schema versions `upcasters` bring each event type from (the schema
    /// check accepts a raised version an upcaster chain covers).
    pub fn describe_upcasters(&mut self, upcasters: &Upcasters) -> &mut Self {
        self.catalog.describe_upcasters(upcasters);
        self
    }

    /// Describes the payload schema of the command `C` (its name is listed anyway once a
    /// handler is registered).
    pub fn describe_command<C: Command + JsonSchema>(&mut self) -> Result<&mut Self, CatalogError> {
        self.catalog.describe_command::<C>()?;
        Ok(self)
    }

    /// Describes the payload schema of the query `Q`.
    pub fn describe_query<Q: Query + JsonSchema>(&mut self) -> Result<&mut Self, CatalogError> {
        self.catalog.describe_query::<Q>()?;
        Ok(self)
    }

    /// Records that a part of the application's own, `name`, publishes to `topic` (a
    /// handler that replies, a task that publishes).
    pub fn describe_publisher(
        &mut self,
        topic: &TopicName,
        name: &str,
    ) -> Result<&mut Self, CatalogError> {
        self.catalog
            .publisher(topic, name, PublisherKind::Application)?;
        Ok(self)
    }

    /// The catalog as registered so far (see [`RunningApp::catalog`](super::RunningApp::catalog)
    /// once started).
    pub fn catalog(&self) -> Catalog {
        self.catalog
            .build(&self.commands.names(), &self.queries.names())
    }

    /// Records a registration in the catalog. The catalog is documentation: a registration
    /// it cannot hold (past [`CATALOG_ENTRIES_MAX`](crate::catalog::CATALOG_ENTRIES_MAX))
    /// is logged, and the part still runs.
    pub(super) fn record(
        &mut self,
        f: impl FnOnce(&mut CatalogRegistry) -> Result<(), CatalogError>,
    ) {
        if let Err(e) = f(&mut self.catalog) {
            tracing::warn!(error = %e, "not recorded in the catalog");
        }
    }
}
