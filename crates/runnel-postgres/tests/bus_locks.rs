//! The bus's locks at the SQL level (`migrations/0013_bus_concurrency.sql`): publishes of
//! different keys do not wait for each other, while a publish and an ack of one key take
//! turns — in either order the key keeps exactly one head. Each step that must wait is
//! shown waiting (a lock not granted in `pg_locks`) before the other side commits. Also:
//! a schema made by the previous build upgrades in place, messages included.

mod common;

use std::time::Duration;

use runnel_postgres::sqlx::{self, Connection as _, PgConnection, PgPool};
use runnel_postgres::{PostgresOptions, PostgresStore};

/// Longest wait for a statement that must finish, or for one to start waiting.
const DEADLINE: Duration = Duration::from_secs(20);

struct Db {
    url: String,
    schema: String,
    topic_id: i64,
    group_id: i64,
    _store: PostgresStore,
}

impl Db {
    /// A fresh schema with topic `t` and group `g`.
    async fn new() -> Option<Db> {
        let url = common::postgres_url()?;
        let schema = common::fresh_schema();
        let store = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
            .await
            .expect("connect");
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        let (topic_id, group_id): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT o_topic_id, o_group_id FROM {schema}.bus_subscribe('t', 'g', false, now())"
        )))
        .fetch_one(&mut conn)
        .await
        .expect("bus_subscribe");
        Some(Db {
            url,
            schema,
            topic_id,
            group_id,
            _store: store,
        })
    }

    async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    async fn publish(&self, conn: &mut PgConnection, keys: &[&[u8]]) {
        let n = keys.len();
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let written: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {}.bus_publish('t', NULL, $1, $2, $3, now())",
            self.schema
        )))
        .bind(keys)
        .bind(vec![b"{}".to_vec(); n])
        .bind(vec![b"payload".to_vec(); n])
        .fetch_one(conn)
        .await
        .expect("bus_publish");
        assert_eq!(written as usize, n);
    }

    /// Leases row `seq` as a claim would; returns the owner.
    async fn lease(&self, conn: &mut PgConnection, seq: i64) -> runnel_core::uuid::Uuid {
        let owner = runnel_core::EventId::new().0;
        let leased = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {}.bus_queue SET lease_owner = $3, attempt = 1 \
              WHERE group_id = $1 AND seq = $2 AND head",
            self.schema
        )))
        .bind(self.group_id)
        .bind(seq)
        .bind(owner)
        .execute(conn)
        .await
        .expect("lease")
        .rows_affected();
        assert_eq!(leased, 1, "row {seq} is a head");
        owner
    }

    /// `bus_ack_row`'s outcome: 0 lost, 1 acked, 2 acked and the key's next row promoted.
    async fn ack(&self, conn: &mut PgConnection, seq: i64, owner: runnel_core::uuid::Uuid) -> i32 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {}.bus_ack_row($1, $2, $3, $4, 1)",
            self.schema
        )))
        .bind(self.topic_id)
        .bind(self.group_id)
        .bind(seq)
        .bind(owner)
        .fetch_one(conn)
        .await
        .expect("bus_ack_row")
    }

    /// The group's queue: (seq, key, head), by seq.
    async fn queue(&self, conn: &mut PgConnection) -> Vec<(i64, Option<Vec<u8>>, bool)> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT seq, ordering_key, head FROM {}.bus_queue WHERE group_id = $1 ORDER BY seq",
            self.schema
        )))
        .bind(self.group_id)
        .fetch_all(conn)
        .await
        .expect("read the queue")
    }

    async fn drop_schema(self) {
        let mut conn = self.conn().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&mut conn)
        .await
        .expect("drop the test schema");
    }
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pg_backend_pid")
}

