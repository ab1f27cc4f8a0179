//! Operating projections without their code: what `runnel projections` does, for a service's
//! own admin endpoints too. Every function reads or changes the projection store only; the
//! processes running the projections see the change on their next round (a paused
//! generation is left alone, a retried one applies its failed event again, a rebuild is a
//! new generation they fill and switch to).
//!
//! Each action checks the projection exists and is in a state the action applies to, and
//! otherwise fails with [`AdminError`] having changed nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;

use runnel_core::projection::{
    ProjectionState, ProjectionStatus, ProjectionStore, RebuildStarted, VersionRole,
};
use runnel_core::{EventFilter, EventStore, Position, StoreError};

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No projection of that name is registered.
    #[error("no projection named {0} is registered (`runnel projections list` shows them)")]
    Unknown(String),
    /// The projection is not in a state the action applies to; nothing changed.
    #[error("projection {name} is {state}: {hint}")]
    WrongState {
        name: String,
        state: String,
        hint: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One generation of a projection, its partitions summed up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationStatus {
    /// The projection.
    pub name: String,
    /// The generation (the number in its tables' names).
    pub version: u32,
    /// The version in code it runs.
    pub code_version: u32,
    /// `current`, `building` or `retired`.
    pub role: VersionRole,
    /// `faulted` if a partition is, else `paused` if one is, else `running`.
    pub status: ProjectionStatus,
    /// Partitions.
    pub partitions: u32,
    /// The lowest checkpoint of its partitions.
    pub checkpoint: u64,
    /// Positions of `$all` not applied yet (head minus the lowest checkpoint).
    pub lag_events: u64,
    /// Age of the oldest event not applied yet, in seconds; 0 when caught up.
    pub lag_seconds: f64,
    /// Events applied since the generation was created.
    pub events_applied: u64,
    /// The event a faulted partition stopped on.
    pub failed_position: Option<u64>,
    /// Why it is faulted (or the last error).
    pub last_error: Option<String>,
    /// Who holds its partitions' live leases.
    pub leased_by: Vec<String>,
    /// When a partition last changed.
    pub updated_at: DateTime<Utc>,
    /// The topic a topic projection reads (`None`: it reads `$all`). A topic projection has
    /// no checkpoint (0) and no lag against `$all` (0 here, `n/a` in the CLI).
    pub topic: Option<String>,
}

/// Every generation of `name` (or of every projection), by name and generation, with lag
/// measured against the head of `$all` now. Retired generations are listed with no lag.
pub async fn status(
    store: &dyn ProjectionStore,
    events: &dyn EventStore,
    name: Option<&str>,
) -> Result<Vec<GenerationStatus>, AdminError> {
    let states = store.states(name).await?;
    if let Some(name) = name {
        if states.is_empty() {
            return Err(AdminError::Unknown(name.to_string()));
        }
    }
    let head = events.head_position().await?;
    let now = Utc::now();
    let topics: std::collections::HashMap<String, String> = store
        .topic_sources(name)
        .await?
        .into_iter()
        .map(|s| (s.name, s.topic))
        .collect();
    let mut out: Vec<GenerationStatus> = Vec::new();
    for group in states.chunk_by(|a, b| a.name == b.name && a.version == b.version) {
        let first = &group[0];
        let topic = topics.get(&first.name).cloned();
        let checkpoint = group.iter().map(|s| s.checkpoint).min().unwrap_or_default();
        let status = if group.iter().any(|s| s.status == ProjectionStatus::Faulted) {
            ProjectionStatus::Faulted
        } else if group.iter().any(|s| s.status == ProjectionStatus::Paused) {
            ProjectionStatus::Paused
        } else {
            ProjectionStatus::Running
        };
        let live = first.role != VersionRole::Retired && topic.is_none();
        let lag_events = if live {
            head.get().saturating_sub(checkpoint.get())
        } else {
            0
        };
        let lag_seconds = if lag_events > 0 {
            events
                .read_all(checkpoint, &EventFilter::all(), 1)
                .await?
                .first()
                .map(|e| (now - e.recorded_at).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0)
        } else {
            0.0
        };
        let faulted = group
            .iter()
            .find(|s| s.status == ProjectionStatus::Faulted)
            .or_else(|| group.iter().find(|s| s.last_error.is_some()));
        let mut leased_by: Vec<String> = group
            .iter()
            .filter_map(|s| s.lease.as_ref())
            .filter(|(_, until)| *until > now)
            .map(|(owner, _)| owner.clone())
            .collect();
        leased_by.sort();
        leased_by.dedup();
        out.push(GenerationStatus {
            name: first.name.clone(),
            version: first.version,
            code_version: first.code_version,
            role: first.role,
            status,
            partitions: first.partitions,
            checkpoint: checkpoint.get(),
            lag_events,
            lag_seconds,
            events_applied: group.iter().map(|s| s.events_applied).sum(),
            failed_position: faulted.and_then(|s| s.failed_position.map(Position::get)),
            last_error: faulted.and_then(|s| s.last_error.clone()),
            leased_by,
            updated_at: group.iter().map(|s| s.updated_at).max().unwrap_or(now),
            topic,
        });
    }
    Ok(out)
}

/// The live (current and building) partitions of `name`; unknown names are an error.
async fn live(store: &dyn ProjectionStore, name: &str) -> Result<Vec<ProjectionState>, AdminError> {
    runnel_core::projection::validate_identifier("projection name", name)?;
    let states = store.states(Some(name)).await?;
    if states.is_empty() {
        return Err(AdminError::Unknown(name.to_string()));
    }
    if let Some(source) = store.topic_sources(Some(name)).await?.into_iter().next() {
        return Err(topic_refusal(&source));
    }
    Ok(states
        .into_iter()
        .filter(|s| s.role != VersionRole::Retired)
        .collect())
}

/// Why an action on positions (pause, resume, retry, skip, rebuild) does not apply to a
/// projection that reads a topic.
fn topic_refusal(source: &runnel_core::projection::TopicSource) -> AdminError {
    AdminError::WrongState {
        name: source.name.clone(),
        state: format!("reading topic {} (group {})", source.topic, source.group),
        hint: "a topic projection has no position to pause at, retry or skip, and a topic \
               cannot be replayed to rebuild it: its failing messages are retried, then \
               dead-lettered (`runnel dead-letters`); stop its service to stop it"
            .into(),
    }
}

fn describe(states: &[ProjectionState]) -> String {
    let mut parts: Vec<String> = states
        .iter()
        .map(|s| format!("{} {}", s.role.as_str(), s.status.as_str()))
        .collect();
    parts.sort();
    parts.dedup();
    parts.join(", ")
}

/// Pauses every running partition of `name`'s live generations: runners leave them alone
/// until [`resume`]. Refused if none is running (paused already, or faulted: retry or skip).
pub async fn pause(store: &dyn ProjectionStore, name: &str) -> Result<u64, AdminError> {
    let states = live(store, name).await?;
    let running: Vec<&ProjectionState> = states
        .iter()
        .filter(|s| s.status == ProjectionStatus::Running)
        .collect();
    if running.is_empty() {
        return Err(AdminError::WrongState {
            name: name.to_string(),
            state: describe(&states),
            hint: "nothing is running to pause".into(),
        });
    }
    set_each(store, name, running, ProjectionStatus::Paused).await
}

/// Resumes every paused partition of `name`'s live generations. Refused if none is paused
/// (a faulted one is retried or skipped, not resumed).
pub async fn resume(store: &dyn ProjectionStore, name: &str) -> Result<u64, AdminError> {
    let states = live(store, name).await?;
    set_from(
        store,
        name,
        &states,
        ProjectionStatus::Paused,
        "nothing is paused; a faulted projection is retried or skipped (`retry`, `skip`)",
    )
    .await
}

/// Applies the failed event of every faulted partition of `name` again (the runner retries
/// it with its usual backoff, and faults again if it still fails). Refused if none is
/// faulted.
pub async fn retry(store: &dyn ProjectionStore, name: &str) -> Result<u64, AdminError> {
    let states = live(store, name).await?;
    set_from(
        store,
        name,
        &states,
        ProjectionStatus::Faulted,
        "nothing is faulted to retry",
    )
    .await
}

async fn set_from(
    store: &dyn ProjectionStore,
    name: &str,
    states: &[ProjectionState],
    from: ProjectionStatus,
    hint: &str,
) -> Result<u64, AdminError> {
    let matching: Vec<&ProjectionState> = states.iter().filter(|s| s.status == from).collect();
    if matching.is_empty() {
        return Err(AdminError::WrongState {
            name: name.to_string(),
            state: describe(states),
            hint: hint.to_string(),
        });
    }
    set_each(store, name, matching, ProjectionStatus::Running).await
}

/// An event an operator skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The generation.
    pub version: u32,
    /// The partition.
    pub partition: u32,
    /// The event's position in `$all`.
    pub position: u64,
    /// The error it failed with.
    pub error: Option<String>,
}

