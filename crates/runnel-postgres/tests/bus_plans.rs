//! The bus's PL/pgSQL functions keep using the indexes after the queue grows: their plans are
//! cached per connection, and a plan made while the tables were empty must not keep scanning
//! them whole as the backlog accumulates (publish and ack latency would grow with it).

mod common;

use runnel_postgres::sqlx::{self, Connection as _, PgConnection};
use runnel_postgres::{PostgresOptions, PostgresStore};

async fn publish(conn: &mut PgConnection, schema: &str, key: &[u8]) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {schema}.bus_publish('plans', 'runnel_plans', $1, $2, $3, now())"
    )))
    .bind(vec![key.to_vec()])
    .bind(vec![b"{}".to_vec()])
    .bind(vec![b"payload".to_vec()])
    .execute(conn)
    .await
    .expect("bus_publish");
}

/// Leases the group's oldest head row by hand (as a claim would) and acknowledges it,
/// alone (`bus_ack`) or as a group commit does (`bus_ack_rows`).
async fn ack_oldest_head(conn: &mut PgConnection, schema: &str, topic: i64, group: i64) {
    let (seq, owner) = lease_oldest_head(conn, schema, group).await;
    let acked: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {schema}.bus_ack($1, $2, $3, $4, 1, 'runnel_plans', 'plans')"
    )))
    .bind(topic)
    .bind(group)
    .bind(seq)
    .bind(owner)
    .fetch_one(&mut *conn)
    .await
    .expect("bus_ack");
    assert!(acked, "the lease was ours");
    let (seq, owner) = lease_oldest_head(conn, schema, group).await;
    let outcomes: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {schema}.bus_ack_rows(ARRAY[$1], ARRAY[$2], ARRAY[$3], ARRAY[$4], ARRAY[1])"
    )))
    .bind(topic)
    .bind(group)
    .bind(seq)
    .bind(owner)
    .fetch_one(conn)
    .await
    .expect("bus_ack_rows");
    assert!(outcomes[0] > 0, "the lease was ours");
}

async fn lease_oldest_head(
    conn: &mut PgConnection,
    schema: &str,
    group: i64,
) -> (i64, runnel_core::uuid::Uuid) {
    let owner = runnel_core::EventId::new().0;
    let seq: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.bus_queue SET lease_owner = $2, attempt = 1
          WHERE group_id = $1 AND seq = (SELECT min(seq) FROM {schema}.bus_queue
                                          WHERE group_id = $1 AND head)
         RETURNING seq"
    )))
    .bind(group)
    .bind(owner)
    .fetch_one(&mut *conn)
    .await
    .expect("lease a head row");
    (seq, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_ack_use_indexes_after_the_queue_grows_from_empty() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let _store = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
        .await
        .expect("connect");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let (topic, group): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o_topic_id, o_group_id FROM {schema}.bus_subscribe('plans', 'g1', false, now())"
    )))
    .fetch_one(&mut conn)
    .await
    .expect("bus_subscribe");

    // Enough calls on empty tables for the plan cache to settle on plans made now.
    // (Each ack_oldest_head acknowledges two rows.)
    for _ in 0..16 {
        publish(&mut conn, &schema, b"key-1").await;
    }
    for _ in 0..8 {
        ack_oldest_head(&mut conn, &schema, topic, group).await;
    }

    // A backlog builds up behind the cached plans' back: 20k messages over 1,000 keys.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.bus_messages (topic_id, ordering_key, envelope, payload, published_at)
           SELECT {topic}, convert_to('bulk-' || (g % 1000), 'UTF8'), '\\x7b7d'::bytea,
                  '\\x00'::bytea, now()
             FROM generate_series(1, 20000) g;
         INSERT INTO {schema}.bus_queue (group_id, seq, ordering_key, head, visible_at, attempt)
           SELECT {group}, m.seq, m.ordering_key,
                  m.seq = min(m.seq) OVER (PARTITION BY m.ordering_key), now(), 0
             FROM {schema}.bus_messages m
            WHERE m.ordering_key IS NOT NULL AND convert_from(m.ordering_key, 'UTF8') LIKE 'bulk-%';"
    )))
    .execute(&mut conn)
    .await
    .expect("bulk load");

    let mut tx = conn.begin().await.expect("begin");
    let queue = format!("{schema}.bus_queue");
    let messages = format!("{schema}.bus_messages");
    let queue_before = common::seq_scans_in_transaction(&mut tx, &queue).await;
    let messages_before = common::seq_scans_in_transaction(&mut tx, &messages).await;
    for key in [&b"key-1"[..], b"bulk-7", b"key-2"] {
        publish(&mut tx, &schema, key).await;
    }
    ack_oldest_head(&mut tx, &schema, topic, group).await;
    let queue_scans = common::seq_scans_in_transaction(&mut tx, &queue).await - queue_before;
    let messages_scans =
        common::seq_scans_in_transaction(&mut tx, &messages).await - messages_before;
    tx.commit().await.expect("commit");
    assert_eq!(
        (queue_scans, messages_scans),
        (0, 0),
        "publish and ack after the queue grew scanned whole tables (bus_queue, bus_messages)"
    );

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .expect("drop the test schema");
}

