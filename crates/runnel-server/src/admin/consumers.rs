//! Consumers' lag over HTTP: what this process's consumer groups report on the
//! [lag board](runnel::consumer::lag_board).

use axum::Json;
use runnel::consumer::{lag_board, ConsumerLag};
use serde::Serialize;

/// What `GET /admin/consumers` answers.
#[derive(Debug, Serialize)]
pub struct Consumers {
    /// One entry per topic and group consumed in this process. Lag in messages comes from
    /// the bus (per group: the embedded bus and the brokers count a group's backlog as a
    /// whole, so there is one entry per group rather than per partition); lag in seconds is
    /// the age of the newest message received when it arrived.
    pub consumers: Vec<ConsumerLag>,
}

/// `GET /admin/consumers`.
pub async fn list() -> Json<Consumers> {
    Json(Consumers {
        consumers: lag_board(),
    })
}