/// Waits until backend `pid` waits for an advisory lock.
async fn waiting_for_advisory_lock(url: &str, pid: i32, what: &str) {
    let monitor = PgPool::connect(url).await.expect("connect the monitor");
    runnel_testkit::harness::wait_until(DEADLINE, what, || {
        let monitor = monitor.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks \
                  WHERE pid = $1 AND locktype = 'advisory' AND NOT granted)",
            )
            .bind(pid)
            .fetch_one(&monitor)
            .await
            .expect("read pg_locks")
        }
    })
    .await;
    monitor.close().await;
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_of_different_keys_do_not_wait_for_each_other() {
    let Some(db) = Db::new().await else {
        return;
    };
    let (mut a, mut b) = (db.conn().await, db.conn().await);
    let mut tx = a.begin().await.expect("begin");
    db.publish(&mut tx, &[b"k1", b"k2"]).await;
    // k1 and k2 are locked until that commit; k3 and keyless messages are not.
    within(
        "a publish of another key while one is uncommitted",
        db.publish(&mut b, &[b"k3"]),
    )
    .await;
    let written: i32 = within("a keyless publish while one is uncommitted", async {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {}.bus_publish('t', NULL, ARRAY[NULL]::bytea[], ARRAY['\\x7b7d']::bytea[], \
                    ARRAY['\\x00']::bytea[], now())",
            db.schema
        )))
        .fetch_one(&mut b)
        .await
        .expect("keyless bus_publish")
    })
    .await;
    assert_eq!(written, 1);
    tx.commit().await.expect("commit");
    let heads: Vec<bool> = db.queue(&mut b).await.into_iter().map(|r| r.2).collect();
    assert_eq!(heads, [true, true, true, true]);
    drop((a, b));
    db.drop_schema().await;
}

/// An ack of a key's head that commits after a publish of the key decided "not the head"
/// (because the acked row still existed) waits for that publish, then promotes its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_waits_for_an_uncommitted_publish_of_its_key_and_promotes_its_row() {
    let Some(db) = Db::new().await else {
        return;
    };
    let (mut a, mut b) = (db.conn().await, db.conn().await);
    db.publish(&mut a, &[b"k"]).await;
    let first = db.queue(&mut a).await[0].0;
    let owner = db.lease(&mut a, first).await;

    let mut tx = b.begin().await.expect("begin");
    db.publish(&mut tx, &[b"k"]).await;
    let pid = backend_pid(&mut a).await;
    let ack = {
        let db_schema = db.schema.clone();
        let (topic_id, group_id) = (db.topic_id, db.group_id);
        tokio::spawn(async move {
            let outcome: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT {db_schema}.bus_ack_row($1, $2, $3, $4, 1)"
            )))
            .bind(topic_id)
            .bind(group_id)
            .bind(first)
            .bind(owner)
            .fetch_one(&mut a)
            .await
            .expect("bus_ack_row");
            (outcome, a)
        })
    };
    waiting_for_advisory_lock(&db.url, pid, "the ack waiting for the publish's key lock").await;
    tx.commit().await.expect("commit the publish");
    let (outcome, mut a) = within("the ack after the publish committed", ack)
        .await
        .expect("the ack task");
    assert_eq!(outcome, 2, "the ack promoted the published row");
    let queue = db.queue(&mut a).await;
    assert_eq!(queue.len(), 1);
    assert!(queue[0].2, "the key's only row is its head: {queue:?}");
    drop((a, b));
    db.drop_schema().await;
}

/// A publish of a key while an ack of the key's head is uncommitted waits for the ack,
/// then sees the row gone and makes its own row the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waits_for_an_uncommitted_ack_of_its_key_and_becomes_the_head() {
    let Some(db) = Db::new().await else {
        return;
    };
    let (mut a, mut b) = (db.conn().await, db.conn().await);
    db.publish(&mut a, &[b"k"]).await;
    let first = db.queue(&mut a).await[0].0;
    let owner = db.lease(&mut a, first).await;

    let mut tx = b.begin().await.expect("begin");
    assert_eq!(
        db.ack(&mut tx, first, owner).await,
        1,
        "nothing to promote yet"
    );
    let pid = backend_pid(&mut a).await;
    let publish = {
        let schema = db.schema.clone();
        tokio::spawn(async move {
            sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(format!(
                "SELECT {schema}.bus_publish('t', NULL, ARRAY['\\x6b']::bytea[], \
                        ARRAY['\\x7b7d']::bytea[], ARRAY['\\x00']::bytea[], now())"
            )))
            .fetch_one(&mut a)
            .await
            .expect("bus_publish");
            a
        })
    };
    waiting_for_advisory_lock(&db.url, pid, "the publish waiting for the ack's key lock").await;
    tx.commit().await.expect("commit the ack");
    let mut a = within("the publish after the ack committed", publish)
        .await
        .expect("the publish task");
    let queue = db.queue(&mut a).await;
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0].1.as_deref(), Some(&b"k"[..]));
    assert!(queue[0].2, "the published row is the head: {queue:?}");
    drop((a, b));
    db.drop_schema().await;
}