/// A plan made after the queue grew (a new connection, or a cached plan remade once
/// autovacuum's ANALYZE changed the statistics) probes the queue by index too. Before
/// migration 15, `bus_publish`'s `head` decision was a `NOT EXISTS` the planner turned into
/// a hashed subplan once the statistics showed a few thousand rows: every call read the
/// whole queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_planned_on_a_grown_queue_probes_it_by_index() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let _store = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
        .await
        .expect("connect");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let (topic, group): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o_topic_id, o_group_id FROM {schema}.bus_subscribe('plans', 'g1', false, now())"
    )))
    .fetch_one(&mut conn)
    .await
    .expect("bus_subscribe");
    // 20k queued messages over 1,000 keys, and statistics that say so.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.bus_messages (topic_id, ordering_key, envelope, payload, published_at)
           SELECT {topic}, convert_to('bulk-' || (g % 1000), 'UTF8'), '\\x7b7d'::bytea,
                  '\\x00'::bytea, now()
             FROM generate_series(1, 20000) g;
         INSERT INTO {schema}.bus_queue (group_id, seq, ordering_key, head, visible_at, attempt)
           SELECT {group}, m.seq, m.ordering_key,
                  m.seq = min(m.seq) OVER (PARTITION BY m.ordering_key), now(), 0
             FROM {schema}.bus_messages m;
         ANALYZE {schema}.bus_queue;
         ANALYZE {schema}.bus_messages;"
    )))
    .execute(&mut conn)
    .await
    .expect("bulk load");
    drop(conn);

    // A new connection plans with those statistics.
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    let queue = format!("{schema}.bus_queue");
    let before = common::seq_scans_in_transaction(&mut tx, &queue).await;
    // Custom plans first, then the generic one the cache keeps; keys already queued
    // (not heads) and new ones (heads).
    for round in 0..8 {
        let keys: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("bulk-{}", round * 100 + i * 3).into_bytes())
            .chain((0..20).map(|i| format!("new-{round}-{i}").into_bytes()))
            .collect();
        let n = keys.len();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {schema}.bus_publish('plans', NULL, $1, $2, $3, now())"
        )))
        .bind(keys)
        .bind(vec![b"{}".to_vec(); n])
        .bind(vec![b"payload".to_vec(); n])
        .execute(&mut *tx)
        .await
        .expect("bus_publish");
    }
    let scans = common::seq_scans_in_transaction(&mut tx, &queue).await - before;
    let heads: Vec<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT convert_from(ordering_key, 'UTF8'), head FROM {schema}.bus_queue
          WHERE group_id = $1 AND seq > (SELECT max(seq) - 960 FROM {schema}.bus_queue)
          ORDER BY seq"
    )))
    .bind(group)
    .fetch_all(&mut *tx)
    .await
    .expect("read the new rows");
    tx.commit().await.expect("commit");
    assert_eq!(scans, 0, "bus_publish scanned the whole queue");
    assert_eq!(heads.len(), 960);
    for (key, head) in heads {
        assert_eq!(
            head,
            key.starts_with("new-"),
            "{key}: only keys the queue did not hold become heads"
        );
    }

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .expect("drop the test schema");
}
