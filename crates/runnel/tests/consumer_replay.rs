//! Dead-letter replays addressed to one group: the router of every other group acknowledges
//! them without handling, before any layer — they do not even wait in their key's line.

mod consumer_support;

use std::sync::Arc;
use std::time::Duration;

use consumer_support::*;
use runnel::consumer::inbox::{MemoryInbox, MemoryInboxScope};
use runnel::consumer::{Consumer, HandlerContext};
use runnel::dead_letter::REPLAY_GROUP_HEADER;
use tokio::sync::Notify;

#[tokio::test(start_paused = true)]
async fn replay_for_another_group_is_acked_without_handling() {
    let bus = FakeBus::new();
    let inbox = Arc::new(MemoryInbox::new());
    let handled = Log::<String>::new();
    let release_slow = Arc::new(Notify::new());
    let (h, release) = (Arc::clone(&handled), Arc::clone(&release_slow));
    let consumer = Consumer::builder(bus.clone(), topic(), group())
        .handler(move |ctx: HandlerContext| {
            let (handled, release) = (Arc::clone(&h), Arc::clone(&release));
            async move {
                let id = ctx.message().id.clone();
                if id == "slow" {
                    release.notified().await;
                }
                ctx.scope::<MemoryInboxScope>()
                    .await?
                    .record(format!("handled {id}"));
                handled.push(id);
                Ok(())
            }
        })
        .inbox(inbox.clone())
        .dead_letters(MemoryDeadLetters::new())
        .start()
        .await
        .unwrap();

    // Key "k" is busy with "slow"; a replay for group "shipping" on the same key is still
    // acked at once: it is not this group's, so it never queues behind "slow".
    bus.deliver(msg("slow", Some("k")));
    bus.deliver(msg("for-shipping", Some("k")).with_header(REPLAY_GROUP_HEADER, "shipping"));
    bus.wait_acked(&["for-shipping"]).await;
    assert!(
        handled.snapshot().is_empty(),
        "something was handled before the slow message was released"
    );

    // A replay addressed to this very group is handled like any message.
    bus.deliver(msg("for-billing", Some("b")).with_header(REPLAY_GROUP_HEADER, group().as_str()));
    bus.wait_acked(&["for-billing"]).await;
    release_slow.notify_one();
    bus.wait_acked(&["slow"]).await;

    let mut seen = handled.snapshot();
    seen.sort();
    assert_eq!(seen, ["for-billing", "slow"]);
    assert!(
        !inbox.effects().iter().any(|e| e.contains("for-shipping")),
        "the replay for another group left an effect"
    );
    assert_eq!(bus.acks("for-shipping"), 1);
    let report = consumer.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.acked, 3);
}
