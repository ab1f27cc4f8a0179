//! Runnel's core vocabulary: the event envelope, stream names, positions, metadata,
//! typed errors, the JSON codec for domain events, the storage traits every backend
//! implements, and the bus vocabulary: messages, CloudEvents mapping, publisher and
//! subscriber traits, dead letters. No I/O happens here.

pub mod bus;
pub mod clock;
pub mod cloudevents;
pub mod codec;
pub mod config;
pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod event;
pub mod idempotency;
pub mod limits;
pub mod message;
pub mod metadata;
pub mod outbox;
pub mod position;
pub mod processor;
pub mod projection;
pub mod store;
pub mod stream_name;
pub mod subscription;
pub mod trace_context;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use codec::DomainEvent;
pub use config::ConfigError;
pub use error::{CodecError, InlineFailure, StoreError};
pub use event::{AppendResult, EventId, NewEvent, RecordedEvent, CONTENT_TYPE_JSON};
pub use limits::StoreLimits;
pub use message::{BusError, GroupName, Message, TopicName};
pub use metadata::Metadata;
pub use position::{ExpectedRevision, Position};
pub use store::{
    CheckpointStore, EventFilter, EventStore, EventStream, ReadDirection, ReadStream, Snapshot,
    SnapshotStore, StreamInfo,
};
pub use stream_name::StreamName;

// Re-exported so backends and applications agree on versions.
pub use async_trait::async_trait;
pub use chrono;
pub use uuid;
