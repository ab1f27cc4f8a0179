//! Turning rows back into typed values, checking what the disk hands back.

use chrono::{DateTime, Utc};
use runnel_core::{EventId, Metadata, Position, RecordedEvent, StoreError, StreamName};
use uuid::Uuid;

/// The column list every event query selects, in the order [`event_from_row`] reads.
pub(crate) const EVENT_COLUMNS: &str = "e.position, e.event_id, s.name, e.revision, \
     e.event_type, e.schema_version, e.content_type, e.data, e.metadata, e.recorded_at";

/// [`EVENT_COLUMNS`] with `NULL` for the metadata: reads that do not want it skip copying
/// and parsing it.
pub(crate) const EVENT_COLUMNS_NO_METADATA: &str = "e.position, e.event_id, s.name, e.revision, \
     e.event_type, e.schema_version, e.content_type, e.data, NULL, e.recorded_at";

pub(crate) fn micros_to_time(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {micros} is out of range")))
}

pub(crate) fn time_to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Reads one event row selected with [`EVENT_COLUMNS`].
pub(crate) fn event_from_row(row: &rusqlite::Row<'_>) -> Result<RecordedEvent, StoreError> {
    event_from_row_of(row, None)
}

/// [`event_from_row`] for rows of one stream whose name the query fixed (`s.name = ?`):
/// the name is not read back and validated for every row.
pub(crate) fn event_from_row_of(
    row: &rusqlite::Row<'_>,
    known_stream: Option<&StreamName>,
) -> Result<RecordedEvent, StoreError> {
    let get_err = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable event row: {e}"));
    let position: i64 = row.get(0).map_err(get_err)?;
    // The id is read in place: no owned copy per row.
    let id: [u8; 16] = row
        .get_ref(1)
        .map_err(get_err)?
        .as_blob()
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!("event id at position {position} is not 16 bytes"))
        })?;
    let stream = match known_stream {
        Some(name) => name.clone(),
        None => {
            let stream: String = row.get(2).map_err(get_err)?;
            StreamName::new(stream).map_err(|e| {
                StoreError::Corrupt(format!("stream name at position {position}: {e}"))
            })?
        }
    };
    let revision: i64 = row.get(3).map_err(get_err)?;
    let event_type: String = row.get(4).map_err(get_err)?;
    let schema_version: i64 = row.get(5).map_err(get_err)?;
    let content_type: String = row.get(6).map_err(get_err)?;
    let data: Vec<u8> = row.get(7).map_err(get_err)?;
    let metadata: Option<String> = row.get(8).map_err(get_err)?;
    let recorded_at: i64 = row.get(9).map_err(get_err)?;

    let id = Uuid::from_bytes(id);
    let metadata = match metadata {
        None => Metadata::default(),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("metadata at position {position}: {e}")))?,
    };
    debug_assert!(position > 0 && revision > 0);
    Ok(RecordedEvent {
        id: EventId(id),
        stream,
        revision: revision as u64,
        position: Position(position as u64),
        recorded_at: micros_to_time(recorded_at)?,
        event_type,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| StoreError::Corrupt(format!("schema version {schema_version}")))?,
        content_type,
        data,
        metadata,
    })
}
