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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runnel::consumer::inbox::SqliteInboxScope;
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::sqlite::rusqlite::params;
use runnel::sqlite::{SqliteInbox, SqliteStore};

/// A URL like `url` with its host and port replaced by `addr`.
pub fn url_via(url: &str, addr: std::net::SocketAddr) -> String {
    let mut u = url::Url::parse(url).expect("a valid URL");
    u.set_host(Some(&addr.ip().to_string())).expect("host");
    u.set_port(Some(addr.port())).expect("port");
    u.to_string()
}

/// The `host:port` of `url`.
pub fn server_addr(url: &str) -> String {
    let u = url::Url::parse(url).expect("a valid URL");
    format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5672)
    )
}

/// Waits until `check` holds, failing after `deadline`.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    runnel_testkit::harness::wait_until(deadline, what, check).await;
}

/// One handled message as the handler recorded it (in the inbox's transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    pub message_id: String,
    pub key: String,
    pub n: i64,
}

/// A temporary SQLite file with the inbox and an `effects` table written exactly once
/// per message through it.
pub struct Effects {
    pub store: SqliteStore,
    pub inbox: Arc<SqliteInbox>,
}

impl Effects {
    pub async fn new() -> Effects {
        let store = SqliteStore::open_temporary().expect("temporary store");
        store
            .unit_of_work(|uow| {
                uow.connection()
                    .execute(
                        "CREATE TABLE effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                         message_id TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL)",
                        [],
                    )
                    .map_err(|e| runnel::core::StoreError::Backend(e.to_string()))
            })
            .await
            .expect("create effects");
        Effects {
            inbox: Arc::new(SqliteInbox::new(store.clone())),
            store,
        }
    }

    /// Records the handled message in the handler's inbox transaction.
    pub async fn write(ctx: &HandlerContext) -> Result<(), HandlerError> {
        let m = ctx.message();
        let n = m
            .payload_json()
            .ok()
            .and_then(|v| v["n"].as_i64())
            .unwrap_or(-1);
        let (id, key) = (m.id.clone(), m.key.clone().unwrap_or_default());
        ctx.scope::<SqliteInboxScope>().await?.write(move |uow| {
            uow.connection().execute(
                "INSERT INTO effects (message_id, key, n) VALUES (?1, ?2, ?3)",
                params![id, key, n],
            )?;
            Ok(())
        })
    }

    /// Every effect in commit order.
    pub async fn all(&self) -> Vec<Effect> {
        self.store
            .unit_of_work(|uow| {
                let err = |e: runnel::sqlite::rusqlite::Error| {
                    runnel::core::StoreError::Backend(e.to_string())
                };
                let mut stmt = uow
                    .connection()
                    .prepare("SELECT message_id, key, n FROM effects ORDER BY seq")
                    .map_err(err)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok(Effect {
                            message_id: r.get(0)?,
                            key: r.get(1)?,
                            n: r.get(2)?,
                        })
                    })
                    .map_err(err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(err)
            })
            .await
            .expect("read effects")
    }
}
