//! `bus_ack_rows`, the acks of one group commit, at the SQL level (set-based since
//! migration 15): each row's outcome — 0 lease lost, 1 acknowledged, 2 acknowledged and its
//! key's next row became the head — and the heads it leaves. Also: a schema of the
//! version before migration 15, with leased rows queued by its functions, upgrades in place
//! and the new functions settle those rows.

mod common;

use runnel_core::uuid::Uuid;
use runnel_postgres::sqlx::{self, Connection as _, PgConnection};
use runnel_postgres::{PostgresOptions, PostgresStore};

const OWNER: Uuid = Uuid::from_u128(1);
const STRANGER: Uuid = Uuid::from_u128(2);

/// Publishes one message per key (`None` = unordered) to topic `t`; returns their seqs.
async fn publish(conn: &mut PgConnection, schema: &str, keys: &[Option<&str>]) -> Vec<i64> {
    let n = keys.len();
    let keys: Vec<Option<Vec<u8>>> = keys.iter().map(|k| k.map(|k| k.into())).collect();
    let before: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(max(seq), 0) FROM {schema}.bus_messages"
    )))
    .fetch_one(&mut *conn)
    .await
    .expect("read the log");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {schema}.bus_publish('t', NULL, $1, $2, $3, now())"
    )))
    .bind(keys)
    .bind(vec![b"{}".to_vec(); n])
    .bind(vec![b"payload".to_vec(); n])
    .execute(&mut *conn)
    .await
    .expect("bus_publish");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT seq FROM {schema}.bus_messages WHERE seq > $1 ORDER BY seq"
    )))
    .bind(before)
    .fetch_all(conn)
    .await
    .expect("read the new log rows")
}

/// Leases every head row of the group to OWNER, attempt 1, as a claim would.
async fn lease_heads(conn: &mut PgConnection, schema: &str, group: i64) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.bus_queue SET lease_owner = $2, attempt = 1
          WHERE group_id = $1 AND head AND lease_owner IS NULL"
    )))
    .bind(group)
    .bind(OWNER)
    .execute(conn)
    .await
    .expect("lease the heads");
}

/// `bus_ack_rows` of `(group, seq, owner)` rows of topic 1, attempt 1.
async fn ack_rows(conn: &mut PgConnection, schema: &str, rows: &[(i64, i64, Uuid)]) -> Vec<i32> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {schema}.bus_ack_rows($1, $2, $3, $4, $5)"
    )))
    .bind(vec![1i64; rows.len()])
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(vec![1i32; rows.len()])
    .fetch_one(conn)
    .await
    .expect("bus_ack_rows")
}

/// The group's queue: (seq, head), by seq.
async fn queue(conn: &mut PgConnection, schema: &str, group: i64) -> Vec<(i64, bool)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT seq, head FROM {schema}.bus_queue WHERE group_id = $1 ORDER BY seq"
    )))
    .bind(group)
    .fetch_all(conn)
    .await
    .expect("read the queue")
}

async fn subscribe(conn: &mut PgConnection, schema: &str, group: &str) -> i64 {
    let (_, group_id): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o_topic_id, o_group_id FROM {schema}.bus_subscribe('t', $1, false, now())"
    )))
    .bind(group)
    .fetch_one(conn)
    .await
    .expect("bus_subscribe");
    group_id
}

async fn drop_schema(conn: &mut PgConnection, schema: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(conn)
        .await
        .expect("drop the test schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_one_transaction_report_each_rows_outcome_and_promote_each_keys_next_row() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let _store = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
        .await
        .expect("connect");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let g1 = subscribe(&mut conn, &schema, "g1").await;
    let g2 = subscribe(&mut conn, &schema, "g2").await;
    // Keys a and b have a second row; c and d have one; one unordered row.
    let seqs = publish(
        &mut conn,
        &schema,
        &[
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            None,
            Some("d"),
        ],
    )
    .await;
    let [a1, a2, b1, b2, c1, none, d1] = seqs[..] else {
        panic!("seven messages published: {seqs:?}");
    };
    lease_heads(&mut conn, &schema, g1).await;
    lease_heads(&mut conn, &schema, g2).await;

    let outcomes = ack_rows(
        &mut conn,
        &schema,
        &[
            (g1, a1, OWNER),    // a's next row becomes the head: 2
            (g1, b1, OWNER),    // 2
            (g1, none, OWNER),  // unordered: 1
            (g1, d1, OWNER),    // no next row: 1
            (g1, c1, STRANGER), // not this lease: 0
            (g1, a1, OWNER),    // acknowledged a moment ago in this call: 0
            (g2, b1, OWNER),    // the other group's row of b: 2
            (g1, a2, OWNER),    // not leased (not even a head before this call): 0
        ],
    )
    .await;
    assert_eq!(outcomes, [2, 2, 1, 1, 0, 0, 2, 0]);
    assert_eq!(
        queue(&mut conn, &schema, g1).await,
        [(a2, true), (b2, true), (c1, true)]
    );
    let g2_queue = queue(&mut conn, &schema, g2).await;
    assert_eq!(
        g2_queue,
        [
            (a1, true),
            (a2, false),
            (b2, true),
            (c1, true),
            (none, true),
            (d1, true)
        ]
    );
    // Nothing acknowledged: nothing changes.
    assert_eq!(
        ack_rows(&mut conn, &schema, &[(g1, c1, STRANGER)]).await,
        [0]
    );
    assert_eq!(ack_rows(&mut conn, &schema, &[]).await, Vec::<i32>::new());
    drop_schema(&mut conn, &schema).await;
}

/// A schema at version 14 (before migration 15), with rows queued and leased under its
/// functions, upgrades on open; the new `bus_publish` and `bus_ack_rows` carry on with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_version_14_upgrades_and_its_leased_rows_are_acknowledged() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let setup = common::schema_at_version_sql(&schema, 14);
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&mut conn)
        .await
        .expect("a schema at version 14");
    // The previous build's functions queue and lease these rows.
    let group = subscribe(&mut conn, &schema, "g").await;
    let old = publish(&mut conn, &schema, &[Some("k"), Some("k"), None]).await;
    lease_heads(&mut conn, &schema, group).await;

    let _store = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
        .await
        .expect("open and upgrade");
    let version: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT max(version) FROM {schema}.runnel_migrations"
    )))
    .fetch_one(&mut conn)
    .await
    .expect("version");
    assert!(version >= 15, "upgraded past migration 15, at {version}");

    // A new row of k queues behind the old ones; a new key is a head.
    let new = publish(&mut conn, &schema, &[Some("k"), Some("j")]).await;
    assert_eq!(
        queue(&mut conn, &schema, group).await,
        [
            (old[0], true),
            (old[1], false),
            (old[2], true),
            (new[0], false),
            (new[1], true)
        ]
    );
    let outcomes = ack_rows(
        &mut conn,
        &schema,
        &[(group, old[0], OWNER), (group, old[2], OWNER)],
    )
    .await;
    assert_eq!(outcomes, [2, 1]);
    assert_eq!(
        queue(&mut conn, &schema, group).await,
        [(old[1], true), (new[0], false), (new[1], true)]
    );
    drop_schema(&mut conn, &schema).await;
}