/// One publish of many keys (over `bus_key_locks_max()`) locks the topic instead: it waits
/// for an uncommitted publish of other keys, and decides heads right, in-call repeats
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_of_many_keys_takes_the_topic_lock_and_decides_heads_right() {
    let Some(db) = Db::new().await else {
        return;
    };
    let (mut a, mut b) = (db.conn().await, db.conn().await);
    db.publish(&mut a, &[b"many-0"]).await;
    let mut tx = b.begin().await.expect("begin");
    db.publish(&mut tx, &[b"other"]).await;
    let keys: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("many-{}", i % 200).into_bytes())
        .collect();
    let pid = backend_pid(&mut a).await;
    let publish = {
        let db_keys = keys.clone();
        let schema = db.schema.clone();
        tokio::spawn(async move {
            let n = db_keys.len();
            sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(format!(
                "SELECT {schema}.bus_publish('t', NULL, $1, $2, $3, now())"
            )))
            .bind(db_keys)
            .bind(vec![b"{}".to_vec(); n])
            .bind(vec![b"p".to_vec(); n])
            .fetch_one(&mut a)
            .await
            .expect("bus_publish of many keys");
            a
        })
    };
    waiting_for_advisory_lock(&db.url, pid, "the big publish waiting for the topic lock").await;
    tx.commit().await.expect("commit");
    let mut a = within("the big publish", publish).await.expect("task");
    let queue = db.queue(&mut a).await;
    assert_eq!(queue.len(), 302);
    // Heads: "other", and the first row of many-1 … many-199 (many-0 already had one).
    let heads: Vec<Vec<u8>> = queue
        .iter()
        .filter(|r| r.2)
        .map(|r| r.1.clone().unwrap())
        .collect();
    assert_eq!(heads.len(), 201, "one head per key");
    let mut distinct = heads.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 201, "one head per key: {heads:?}");
    let first_of_many_0 = queue
        .iter()
        .find(|r| r.1.as_deref() == Some(b"many-0"))
        .unwrap();
    assert!(first_of_many_0.2, "the earlier many-0 row stays the head");
    drop((a, b));
    db.drop_schema().await;
}

/// A schema at the previous version (12), with messages queued by its functions, upgrades
/// on open: the queued messages keep their heads and the new functions take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_the_previous_version_upgrades_with_its_queued_messages() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let mut setup = common::schema_at_version_sql(&schema, 12);
    // The previous build's publish (it notifies inside its transaction).
    setup.push_str(&format!(
        "SELECT {schema}.bus_subscribe('t', 'g', false, now());
         SELECT {schema}.bus_publish('t', 'runnel_{schema}_bus', ARRAY['\\x6b', '\\x6b']::bytea[],
                ARRAY['\\x7b7d', '\\x7b7d']::bytea[], ARRAY['\\x00', '\\x00']::bytea[], now());"
    ));
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&mut conn)
        .await
        .expect("a schema at version 12");

    let store = PostgresStore::connect_with(PostgresOptions::new(url.clone()).schema(&schema))
        .await
        .expect("open and upgrade");
    let version: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT max(version) FROM {schema}.runnel_migrations"
    )))
    .fetch_one(&mut conn)
    .await
    .expect("version");
    // Upgraded through the bus's migration (13) to whatever this build's latest is.
    assert!(
        version >= 13,
        "upgraded past the bus's migration, at {version}"
    );
    let db = Db {
        url: url.clone(),
        schema: schema.clone(),
        topic_id: 1,
        group_id: 1,
        _store: store,
    };
    db.publish(&mut conn, &[b"k"]).await;
    let queue = db.queue(&mut conn).await;
    let heads: Vec<bool> = queue.iter().map(|r| r.2).collect();
    assert_eq!(heads, [true, false, false]);
    // The old ack signature still works (and promotes).
    let first = queue[0].0;
    let owner = db.lease(&mut conn, first).await;
    let held: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {schema}.bus_ack(1, 1, $1, $2, 1, 'runnel_{schema}_bus', 't')"
    )))
    .bind(first)
    .bind(owner)
    .fetch_one(&mut conn)
    .await
    .expect("the previous build's bus_ack");
    assert!(held);
    let heads: Vec<bool> = db.queue(&mut conn).await.iter().map(|r| r.2).collect();
    assert_eq!(heads, [true, false]);
    drop(conn);
    db.drop_schema().await;
}
