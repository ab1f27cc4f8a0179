//! Shared test setup: the moto (or AWS) endpoint from RUNNEL_TEST_SQS_ENDPOINT.
#![allow(dead_code)]

use std::sync::Arc;

use runnel_sqs::SqsBus;

pub const ENDPOINT_ENV: &str = "RUNNEL_TEST_SQS_ENDPOINT";

/// The endpoint, or `None` (after a loud SKIPPED, or a panic with RUNNEL_REQUIRE_SERVICES=1).
pub fn endpoint(test: &str) -> Option<String> {
    match std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty()) {
        Some(e) => Some(e),
        None => {
            if std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{test}: {ENDPOINT_ENV} is unset and RUNNEL_REQUIRE_SERVICES=1");
            }
            eprintln!("SKIPPED {test}: set {ENDPOINT_ENV} (e.g. http://127.0.0.1:4566) to run it");
            None
        }
    }
}

/// The sqs:// URL for `endpoint` with test credentials.
pub fn url(endpoint: &str, extra: &str) -> String {
    format!("sqs://test:test@us-east-1?endpoint={endpoint}{extra}")
}

/// A bus (one independent client pair) on `endpoint`.
///
/// `wait=0s` (short polls): moto 5.2.5 snapshots a FIFO queue's in-flight message
/// groups when a long poll starts. Two consumers long-polling one queue then break FIFO
/// order: a poll that began before a group went in flight hands out the group's later
/// messages (8 of 15 trials with two pollers and a 5-message batch). It also returns a
/// message made visible again by a nack only on the next poll. A short poll takes a fresh
/// look on every call; real SQS needs none of this (see DESIGN.md).
pub fn bus(endpoint: &str) -> Arc<SqsBus> {
    runnel_sqs::connect(&url(endpoint, "&wait=0s")).expect("connect to SQS/SNS")
}
