//! The `Customer` aggregate (stream `Customer-{id}`): registered once with a name, renamed
//! later. Orders name their customer by id only; the read side shows the name
//! (see [`crate::read_model`]).

use runnel::{Aggregate, AggregateCommand, Command, ExecuteOutcome};
use runnel_core::DomainEvent;
use serde::{Deserialize, Serialize};

/// Longest customer name, in characters.
pub const CUSTOMER_NAME_LEN_MAX: usize = 200;

/// A customer's state, folded from its events. The default is "not registered yet".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    name: Option<String>,
}

impl Customer {
    /// The current name (`None`: not registered).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// What a customer can be asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum CustomerCommand {
    /// Register the customer. Registering again under the same name changes nothing (a
    /// retried request is harmless); under another name it is refused.
    Register { name: String },
    /// Give a registered customer a new name (the same name again changes nothing).
    Rename { name: String },
}

/// What a customer records. The id is the stream's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CustomerEvent {
    CustomerRegistered { name: String },
    CustomerRenamed { name: String },
}

impl DomainEvent for CustomerEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CustomerEvent::CustomerRegistered { .. } => "CustomerRegistered",
            CustomerEvent::CustomerRenamed { .. } => "CustomerRenamed",
        }
    }
}

/// Why the `Customer` aggregate refused a command. Nothing was recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CustomerError {
    #[error("the customer is registered as {existing:?}; rename it instead")]
    AlreadyRegistered { existing: String },
    #[error("no such customer; register it first")]
    NotFound,
    #[error("the customer name is empty")]
    EmptyName,
    #[error("the customer name has {len} characters; at most {limit} are allowed")]
    NameTooLong { len: usize, limit: usize },
}

fn checked_name(name: String) -> Result<String, CustomerError> {
    let name = name.trim().to_string();
    if name.is_empty() {
        return Err(CustomerError::EmptyName);
    }
    let len = name.chars().count();
    if len > CUSTOMER_NAME_LEN_MAX {
        return Err(CustomerError::NameTooLong {
            len,
            limit: CUSTOMER_NAME_LEN_MAX,
        });
    }
    Ok(name)
}

impl Aggregate for Customer {
    const TYPE: &'static str = "Customer";
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;

    fn handle(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, CustomerError> {
        match (command, &self.name) {
            (CustomerCommand::Register { name }, None) => {
                let name = checked_name(name)?;
                Ok(vec![CustomerEvent::CustomerRegistered { name }])
            }
            (CustomerCommand::Register { name }, Some(existing)) => {
                if checked_name(name)? == *existing {
                    Ok(vec![])
                } else {
                    Err(CustomerError::AlreadyRegistered {
                        existing: existing.clone(),
                    })
                }
            }
            (CustomerCommand::Rename { .. }, None) => Err(CustomerError::NotFound),
            (CustomerCommand::Rename { name }, Some(existing)) => {
                let name = checked_name(name)?;
                if name == *existing {
                    Ok(vec![])
                } else {
                    Ok(vec![CustomerEvent::CustomerRenamed { name }])
                }
            }
        }
    }

    fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::CustomerRegistered { name }
            | CustomerEvent::CustomerRenamed { name } => self.name = Some(name.clone()),
        }
    }
}

/// Register a customer. JSON: `{"customer_id": "c-1", "name": "Ada Lovelace"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    pub customer_id: String,
    pub name: String,
}

/// Rename a registered customer. JSON: `{"customer_id": "c-1", "name": "Ada King"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameCustomer {
    pub customer_id: String,
    pub name: String,
}

impl Command for RegisterCustomer {
    const NAME: &'static str = "RegisterCustomer";
    type Output = ExecuteOutcome<CustomerEvent>;
}

impl AggregateCommand for RegisterCustomer {
    type Aggregate = Customer;

    fn aggregate_id(&self) -> String {
        self.customer_id.clone()
    }

    fn into_aggregate_command(self) -> CustomerCommand {
        CustomerCommand::Register { name: self.name }
    }
}

impl Command for RenameCustomer {
    const NAME: &'static str = "RenameCustomer";
    type Output = ExecuteOutcome<CustomerEvent>;
}

impl AggregateCommand for RenameCustomer {
    type Aggregate = Customer;

    fn aggregate_id(&self) -> String {
        self.customer_id.clone()
    }

    fn into_aggregate_command(self) -> CustomerCommand {
        CustomerCommand::Rename { name: self.name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(name: &str) -> Customer {
        let mut c = Customer::default();
        c.apply(&CustomerEvent::CustomerRegistered { name: name.into() });
        c
    }

    #[test]
    fn registering_again_under_the_same_name_records_nothing() {
        let c = registered("Ada");
        let events = c.handle(CustomerCommand::Register {
            name: " Ada ".into(),
        });
        assert_eq!(events, Ok(vec![]));
        assert_eq!(
            c.handle(CustomerCommand::Register { name: "Bob".into() }),
            Err(CustomerError::AlreadyRegistered {
                existing: "Ada".into()
            })
        );
    }

    #[test]
    fn rename_needs_a_registered_customer_and_a_name() {
        assert_eq!(
            Customer::default().handle(CustomerCommand::Rename { name: "Ada".into() }),
            Err(CustomerError::NotFound)
        );
        let c = registered("Ada");
        assert_eq!(
            c.handle(CustomerCommand::Rename { name: "  ".into() }),
            Err(CustomerError::EmptyName)
        );
        assert_eq!(
            c.handle(CustomerCommand::Rename {
                name: "Ada King".into()
            }),
            Ok(vec![CustomerEvent::CustomerRenamed {
                name: "Ada King".into()
            }])
        );
        let long = "x".repeat(CUSTOMER_NAME_LEN_MAX + 1);
        assert!(matches!(
            c.handle(CustomerCommand::Rename { name: long }),
            Err(CustomerError::NameTooLong { .. })
        ));
    }
}
