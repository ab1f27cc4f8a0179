//! One append, executed inside the writer's batch transaction.

use runnel_core::{
    AppendResult, EventId, ExpectedRevision, Metadata, NewEvent, Position, StoreError, StreamName,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error_map::{is_unique_violation, map_sqlite};

/// Appends `events` to `stream` on `conn`, which must be inside a transaction (the caller
/// owns the savepoint that undoes a failed append). `now_micros` is the batch's timestamp.
///
/// Order of checks: idempotent retry first (a retry after an unknown outcome must not be
/// reported as a conflict), then the expected revision, then the inserts.
pub(crate) fn append_in_tx(
    conn: &Connection,
    now_micros: i64,
    stream: &StreamName,
    expected: ExpectedRevision,
    events: &[NewEvent],
    inline: &crate::store::InlineProjections,
) -> Result<AppendResult, StoreError> {
    debug_assert!(!events.is_empty());
    if let Some(found) = find_event(conn, &events[0].id)? {
        return check_retry(conn, stream, events, found);
    }

    let current: Option<(i64, i64)> = conn
        .prepare_cached("SELECT stream_id, revision FROM streams WHERE name = ?1")
        .map_err(map_sqlite)?
        .query_row([stream.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(map_sqlite)?;
    let actual = current.map(|(_, rev)| rev as u64);
    if !expected.matches(actual) {
        return Err(StoreError::Conflict {
            stream: stream.to_string(),
            expected,
            actual,
        });
    }

    let stream_id = match current {
        Some((id, _)) => id,
        None => {
            conn.prepare_cached(
                "INSERT INTO streams (name, category, revision, last_position, created_at, updated_at) \
                 VALUES (?1, ?2, 0, 0, ?3, ?3)",
            )
            .map_err(map_sqlite)?
            .execute(params![stream.as_str(), stream.category(), now_micros])
            .map_err(map_sqlite)?;
            conn.last_insert_rowid()
        }
    };

    let mut revision = actual.unwrap_or(0);
    let mut position = 0i64;
    {
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO events (event_id, stream_id, revision, category, event_type, \
                 schema_version, content_type, data, metadata, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(map_sqlite)?;
        for event in events {
            revision += 1;
            let metadata = encode_metadata(&event.metadata)?;
            let inserted = insert.execute(params![
                event.id.as_uuid().as_bytes().as_slice(),
                stream_id,
                revision as i64,
                stream.category(),
                event.event_type,
                i64::from(event.schema_version),
                event.content_type,
                event.data,
                metadata,
                now_micros,
            ]);
            match inserted {
                Ok(_) => position = conn.last_insert_rowid(),
                Err(e) if is_unique_violation(&e) => {
                    // A later event of this append is already stored: not a clean retry.
                    let existing_stream = find_event(conn, &event.id)?
                        .map(|f| f.stream)
                        .unwrap_or_default();
                    return Err(StoreError::DuplicateEventId {
                        event_id: event.id,
                        existing_stream,
                    });
                }
                Err(e) => return Err(map_sqlite(e)),
            }
        }
    }

    conn.prepare_cached(
        "UPDATE streams SET revision = ?1, last_position = ?2, updated_at = ?3 WHERE stream_id = ?4",
    )
    .map_err(map_sqlite)?
    .execute(params![revision as i64, position, now_micros, stream_id])
    .map_err(map_sqlite)?;

    debug_assert!(position > 0);
    if !inline.is_empty() {
        let first_revision = revision + 1 - events.len() as u64;
        crate::projections::apply_inline(
            conn,
            now_micros,
            inline,
            stream,
            first_revision,
            position,
            events,
        )?;
    }
    Ok(AppendResult {
        next_expected_revision: revision,
        position: Position(position as u64),
    })
}

struct Found {
    stream: String,
    revision: u64,
    position: u64,
}

fn find_event(conn: &Connection, id: &EventId) -> Result<Option<Found>, StoreError> {
    conn.prepare_cached(
        "SELECT s.name, e.revision, e.position FROM events e \
         JOIN streams s ON s.stream_id = e.stream_id WHERE e.event_id = ?1",
    )
    .map_err(map_sqlite)?
    .query_row([id.as_uuid().as_bytes().as_slice()], |r| {
        Ok(Found {
            stream: r.get(0)?,
            revision: r.get::<_, i64>(1)? as u64,
            position: r.get::<_, i64>(2)? as u64,
        })
    })
    .optional()
    .map_err(map_sqlite)
}

/// The first event id is stored: accept the append as a retry only if every event is
/// stored, in this stream, at consecutive revisions in this order.
fn check_retry(
    conn: &Connection,
    stream: &StreamName,
    events: &[NewEvent],
    first: Found,
) -> Result<AppendResult, StoreError> {
    let mismatch = |event_id: EventId, existing_stream: String| StoreError::DuplicateEventId {
        event_id,
        existing_stream,
    };
    if first.stream != stream.as_str() {
        return Err(mismatch(events[0].id, first.stream));
    }
    let mut last = first.position;
    for (i, event) in events.iter().enumerate().skip(1) {
        match find_event(conn, &event.id)? {
            Some(f) if f.stream == first.stream && f.revision == first.revision + i as u64 => {
                last = f.position;
            }
            Some(f) => return Err(mismatch(event.id, f.stream)),
            None => return Err(mismatch(events[0].id, first.stream)),
        }
    }
    Ok(AppendResult {
        next_expected_revision: first.revision + events.len() as u64 - 1,
        position: Position(last),
    })
}

fn encode_metadata(metadata: &Metadata) -> Result<Option<String>, StoreError> {
    if *metadata == Metadata::default() {
        return Ok(None);
    }
    serde_json::to_string(metadata)
        .map(Some)
        .map_err(|e| StoreError::Backend(format!("cannot encode metadata: {e}")))
}