/// Moves every faulted partition of `name` past the event it failed on and resumes it. The
/// events skipped are returned (and logged), so nothing is skipped silently. Refused if
/// none is faulted.
pub async fn skip(store: &dyn ProjectionStore, name: &str) -> Result<Vec<Skipped>, AdminError> {
    let states = live(store, name).await?;
    let faulted: Vec<&ProjectionState> = states
        .iter()
        .filter(|s| s.status == ProjectionStatus::Faulted && s.failed_position.is_some())
        .collect();
    if faulted.is_empty() {
        return Err(AdminError::WrongState {
            name: name.to_string(),
            state: describe(&states),
            hint: "nothing is faulted to skip".into(),
        });
    }
    let mut out = Vec::new();
    for s in faulted {
        if store.skip_failed(name, s.version, s.partition).await? {
            let position = s.failed_position.map(Position::get).unwrap_or_default();
            tracing::warn!(projection = %name, generation = s.version, partition = s.partition, position, error = ?s.last_error, "an operator skipped the failed event");
            out.push(Skipped {
                version: s.version,
                partition: s.partition,
                position,
                error: s.last_error.clone(),
            });
        }
    }
    Ok(out)
}

/// Drops the tables and state of every retired generation of `name`; returns their
/// numbers. Refused if there is none.
pub async fn drop_old(store: &dyn ProjectionStore, name: &str) -> Result<Vec<u32>, AdminError> {
    runnel_core::projection::validate_identifier("projection name", name)?;
    let states = store.states(Some(name)).await?;
    if states.is_empty() {
        return Err(AdminError::Unknown(name.to_string()));
    }
    let mut retired: Vec<u32> = states
        .iter()
        .filter(|s| s.role == VersionRole::Retired)
        .map(|s| s.version)
        .collect();
    retired.dedup();
    if retired.is_empty() {
        return Err(AdminError::WrongState {
            name: name.to_string(),
            state: describe(&states),
            hint: "there is no retired generation to drop".into(),
        });
    }
    for version in &retired {
        store.drop_version(name, *version).await?;
    }
    Ok(retired)
}

