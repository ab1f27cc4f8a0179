//! [`open_bus`]: the publisher, the subscriber and the broker's dead-letter drain, from a
//! bus URL.

use std::sync::Arc;

use runnel_core::bus::{DeadLetterDrain, Publisher, Subscriber};

use super::error::ConnectError;
use super::stores::{StoreBackend, Stores};
use super::url::{BusUrl, Transport};
use crate::consumer::LagProbe;

/// A bus as the transport traits: the embedded durable bus of a store, or a broker's.
/// Cloning is cheap; clones share the connection.
#[derive(Clone)]
pub struct Bus {
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
    /// The broker's own dead-letter queue, drained into the store's dead letters
    /// (`runnel dlq drain`). `None` on the embedded bus, whose consumers dead-letter
    /// straight into the store.
    pub dead_letter_drain: Option<Arc<dyn DeadLetterDrain>>,
    /// How far each consumer group is behind, where the bus can tell (the embedded bus on
    /// SQLite and PostgreSQL); the application's consumers report it as
    /// `runnel_consumer_lag_messages` and on the [lag board](crate::consumer::lag_board).
    pub lag_probe: Option<Arc<dyn LagProbe>>,
    url: BusUrl,
    /// The SQLite file the embedded bus commits to (each publish an fsynced commit of
    /// that file), when it is one.
    sqlite_file: Option<std::path::PathBuf>,
}

impl Bus {
    /// The URL the bus was opened from (`Display` redacts the password).
    pub fn url(&self) -> &BusUrl {
        &self.url
    }

    /// The SQLite file this bus commits every publish to (the embedded bus of a SQLite
    /// store, opened by [`open_bus`]); `None` for every other bus.
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref()
    }

    /// The bus as one value implementing both traits, e.g. for the testkit.
    pub fn from_parts<B>(bus: Arc<B>, url: BusUrl) -> Self
    where
        B: Publisher + Subscriber,
    {
        Bus {
            publisher: bus.clone(),
            subscriber: bus,
            dead_letter_drain: None,
            lag_probe: None,
            url,
            sqlite_file: None,
        }
    }
}

/// Opens the bus `url` names: `embedded` (the durable bus in `stores`' database) or a
/// broker (`nats://`, `amqp://`, `kafka://`, `sqs://`, each behind the cargo feature of
/// the same name). A broker's own URL parameters are checked here, before anything is
/// created on it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use runnel::connect::{open_bus, open_stores, BusUrl, OpenMode, StoreUrl};
/// use runnel::core::{Message, TopicName};
///
/// let dir = tempfile::tempdir()?;
/// let stores = open_stores(&StoreUrl::sqlite(dir.path().join("app.db")), OpenMode::CreateIfMissing).await?;
/// let bus = open_bus(&BusUrl::parse("embedded")?, &stores).await?; // or "nats://…"
/// let orders = TopicName::new("orders")?;
/// bus.publisher.publish(&orders, vec![Message::json("OrderPlaced", &serde_json::json!({}))]).await?;
/// # Ok(()) }
/// ```
pub async fn open_bus(url: &BusUrl, stores: &Stores) -> Result<Bus, ConnectError> {
    let mut bus = match url {
        BusUrl::Embedded => embedded(stores).await?,
        BusUrl::Broker(transport, raw) => broker(*transport, raw, url).await?,
    };
    bus.publisher = Arc::new(super::metered::MeteredPublisher {
        inner: bus.publisher,
    });
    Ok(bus)
}

/// Opens the broker `url` names without any store; `None` for `embedded`, whose bus lives
/// in a store's database (open that with [`open_bus`]).
///
/// A broker holds its messages itself and moves what its consumers keep failing on into
/// its own dead-letter queue, so publishing and consuming need no database: a process that
/// only does that (`runnel publish` / `runnel consume --bus nats://…`) works on a machine
/// with no store at all. What needs a store is moving that queue into the store's dead
/// letters ([`Bus::dead_letter_drain`], `runnel dlq drain`) and replaying from there.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use runnel::connect::{open_broker, BusUrl};
///
/// assert!(open_broker(&BusUrl::parse("embedded")?).await?.is_none());
/// // open_broker(&BusUrl::parse("nats://127.0.0.1:4222")?).await? is Some(bus).
/// # Ok(()) }
/// ```
pub async fn open_broker(url: &BusUrl) -> Result<Option<Bus>, ConnectError> {
    match url {
        BusUrl::Embedded => Ok(None),
        BusUrl::Broker(transport, raw) => broker(*transport, raw, url).await.map(Some),
    }
}

#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(unreachable_code, unused_variables)
)]
async fn embedded(stores: &Stores) -> Result<Bus, ConnectError> {
    let failed = |source| ConnectError::Bus {
        name: "embedded",
        url: stores.url().to_string(),
        source,
    };
    match stores.backend() {
        #[cfg(feature = "sqlite")]
        StoreBackend::Sqlite(store) => {
            let bus = Arc::new(
                runnel_sqlite::bus::SqliteBus::new(store.clone(), Default::default())
                    .map_err(failed)?,
            );
            let mut parts = Bus::from_parts(Arc::clone(&bus), BusUrl::Embedded);
            parts.lag_probe = Some(bus);
            parts.sqlite_file = Some(store.path().to_path_buf());
            Ok(parts)
        }
        #[cfg(feature = "postgres")]
        StoreBackend::Postgres(store) => {
            let bus = Arc::new(
                runnel_postgres::bus::PostgresBus::new(store.clone(), Default::default())
                    .await
                    .map_err(failed)?,
            );
            let mut parts = Bus::from_parts(Arc::clone(&bus), BusUrl::Embedded);
            parts.lag_probe = Some(bus);
            Ok(parts)
        }
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        StoreBackend::NoBackend(never) => match *never {},
    }
}

// Built without any transport, only the refusal remains.
#[allow(unused_variables, unreachable_code)]
async fn broker(transport: Transport, raw: &str, url: &BusUrl) -> Result<Bus, ConnectError> {
    let failed = |source| ConnectError::Bus {
        name: transport.name(),
        url: url.to_string(),
        source,
    };
    match transport {
        #[cfg(feature = "nats")]
        Transport::Nats => {
            let bus = runnel_nats::connect(raw).await.map_err(failed)?;
            Ok(broker_bus(bus, url))
        }
        #[cfg(feature = "rabbitmq")]
        Transport::RabbitMq => {
            let bus = runnel_rabbitmq::connect(raw).await.map_err(failed)?;
            Ok(broker_bus(bus, url))
        }
        #[cfg(feature = "kafka")]
        Transport::Kafka => {
            let bus = runnel_kafka::connect(raw).map_err(failed)?;
            Ok(broker_bus(bus, url))
        }
        #[cfg(feature = "sqs")]
        Transport::Sqs => {
            let bus = runnel_sqs::connect(raw).map_err(failed)?;
            Ok(broker_bus(bus, url))
        }
        #[allow(unreachable_patterns)]
        other => Err(ConnectError::NotBuiltIn {
            name: other.name(),
            feature: other.feature(),
        }),
    }
}

#[allow(dead_code)]
fn broker_bus<B>(bus: Arc<B>, url: &BusUrl) -> Bus
where
    B: Publisher + Subscriber + DeadLetterDrain,
{
    Bus {
        publisher: bus.clone(),
        subscriber: bus.clone(),
        dead_letter_drain: Some(bus),
        lag_probe: None,
        url: url.clone(),
        sqlite_file: None,
    }
}
