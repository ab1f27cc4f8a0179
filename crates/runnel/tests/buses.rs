//! The command and query buses: typed dispatch, dispatch by name with JSON, and their
//! typed errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use runnel::core::Metadata;
use runnel::{
    async_trait, Command, CommandBus, CommandEnvelope, CommandHandler, DispatchError, Query,
    QueryBus,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize)]
struct Deposit {
    account: String,
    cents: u64,
}

impl Command for Deposit {
    const NAME: &'static str = "Deposit";
    type Output = u64;
}

#[derive(Debug, Serialize, Deserialize)]
struct Withdraw {
    account: String,
    cents: u64,
}

impl Command for Withdraw {
    const NAME: &'static str = "Withdraw";
    type Output = ();
}

/// A second type that (wrongly) reuses `Deposit`'s name.
#[derive(Debug, Serialize, Deserialize)]
struct Impostor;

impl Command for Impostor {
    const NAME: &'static str = "Deposit";
    type Output = ();
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("insufficient funds: {available} cents available")]
struct InsufficientFunds {
    available: u64,
}

/// Counts how often it ran; deposits return the new balance.
#[derive(Default)]
struct Teller {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl CommandHandler<Deposit> for Teller {
    type Error = std::convert::Infallible;
    async fn handle(&self, envelope: CommandEnvelope<Deposit>) -> Result<u64, Self::Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(envelope.command.cents + 1000)
    }
}

fn bus_with_teller() -> (CommandBus, Arc<AtomicUsize>) {
    let teller = Teller::default();
    let runs = Arc::clone(&teller.runs);
    let bus = CommandBus::new();
    bus.register::<Deposit, _>(teller).unwrap();
    (bus, runs)
}

#[tokio::test]
async fn typed_dispatch_runs_the_registered_handler() {
    let (bus, runs) = bus_with_teller();
    let balance = bus
        .dispatch(CommandEnvelope::new(Deposit {
            account: "a".into(),
            cents: 5,
        }))
        .await
        .unwrap();
    assert_eq!(balance, 1005);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn dispatch_by_name_deserializes_the_payload_and_serializes_the_output() {
    let (bus, _) = bus_with_teller();
    let out = bus
        .dispatch_json(
            "Deposit",
            json!({"account": "a", "cents": 7}),
            Metadata::default(),
        )
        .await
        .unwrap();
    assert_eq!(out, json!(1007));
}

#[tokio::test]
async fn dispatch_by_name_passes_command_id_and_metadata_to_the_handler() {
    let bus = CommandBus::new();
    bus.register_fn(|env: CommandEnvelope<Withdraw>| async move {
        assert_eq!(env.command_id, "cmd-1");
        assert_eq!(env.metadata.user_id.as_deref(), Some("alice"));
        assert_eq!(env.metadata.correlation_id.as_deref(), Some("corr-1"));
        Ok::<_, InsufficientFunds>(())
    })
    .unwrap();
    let envelope = CommandEnvelope::new(json!({"account": "a", "cents": 1}))
        .with_command_id("cmd-1")
        .with_user_id("alice")
        .with_correlation_id("corr-1");
    let out = bus
        .dispatch_json_envelope("Withdraw", envelope)
        .await
        .unwrap();
    assert_eq!(out, json!(null));
}

#[tokio::test]
async fn unknown_name_is_no_handler() {
    let (bus, _) = bus_with_teller();
    let err = bus
        .dispatch_json("Transfer", json!({}), Metadata::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DispatchError::NoHandler { name } if name == "Transfer"),
        "{err:?}"
    );
    assert!(err.is_rejected_input());
}