/// Starts (or resumes) a rebuild of `name` without downtime: see
/// [`ProjectionStore::rebuild`]. A paused rebuild is resumed.
pub async fn rebuild(
    store: &dyn ProjectionStore,
    name: &str,
) -> Result<RebuildStarted, AdminError> {
    runnel_core::projection::validate_identifier("projection name", name)?;
    if store.states(Some(name)).await?.is_empty() {
        return Err(AdminError::Unknown(name.to_string()));
    }
    if let Some(source) = store.topic_sources(Some(name)).await?.into_iter().next() {
        return Err(topic_refusal(&source));
    }
    let started = store.rebuild(name).await?;
    if !started.created {
        let states = store.states(Some(name)).await?;
        let paused = states
            .iter()
            .filter(|s| s.version == started.version && s.status == ProjectionStatus::Paused);
        set_each(store, name, paused, ProjectionStatus::Running).await?;
    }
    Ok(started)
}

/// Where a rebuild stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebuildProgress {
    /// Building: `done` of `total` positions of `$all`.
    Building {
        done: u64,
        total: u64,
        status: ProjectionStatus,
        error: Option<String>,
    },
    /// It caught up and is current now.
    Current,
    /// The generation is gone (replaced by newer code, or dropped) or retired.
    Gone,
}

/// Where generation `version` of `name` stands in its rebuild.
pub async fn rebuild_progress(
    store: &dyn ProjectionStore,
    events: &dyn EventStore,
    name: &str,
    version: u32,
) -> Result<RebuildProgress, AdminError> {
    let states: Vec<ProjectionState> = store
        .states(Some(name))
        .await?
        .into_iter()
        .filter(|s| s.version == version)
        .collect();
    let Some(first) = states.first() else {
        return Ok(RebuildProgress::Gone);
    };
    match first.role {
        VersionRole::Current => Ok(RebuildProgress::Current),
        VersionRole::Retired => Ok(RebuildProgress::Gone),
        VersionRole::Building => {
            let done = states
                .iter()
                .map(|s| s.checkpoint)
                .min()
                .unwrap_or_default();
            let faulted = states
                .iter()
                .find(|s| s.status != ProjectionStatus::Running);
            Ok(RebuildProgress::Building {
                done: done.get(),
                total: events.head_position().await?.get(),
                status: faulted.map_or(ProjectionStatus::Running, |s| s.status),
                error: faulted.and_then(|s| s.last_error.clone()),
            })
        }
    }
}

/// Pauses a building generation (an interrupted `runnel projections rebuild`): runners
/// stop filling it; [`rebuild`] resumes it from its checkpoint.
pub async fn pause_rebuild(
    store: &dyn ProjectionStore,
    name: &str,
    version: u32,
) -> Result<u64, AdminError> {
    let states = store.states(Some(name)).await?;
    let building = states.iter().filter(|s| {
        s.version == version
            && s.role == VersionRole::Building
            && s.status == ProjectionStatus::Running
    });
    set_each(store, name, building, ProjectionStatus::Paused).await
}

/// Sets `status` (clearing any fault) on each of `states`' partitions; returns how many
/// rows changed.
async fn set_each<'a>(
    store: &dyn ProjectionStore,
    name: &str,
    states: impl IntoIterator<Item = &'a ProjectionState>,
    status: ProjectionStatus,
) -> Result<u64, AdminError> {
    // Owned keys before the first await: the future stays `Send` for any caller (an axum
    // handler), which a borrowing iterator held across awaits would not be.
    let targets: Vec<(u32, u32)> = states
        .into_iter()
        .map(|s| (s.version, s.partition))
        .collect();
    set_targets(store, name, targets, status).await
}

async fn set_targets(
    store: &dyn ProjectionStore,
    name: &str,
    targets: Vec<(u32, u32)>,
    status: ProjectionStatus,
) -> Result<u64, AdminError> {
    let mut changed = 0;
    for (version, partition) in targets {
        changed += store
            .set_status(name, version, Some(partition), status, None)
            .await?;
    }
    Ok(changed)
}
