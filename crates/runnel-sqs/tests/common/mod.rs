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
/// `wait_seconds=1`: moto 5.2.5 snapshots a FIFO queue's in-flight message groups when a
/// long poll starts, so a message made visible again by `ChangeMessageVisibility` (a nack)
/// during that poll is returned only by the next poll. Real SQS returns it at once; short
/// polls keep moto's delay to about a second (see DESIGN.md).
pub fn bus(endpoint: &str) -> Arc<SqsBus> {
    runnel_sqs::connect(&url(endpoint, "&wait_seconds=1")).expect("connect to SQS/SNS")
}
