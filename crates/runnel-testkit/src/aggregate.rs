//! Given / when / then for an aggregate's decisions, with no store: the history it
//! starts from, one command, and the events (or the refusal) it must produce.
//!
//! ```
//! use runnel::core::DomainEvent;
//! use runnel::Aggregate;
//! use runnel_testkit::aggregate::AggregateTest;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Account { balance: u64 }
//! enum AccountCommand { Withdraw(u64) }
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum AccountEvent { Deposited(u64), Withdrew(u64) }
//! impl DomainEvent for AccountEvent {
//!     fn event_type(&self) -> &'static str {
//!         match self { AccountEvent::Deposited(_) => "Deposited", AccountEvent::Withdrew(_) => "Withdrew" }
//!     }
//! }
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! #[error("insufficient funds")]
//! struct Insufficient;
//! impl Aggregate for Account {
//!     const TYPE: &'static str = "Account";
//!     type Command = AccountCommand;
//!     type Event = AccountEvent;
//!     type Error = Insufficient;
//!     fn handle(&self, AccountCommand::Withdraw(n): AccountCommand) -> Result<Vec<AccountEvent>, Insufficient> {
//!         if n > self.balance { Err(Insufficient) } else { Ok(vec![AccountEvent::Withdrew(n)]) }
//!     }
//!     fn apply(&mut self, e: &AccountEvent) {
//!         match e { AccountEvent::Deposited(n) => self.balance += n, AccountEvent::Withdrew(n) => self.balance -= n }
//!     }
//! }
//!
//! AggregateTest::<Account>::given([AccountEvent::Deposited(10)])
//!     .when(AccountCommand::Withdraw(4))
//!     .then([AccountEvent::Withdrew(4)]);
//! let refused = AggregateTest::<Account>::given([AccountEvent::Deposited(1)])
//!     .when(AccountCommand::Withdraw(4))
//!     .then_error();
//! assert_eq!(refused, Insufficient);
//! ```

use std::fmt::Debug;

use runnel::Aggregate;

/// The history an aggregate starts from (see the [module documentation](self)).
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// An aggregate that has recorded `events`, in order.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        AggregateTest { state }
    }

    /// An aggregate with no events yet.
    pub fn given_no_events() -> Self {
        AggregateTest {
            state: A::default(),
        }
    }

    /// The aggregate decides on `command`.
    pub fn when(self, command: A::Command) -> Decided<A> {
        let result = self.state.handle(command);
        Decided {
            state: self.state,
            result,
        }
    }
}

/// What the aggregate decided.
pub struct Decided<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Decided<A>
where
    A::Event: PartialEq + Debug,
    A::Error: Debug,
{
    /// Asserts the command produced exactly `expected`; returns the state with them
    /// applied, for further checks.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                state
            }
            Err(e) => panic!("expected events {expected:?}, but the aggregate refused: {e:?}"),
        }
    }

    /// Asserts the command was accepted with nothing to record.
    #[track_caller]
    pub fn then_nothing(self) {
        match self.result {
            Ok(events) => assert!(events.is_empty(), "expected no events, got {events:?}"),
            Err(e) => panic!("expected no events, but the aggregate refused: {e:?}"),
        }
    }

    /// Asserts the aggregate refused the command; returns its error.
    #[track_caller]
    pub fn then_error(self) -> A::Error {
        match self.result {
            Ok(events) => panic!("expected a refusal, but the command produced {events:?}"),
            Err(e) => e,
        }
    }

    /// The decision itself, for checks the helpers above do not cover.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