#[tokio::test]
async fn typed_dispatch_without_a_handler_is_no_handler() {
    let bus = CommandBus::new();
    let err = bus
        .send(Withdraw {
            account: "a".into(),
            cents: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DispatchError::NoHandler { name } if name == "Withdraw"),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_payload_is_rejected_before_the_handler_runs() {
    let (bus, runs) = bus_with_teller();
    for payload in [
        json!({"account": "a"}),
        json!({"account": "a", "cents": -5}),
        json!("Deposit"),
    ] {
        let err = bus
            .dispatch_json("Deposit", payload, Metadata::default())
            .await
            .unwrap_err();
        match &err {
            DispatchError::InvalidPayload { name, message } => {
                assert_eq!(name, "Deposit");
                assert!(!message.is_empty());
            }
            other => panic!("expected InvalidPayload, got {other:?}"),
        }
        assert!(err.to_string().contains("nothing was run"), "{err}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn second_registration_for_a_name_is_already_registered() {
    let (bus, _) = bus_with_teller();
    let err = bus.register::<Deposit, _>(Teller::default()).unwrap_err();
    assert!(
        matches!(&err, DispatchError::AlreadyRegistered { name } if name == "Deposit"),
        "{err:?}"
    );
    let err = bus
        .register_fn(|_: CommandEnvelope<Impostor>| async { Ok::<_, std::convert::Infallible>(()) })
        .unwrap_err();
    assert!(matches!(err, DispatchError::AlreadyRegistered { .. }));
}

#[tokio::test]
async fn typed_dispatch_of_another_type_under_a_taken_name_is_a_type_mismatch() {
    let (bus, runs) = bus_with_teller();
    let err = bus.send(Impostor).await.unwrap_err();
    assert!(matches!(err, DispatchError::TypeMismatch { .. }), "{err:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn handler_errors_stay_inspectable() {
    let bus = CommandBus::new();
    bus.register_fn(|_: CommandEnvelope<Withdraw>| async {
        Err(InsufficientFunds { available: 3 })
    })
    .unwrap();
    let err = bus
        .send(Withdraw {
            account: "a".into(),
            cents: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_handler_error::<InsufficientFunds>(),
        Some(&InsufficientFunds { available: 3 })
    );
    assert_eq!(err.to_string(), "insufficient funds: 3 cents available");
    assert!(!err.is_rejected_input());

    let err = bus
        .dispatch_json(
            "Withdraw",
            json!({"account": "a", "cents": 10}),
            Metadata::default(),
        )
        .await
        .unwrap_err();
    assert!(err.downcast_handler_error::<InsufficientFunds>().is_some());
}

#[tokio::test]
async fn names_lists_registered_commands_sorted() {
    let (bus, _) = bus_with_teller();
    bus.register_fn(|_: CommandEnvelope<Withdraw>| async { Ok::<_, std::convert::Infallible>(()) })
        .unwrap();
    assert_eq!(bus.names(), vec!["Deposit", "Withdraw"]);
    assert!(bus.contains("Withdraw"));
    assert!(!bus.contains("Transfer"));
}

#[tokio::test]
async fn clones_share_registrations_across_tasks() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<CommandBus>();
    assert_send_sync::<QueryBus>();

    let bus = CommandBus::new();
    let clone = bus.clone();
    bus.register::<Deposit, _>(Teller::default()).unwrap();
    let out = tokio::spawn(async move {
        clone
            .send(Deposit {
                account: "a".into(),
                cents: 1,
            })
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out, 1001);
}

#[derive(Debug, Serialize, Deserialize)]
struct Balance {
    account: String,
}

impl Query for Balance {
    const NAME: &'static str = "Balance";
    type Response = Option<u64>;
}

fn query_bus() -> QueryBus {
    let queries = QueryBus::new();
    queries
        .register_fn(|q: Balance, meta: Metadata| async move {
            if meta.user_id.as_deref() == Some("mallory") {
                return Err(InsufficientFunds { available: 0 });
            }
            Ok(if q.account == "a" { Some(42) } else { None })
        })
        .unwrap();
    queries
}

#[tokio::test]
async fn queries_dispatch_by_type_and_by_name() {
    let queries = query_bus();
    assert_eq!(
        queries
            .dispatch(Balance {
                account: "a".into()
            })
            .await
            .unwrap(),
        Some(42)
    );
    let out = queries
        .dispatch_json("Balance", json!({"account": "b"}), Metadata::default())
        .await
        .unwrap();
    assert_eq!(out, json!(null));
    assert_eq!(queries.names(), vec!["Balance"]);
}

#[tokio::test]
async fn query_errors_are_typed() {
    let queries = query_bus();
    let err = queries
        .dispatch_json("Nope", json!({}), Metadata::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DispatchError::NoHandler { .. }), "{err:?}");
    let err = queries
        .dispatch_json("Balance", json!({"acct": 1}), Metadata::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DispatchError::InvalidPayload { .. }),
        "{err:?}"
    );
    let err = queries
        .dispatch_with_metadata(
            Balance {
                account: "a".into(),
            },
            Metadata::default().with_user_id("mallory"),
        )
        .await
        .unwrap_err();
    assert!(err.downcast_handler_error::<InsufficientFunds>().is_some());
    let err = queries
        .register_fn(|_: Balance, _: Metadata| async { Ok::<_, std::convert::Infallible>(None) })
        .unwrap_err();
    assert!(matches!(err, DispatchError::AlreadyRegistered { .. }));
}
