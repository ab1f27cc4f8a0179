//! Schemas of response bodies the handlers build with `serde_json::json!` or from types of
//! other crates (which know nothing of OpenAPI): each struct here has the fields of the
//! body it describes and is used only in the document. A field the body may leave out is
//! an `Option`; a field that may hold anything JSON is a `serde_json::Value`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::ToSchema;

/// The body of every error (RFC 9457), `application/problem+json`. Some problems carry
/// more members (a conflict: `stream`, `expected`, `actual_revision`; a limit:
/// `limit_bytes`, `limit_max`).
#[derive(ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// `urn:runnel:problem:{kind}`, a stable slug per kind of refusal.
    pub r#type: String,
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened and what to do.
    pub detail: String,
}

/// `GET /catalog`: what the application registered, for `runnel schema check` and
/// documentation (each entry as `runnel::catalog` describes it).
#[derive(ToSchema)]
#[schema(as = Catalog)]
pub struct CatalogDoc {
    /// Event types with their schema versions and JSON Schemas.
    pub events: Vec<Value>,
    pub commands: Vec<Value>,
    pub queries: Vec<Value>,
    pub topics: Vec<Value>,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Liveness {
    /// Always `alive`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(ToSchema)]
pub struct Readiness {
    /// Always `ready` (a store that does not answer is a 503 problem).
    pub status: String,
    /// The `$all` position of the newest event.
    pub head_position: u64,
}

/// Event metadata (the store's `Metadata`): every member is optional.
#[derive(ToSchema)]
#[schema(as = Metadata)]
pub struct MetadataDoc {
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub user_id: Option<String>,
    /// A W3C `traceparent` header.
    pub traceparent: Option<String>,
    /// Free application headers.
    pub headers: Option<BTreeMap<String, String>>,
}

/// Which way a stream page reads.
#[derive(ToSchema)]
#[schema(as = ReadDirection, rename_all = "lowercase")]
pub enum ReadDirectionDoc {
    Forward,
    Backward,
}

/// `GET /commands`.
#[derive(ToSchema)]
pub struct CommandNames {
    /// The names of the registered commands, in name order.
    pub commands: Vec<String>,
}

/// A command's outcome when its handler succeeded (200).
#[derive(ToSchema)]
pub struct Completed {
    pub command_id: String,
    /// The correlation id of the events and messages the command caused.
    pub correlation_id: String,
    /// Always `completed`.
    pub status: String,
    /// What the handler returned.
    pub output: Value,
}

/// One group of `GET /admin/dead-letters/summary`.
#[derive(ToSchema)]
pub struct DeadLetterGroup {
    pub topic: String,
    pub group: String,
    /// The last failure's text up to its first `:`.
    pub error_type: String,
    pub count: u64,
    pub oldest: DateTime<Utc>,
    pub newest: DateTime<Utc>,
}

/// `GET /admin/dead-letters/summary`.
#[derive(ToSchema)]
pub struct DeadLetterCounts {
    /// Pending dead letters matching the filter.
    pub total: u64,
    pub oldest_dead_lettered_at: Option<DateTime<Utc>>,
    /// By topic, group and error type, largest first.
    pub groups: Vec<DeadLetterGroup>,
    /// Dead letters read to count the groups (at most 100,000).
    pub scanned: u64,
    /// `true` when `groups` counts fewer than `total`.
    pub truncated: bool,
}

/// One dead letter in a list (no body).
#[derive(ToSchema)]
pub struct DeadLetterItem {
    pub id: u64,
    pub topic: String,
    pub group: String,
    pub message_id: String,
    pub event_type: String,
    pub key: Option<String>,
    /// How often it was tried in all.
    pub attempts: u32,
    /// The first line of the last error.
    pub last_error: String,
    /// Whether the last failure was classified permanent.
    pub permanent: bool,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub dead_lettered_at: DateTime<Utc>,
    pub replay_count: u32,
    pub last_replayed_at: Option<DateTime<Utc>>,
}

/// `GET /admin/dead-letters`: one page, oldest first.
#[derive(ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterItem>,
    /// The `after` of the next page; `null` at the end.
    pub next: Option<u64>,
}

/// One failed attempt.
#[derive(ToSchema)]
pub struct Failure {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub error: String,
    pub permanent: bool,
}

/// A dead letter's message; without `headers` and `payload` for a viewer.
#[derive(ToSchema)]
pub struct DeadLetterMessage {
    pub id: String,
    pub r#type: String,
    pub source: String,
    pub time: Option<DateTime<Utc>>,
    pub subject: Option<String>,
    pub content_type: String,
    pub key: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
    pub payload_bytes: u64,
    /// Application headers (operators and admins only).
    pub headers: Option<BTreeMap<String, String>>,
    /// The payload: JSON inline, anything else as `{"encoded": …}` (operators and admins
    /// only).
    pub payload: Option<Value>,
    /// Whether the body was left out because the caller is a viewer.
    pub redacted: bool,
}

/// `GET /admin/dead-letters/{id}`.
#[derive(ToSchema)]
pub struct DeadLetterView {
    pub id: u64,
    pub topic: String,
    pub group: String,
    pub message: DeadLetterMessage,
    /// Every failure, oldest first.
    pub failures: Vec<Failure>,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub dead_lettered_at: DateTime<Utc>,
    pub replay_count: u32,
    pub last_replayed_at: Option<DateTime<Utc>>,
}

/// A dead letter a retry passed over, and why.
#[derive(ToSchema)]
pub struct SkippedDeadLetter {
    pub id: u64,
    pub reason: String,
}

/// `POST /admin/dead-letters/{id}/retry`: what the retry did.
#[derive(ToSchema)]
pub struct ReplayReport {
    pub total: u64,
    /// Published again and marked replayed.
    pub replayed: u64,
    /// Refused by the bus for good; they stay pending.
    pub skipped: u64,
    pub skipped_details: Vec<SkippedDeadLetter>,
}

/// `POST /admin/dead-letters/purge`.
#[derive(ToSchema)]
pub struct Purged {
    /// Dead letters deleted.
    pub purged: u64,
}

/// One topic of the outbox.
#[derive(ToSchema)]
pub struct OutboxTopic {
    pub topic: String,
    /// Rows not yet published (parked ones included).
    pub pending: u64,
    /// Of those, the ones parked after repeated failures.
    pub parked: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// `GET /admin/outbox`.
#[derive(ToSchema)]
pub struct OutboxBacklog {
    pub pending: u64,
    pub parked: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Published rows kept until the retention purge.
    pub published_retained: u64,
    /// Per topic, in name order.
    pub topics: Vec<OutboxTopic>,
    /// Age of the oldest pending row (0 when nothing is pending).
    pub oldest_pending_age_seconds: f64,
}

/// `POST /admin/outbox/retry-parked`.
#[derive(ToSchema)]
pub struct RetriedParked {
    /// Rows made claimable again.
    pub retried: u64,
}

/// One consumer group of this process.
#[derive(ToSchema)]
pub struct ConsumerLag {
    pub topic: String,
    pub group: String,
    /// Messages behind, from the bus; `null` if it cannot tell.
    pub messages: Option<u64>,
    /// Age of the newest message received when it arrived; 0 when caught up.
    pub seconds: f64,
    /// Deliveries received by this process.
    pub received: u64,
    pub last_received_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /admin/consumers`.
#[derive(ToSchema)]
pub struct Consumers {
    pub consumers: Vec<ConsumerLag>,
}

/// Saga instances of one kind in one status.
#[derive(ToSchema)]
pub struct SagaCount {
    pub kind: String,
    pub status: String,
    pub count: u64,
}

/// A saga or process-manager instance; `data` and `progress` for operators and admins only.
#[derive(ToSchema)]
pub struct SagaInstance {
    pub kind: String,
    pub id: String,
    pub definition_version: u32,
    pub correlation: Option<String>,
    /// Where it is, for operators (`running charge-payment`).
    pub state: String,
    /// `running`, `compensating`, `completed`, `compensated`, `compensation_failed`, …
    pub status: String,
    pub version: u64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Whether `data` and `progress` were left out because the caller is a viewer.
    pub redacted: bool,
    pub data: Option<Value>,
    pub progress: Option<Value>,
}

/// `GET /admin/sagas`.
#[derive(ToSchema)]
pub struct SagaPage {
    pub counts: Vec<SagaCount>,
    pub items: Vec<SagaInstance>,
    /// The `after` of the next page (`kind/id`); `null` at the end.
    pub next: Option<String>,
}

/// One line of a saga instance's history.
#[derive(ToSchema)]
pub struct SagaHistoryLine {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub step: Option<String>,
    pub what: String,
    pub detail: Option<String>,
}

/// A durable timer of a saga instance.
#[derive(ToSchema)]
pub struct SagaTimer {
    pub name: String,
    pub due: DateTime<Utc>,
}

/// `GET /admin/sagas/{kind}/{id}`: the instance with its history and timers.
#[derive(ToSchema)]
pub struct SagaDetail {
    pub kind: String,
    pub id: String,
    pub definition_version: u32,
    pub correlation: Option<String>,
    pub state: String,
    pub status: String,
    pub version: u64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub redacted: bool,
    /// Operators and admins only.
    pub data: Option<Value>,
    /// Operators and admins only.
    pub progress: Option<Value>,
    pub history: Vec<SagaHistoryLine>,
    pub timers: Vec<SagaTimer>,
}

/// One generation of a projection.
#[derive(ToSchema)]
pub struct ProjectionGeneration {
    pub name: String,
    pub version: u32,
    pub code_version: u32,
    /// `current`, `building` or `retired`.
    pub role: String,
    /// `running`, `paused` or `faulted`.
    pub status: String,
    pub partitions: u32,
    pub checkpoint: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub events_applied: u64,
    pub failed_position: Option<u64>,
    pub last_error: Option<String>,
    pub leased_by: Vec<String>,
    pub updated_at: DateTime<Utc>,
    /// The topic a topic projection reads (`null`: it reads `$all`).
    pub topic: Option<String>,
}

/// `GET /admin/projections`.
#[derive(ToSchema)]
pub struct ProjectionGenerations {
    pub generations: Vec<ProjectionGeneration>,
}

/// A rebuild's progress.
#[derive(ToSchema)]
pub struct RebuildProgress {
    pub version: u32,
    pub done: u64,
    pub total: u64,
    pub status: String,
    pub error: Option<String>,
}

/// `GET /admin/projections/{name}`.
#[derive(ToSchema)]
pub struct ProjectionDetail {
    pub name: String,
    pub generations: Vec<ProjectionGeneration>,
    pub rebuilds: Vec<RebuildProgress>,
}

/// `POST /admin/projections/{name}/{action}` (200): what changed; which member is present
/// depends on the action.
#[derive(ToSchema)]
pub struct ProjectionActionDone {
    /// `pause`, `resume`, `retry`: partitions changed.
    pub changed: Option<u64>,
    /// `skip`: the events passed over.
    pub skipped: Option<Vec<SkippedEvent>>,
    /// `drop-old`: the generations dropped.
    pub dropped: Option<Vec<u32>>,
}

/// An event an operator skipped.
#[derive(ToSchema)]
pub struct SkippedEvent {
    pub version: u32,
    pub partition: u32,
    pub position: u64,
    pub error: Option<String>,
}

/// `POST /admin/projections/{name}/rebuild` (202): the generation being built.
#[derive(ToSchema)]
pub struct RebuildStarted {
    pub version: u32,
    pub code_version: u32,
    pub created: bool,
    /// Where its progress is (`/admin/projections/{name}`).
    pub progress: String,
}
