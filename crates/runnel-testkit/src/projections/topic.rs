//! Checks of projections fed from a bus topic: the topic source, `commit_message` with its
//! inbox (duplicates, failing statements, the bound), retired generations, and the refused
//! rebuild.

use runnel_core::projection::{
    MessageCommit, MessageOutcome, ProjectionStore, TopicSource, VersionRole,
};
use runnel_core::StoreError;

use super::{insert, pair, register, spec, states, StoreUnderTest, ITEMS_VIEW, NAME};
use crate::harness::{expect_err, Must};

/// The topic the checks' projection reads.
pub const SOURCE_TOPIC: &str = "shipping.ShipmentCreated";
/// The group it reads it as.
pub const SOURCE_GROUP: &str = "projection-conformance";

/// [`NAME`]'s topic source.
pub fn topic_source() -> TopicSource {
    TopicSource {
        name: NAME.into(),
        topic: SOURCE_TOPIC.into(),
        group: SOURCE_GROUP.into(),
    }
}

/// Message `id`'s writes to generation 1 of [`NAME`], the inbox keeping 100 ids.
pub fn message_commit(
    id: &str,
    statements: Vec<runnel_core::projection::Statement>,
) -> MessageCommit {
    MessageCommit {
        name: NAME.into(),
        version: 1,
        message_id: id.into(),
        statements,
        outbox: vec![],
        inbox_keep: 100,
    }
}

/// Records [`NAME`]'s topic source and registers its version 1.
async fn topic_registered<S: ProjectionStore + ?Sized>(store: &S) {
    store
        .set_topic_source(&topic_source())
        .await
        .must("set_topic_source");
    assert_eq!(register(store, &spec(1)).await, VersionRole::Current);
}

async fn commit_message<S: ProjectionStore + ?Sized>(
    store: &S,
    commit: MessageCommit,
) -> MessageOutcome {
    store.commit_message(commit).await.must("commit_message")
}

async fn applied<S: ProjectionStore + ?Sized>(store: &S, version: u32) -> u64 {
    states(store)
        .await
        .into_iter()
        .find(|s| s.version == version)
        .map(|s| s.events_applied)
        .unwrap_or_else(|| panic!("no state of generation {version}"))
}

/// A message's statements commit with its id; the same id again (a redelivery, with
/// whatever writes it brings) writes nothing and says `Duplicate`; `events_applied`
/// counts messages applied, and the checkpoint stays at 0.
pub async fn a_topic_message_commits_once_and_its_duplicate_writes_nothing<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    topic_registered(&*store).await;
    assert_eq!(
        commit_message(&*store, message_commit("m-1", vec![insert("a", 1)])).await,
        MessageOutcome::Committed
    );
    assert_eq!(
        commit_message(&*store, message_commit("m-1", vec![insert("b", 2)])).await,
        MessageOutcome::Duplicate
    );
    assert_eq!(
        commit_message(&*store, message_commit("m-2", vec![insert("c", 3)])).await,
        MessageOutcome::Committed
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1), pair("c", 3)]);
    assert_eq!(applied(&*store, 1).await, 2);
    assert_eq!(states(&*store).await[0].checkpoint.get(), 0);
    assert_eq!(
        store.topic_sources(None).await.must("topic_sources"),
        vec![topic_source()]
    );
}

/// A failing statement rolls the whole message back — the statements before it, and its
/// inbox row — so the message applies in full when it comes again.
pub async fn a_failing_topic_statement_writes_nothing_and_records_no_id<
    S: ProjectionStore + ?Sized,
>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    topic_registered(&*store).await;
    let bad = runnel_core::projection::Statement {
        sql: "INSERT INTO {items} (id, n) VALUES ($1, NULL)".into(),
        params: vec!["x".into()],
    };
    match commit_message(&*store, message_commit("m-1", vec![insert("a", 1), bad])).await {
        MessageOutcome::StatementFailed { index, error } => {
            assert_eq!(index, 1);
            assert!(!error.is_empty());
        }
        other => panic!("expected StatementFailed, got {other:?}"),
    }
    assert!(db.pairs(ITEMS_VIEW).await.is_empty());
    assert_eq!(applied(&*store, 1).await, 0);
    assert_eq!(
        commit_message(&*store, message_commit("m-1", vec![insert("a", 1)])).await,
        MessageOutcome::Committed,
        "the failed attempt recorded no id"
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("a", 1)]);
    assert_eq!(applied(&*store, 1).await, 1);
}

