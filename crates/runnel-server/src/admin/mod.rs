//! The admin API under `/admin`: dead letters (counts, paging, one with its history,
//! retry one or many as a background operation, purge), background operations, the
//! outbox, consumers' lag, sagas, projections and stream jobs; and who the caller is. Every route's role is in
//! [`ROUTES`](crate::routes::ROUTES); a viewer never sees a message body.

pub mod consumers;
pub mod dead_letters;
pub mod outbox;
pub mod processors;
pub mod stream_jobs;
pub mod whoami;

use crate::auth::{Caller, Role};

/// Whether `caller` may see message bodies (payloads and application headers): operators
/// and admins. Viewers see ids, types, times, errors and counts only.
pub fn sees_bodies(caller: &Caller) -> bool {
    caller.role >= Role::Operator
}
