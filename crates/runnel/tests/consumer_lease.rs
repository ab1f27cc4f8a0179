//! The delivery's lease while a handler runs: with `keep_lease_alive` a handler slower
//! than the ack timeout keeps its delivery (extended every third of the ack timeout), so
//! the ack timeout can be short — only how long a crashed consumer's deliveries wait before
//! they come back; without it the lease is left to run out.

mod consumer_support;

use std::time::Duration;

use consumer_support::*;
use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::core::bus::SubscribeOptions;

const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Longer than three ack timeouts.
const HANDLING: Duration = Duration::from_millis(9_500);

async fn handle_slowly(keep_lease_alive: bool) -> Vec<SettleKind> {
    let bus = FakeBus::new();
    let mut builder = Consumer::builder(bus.clone(), topic(), group())
        .handler(|_ctx: HandlerContext| async move {
            tokio::time::sleep(HANDLING).await;
            Ok::<_, HandlerError>(())
        })
        .dead_letters(MemoryDeadLetters::new())
        .subscribe_options(SubscribeOptions {
            ack_timeout: ACK_TIMEOUT,
            ..SubscribeOptions::default()
        })
        .no_handler_timeout();
    if keep_lease_alive {
        builder = builder.keep_lease_alive();
    }
    let consumer = builder.start().await.unwrap();
    bus.deliver(msg("m-1", Some("k")));
    bus.wait_acked(&["m-1"]).await;
    consumer.shutdown(Duration::from_secs(1)).await.unwrap();
    bus.events_for("m-1")
}

#[tokio::test(start_paused = true)]
async fn keep_lease_alive_extends_a_slow_handlers_lease_until_it_is_done() {
    let events = handle_slowly(true).await;
    // Extended at 2, 4, 6 and 8 s (each time less than half an ack timeout was left), by
    // an ack timeout each: held without a gap until the ack at 9.5 s.
    assert_eq!(
        events,
        [
            SettleKind::Extend(ACK_TIMEOUT),
            SettleKind::Extend(ACK_TIMEOUT),
            SettleKind::Extend(ACK_TIMEOUT),
            SettleKind::Extend(ACK_TIMEOUT),
            SettleKind::Ack
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn without_keep_lease_alive_a_slow_handlers_lease_is_not_extended() {
    assert_eq!(handle_slowly(false).await, [SettleKind::Ack]);
}
