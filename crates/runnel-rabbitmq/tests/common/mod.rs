//! Shared by the integration tests: the broker from `RUNNEL_TEST_AMQP_URL`.
#![allow(dead_code)]

use runnel_rabbitmq::RabbitOptions;

/// The env var naming the test broker.
pub const URL_VAR: &str = "RUNNEL_TEST_AMQP_URL";

/// The broker URL, or `None` (with a loud SKIPPED) when it is not configured; with
/// `RUNNEL_REQUIRE_SERVICES=1` a missing URL fails the test.
pub fn test_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{URL_VAR} is not set but RUNNEL_REQUIRE_SERVICES=1");
            }
            eprintln!("SKIPPED: {URL_VAR} is not set; RabbitMQ tests did not run");
            None
        }
    }
}

/// Options for tests: short retention, and group queues the broker deletes once unused
/// for a while (tests leave many fresh groups behind on the shared broker).
pub fn test_options() -> Option<RabbitOptions> {
    let url = test_url()?;
    Some(options_for(&url))
}

/// Test options for `url`.
pub fn options_for(url: &str) -> RabbitOptions {
    let sep = if url.contains('?') { '&' } else { '?' };
    RabbitOptions::from_url(&format!("{url}{sep}retention=1h&group_expires=10m"))
        .expect("a valid test URL")
}