/// The inbox keeps the newest `inbox_keep` ids of a projection: older ones are forgotten
/// (and would apply again), newer ones are still duplicates.
pub async fn the_topic_inbox_keeps_only_its_newest_ids<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    topic_registered(&*store).await;
    let keep_two = |id: &str, n: i64| MessageCommit {
        inbox_keep: 2,
        ..message_commit(id, vec![insert(id, n)])
    };
    for (i, id) in ["m1", "m2", "m3"].into_iter().enumerate() {
        assert_eq!(
            commit_message(&*store, keep_two(id, i as i64)).await,
            MessageOutcome::Committed
        );
    }
    assert_eq!(
        commit_message(&*store, keep_two("m3", 0)).await,
        MessageOutcome::Duplicate
    );
    assert_eq!(
        commit_message(&*store, keep_two("m2", 0)).await,
        MessageOutcome::Duplicate
    );
    // m1 was forgotten: it applies again (its row exists, so its insert fails — which
    // proves the inbox let it through).
    assert!(matches!(
        commit_message(&*store, keep_two("m1", 0)).await,
        MessageOutcome::StatementFailed { .. }
    ));
    assert_eq!(
        db.pairs(ITEMS_VIEW).await,
        vec![pair("m1", 0), pair("m2", 1), pair("m3", 2)]
    );
}

/// A topic projection cannot be rebuilt (a topic cannot be replayed from its start): the
/// store refuses, naming the topic, and creates no generation.
pub async fn a_topic_projection_is_never_rebuilt<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let store = t.store;
    topic_registered(&*store).await;
    let before = states(&*store).await;
    let e = expect_err("rebuild a topic projection", store.rebuild(NAME).await);
    match &e {
        StoreError::InvalidArgument(text) => {
            assert!(text.contains(SOURCE_TOPIC), "{text}");
            assert!(text.contains("cannot be rebuilt"), "{text}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(states(&*store).await, before);
}

/// A topic source cannot take the name of a projection of `$all`; recording a topic
/// source again updates its topic and group; a projection without a topic source cannot
/// commit messages.
pub async fn topic_sources_are_recorded_once_per_name<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let store = t.store;
    register(&*store, &spec(1)).await;
    let e = expect_err(
        "a topic source named like a projection of $all",
        store.set_topic_source(&topic_source()).await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    assert!(store.topic_sources(None).await.must("sources").is_empty());
    let e = expect_err(
        "commit a message to a projection of $all",
        store
            .commit_message(message_commit("m-1", vec![insert("a", 1)]))
            .await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");

    let other = TopicSource {
        name: "shipments".into(),
        ..topic_source()
    };
    store.set_topic_source(&other).await.must("set");
    let moved = TopicSource {
        topic: "shipping.v2".into(),
        ..other.clone()
    };
    store.set_topic_source(&moved).await.must("set again");
    assert_eq!(
        store.topic_sources(Some("shipments")).await.must("sources"),
        vec![moved]
    );
    let bad = TopicSource {
        group: String::new(),
        ..other
    };
    let e = expect_err("an empty group", store.set_topic_source(&bad).await);
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let e = expect_err(
        "an empty message id",
        store.commit_message(message_commit("", vec![])).await,
    );
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
}

/// Once a newer generation is current, a message for the retired one writes nothing and
/// records no id (`Retired`): the newer generation applies it.
pub async fn a_message_for_a_retired_generation_writes_nothing<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    topic_registered(&*store).await;
    assert_eq!(register(&*store, &spec(2)).await, VersionRole::Building);
    store.switch(NAME, 2).await.must("switch");
    assert_eq!(
        commit_message(&*store, message_commit("m-1", vec![insert("old", 1)])).await,
        MessageOutcome::Retired
    );
    assert!(db.pairs("SELECT id, n FROM items_v1").await.is_empty());
    let mut newer = message_commit("m-1", vec![insert("new", 2)]);
    newer.version = 2;
    assert_eq!(
        commit_message(&*store, newer).await,
        MessageOutcome::Committed
    );
    assert_eq!(db.pairs(ITEMS_VIEW).await, vec![pair("new", 2)]);
    assert_eq!(applied(&*store, 2).await, 1);
}

/// Racing deliveries of one message (several consumers got it at once) commit it once:
/// each racer writes a row of its own, so a second commit would show as a second row.
pub async fn racing_deliveries_of_one_message_commit_once<S: ProjectionStore + ?Sized>(
    t: StoreUnderTest<S>,
) {
    let (store, db) = (t.store, t.read_model);
    topic_registered(&*store).await;
    let mut racers = Vec::new();
    for n in 0..super::RACERS {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            store
                .commit_message(message_commit("m-1", vec![insert(&format!("r{n}"), 1)]))
                .await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.expect("racer task").must("commit_message") {
            MessageOutcome::Committed => won += 1,
            MessageOutcome::Duplicate => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one delivery commits");
    assert_eq!(db.pairs(ITEMS_VIEW).await.len(), 1);
    assert_eq!(applied(&*store, 1).await, 1);
}
