//! Bus commands routed through a repository with `register_aggregate_command`.

mod support;

use std::sync::Arc;

use runnel::core::Metadata;
use runnel::{
    register_aggregate_command, AggregateCommand, Command, CommandBus, CommandEnvelope,
    DispatchError, ExecuteOutcome, Repository, RepositoryError,
};
use runnel_testkit::InMemoryStore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Increment {
    counter_id: String,
    by: u64,
    #[serde(default)]
    refuse: bool,
}

impl Command for Increment {
    const NAME: &'static str = "Increment";
    type Output = ExecuteOutcome<CounterEvent>;
}

impl AggregateCommand for Increment {
    type Aggregate = Counter;
    fn aggregate_id(&self) -> String {
        self.counter_id.clone()
    }
    fn into_aggregate_command(self) -> CounterCommand {
        if self.refuse {
            CounterCommand::Refuse
        } else {
            CounterCommand::Add(self.by)
        }
    }
}

fn wired() -> (CommandBus, Repository<Counter>) {
    let repo = Repository::<Counter>::new(Arc::new(InMemoryStore::new()));
    let bus = CommandBus::new();
    register_aggregate_command::<Increment>(&bus, repo.clone()).unwrap();
    (bus, repo)
}

#[tokio::test]
async fn bus_command_runs_on_the_addressed_aggregate() {
    let (bus, repo) = wired();
    let envelope = CommandEnvelope::new(Increment {
        counter_id: "c1".into(),
        by: 3,
        refuse: false,
    })
    .with_correlation_id("corr");
    let command_id = envelope.command_id.clone();
    let outcome = bus.dispatch(envelope).await.unwrap();
    assert_eq!(outcome.revision, Some(1));
    assert_eq!(outcome.stream.as_str(), "Counter-c1");
    assert_eq!(repo.load("c1").await.unwrap().state.value, 3);
    let events = stored(repo.event_store().as_ref(), "Counter-c1").await;
    assert_eq!(
        events[0].metadata.causation_id.as_deref(),
        Some(command_id.as_str())
    );
    assert_eq!(events[0].metadata.correlation_id.as_deref(), Some("corr"));
}

#[tokio::test]
async fn bus_command_by_name_returns_the_outcome_as_json() {
    let (bus, _) = wired();
    let out = bus
        .dispatch_json(
            "Increment",
            json!({"counter_id": "c2", "by": 2}),
            Metadata::default(),
        )
        .await
        .unwrap();
    assert_eq!(out["stream"], json!("Counter-c2"));
    assert_eq!(out["revision"], json!(1));
    assert_eq!(out["events"], json!([{"Added": {"amount": 2}}]));
    assert_eq!(out["attempts"], json!(1));
}

#[tokio::test]
async fn aggregate_rejection_surfaces_as_a_typed_handler_error() {
    let (bus, _) = wired();
    let err = bus
        .dispatch_json(
            "Increment",
            json!({"counter_id": "c3", "by": 1, "refuse": true}),
            Metadata::default(),
        )
        .await
        .unwrap_err();
    let repo_err = err
        .downcast_handler_error::<RepositoryError<Refused>>()
        .expect("the repository's error is kept");
    assert_eq!(repo_err.domain(), Some(&Refused));
    assert!(matches!(err, DispatchError::Handler(_)));
}
