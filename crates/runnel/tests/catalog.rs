//! The catalog and the schema compatibility check: each rule of `runnel::catalog::compat`
//! on real `JsonSchema` derives of successive versions of one event enum, the snapshot
//! file, and the catalog an application fills as its parts are registered.

// Stored event types carry their aggregate's name (`OrderPlaced`, `OrderShipped`).
#![allow(clippy::enum_variant_names)]

use runnel::app::App;
use runnel::catalog::{
    check, compare, CatalogError, CatalogRegistry, ChangeKind, IncompatibilityKind, PublisherKind,
    ReceiverKind, SchemaSnapshot, SnapshotError,
};
use runnel::connect::SettingsInputs;
use runnel::consumer::{HandlerContext, HandlerError};
use runnel::core::outbox::TopicRouting;
use runnel::core::{DomainEvent, EventFilter, GroupName, TopicName};
use runnel::outbox::EventStoreRelayOptions;
use runnel::{Command, CommandEnvelope, Query, Upcasters};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Implements `DomainEvent` for an enum of the given event types at `version` for
/// `OrderPlaced` (1 for the others).
macro_rules! events {
    ($ty:ident, $placed_version:expr, [$($variant:ident),*]) => {
        impl DomainEvent for $ty {
            fn event_type(&self) -> &'static str {
                match self {
                    $($ty::$variant { .. } => stringify!($variant),)*
                }
            }
            fn schema_version(event_type: &str) -> u32 {
                if event_type == "OrderPlaced" { $placed_version } else { 1 }
            }
        }
    };
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    price: i64,
}

/// The contract in the snapshot.
mod v1 {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Ev {
        OrderPlaced {
            customer_id: String,
            total_cents: i64,
            items: Vec<Line>,
            note: Option<String>,
        },
        OrderShipped {
            carrier: String,
        },
        OrderCancelled,
    }
    events!(Ev, 1, [OrderPlaced, OrderShipped, OrderCancelled]);
}

fn snapshot_of<E: DomainEvent + JsonSchema>() -> SchemaSnapshot {
    catalog_of::<E>(None).schema_snapshot()
}

fn catalog_of<E: DomainEvent + JsonSchema>(
    upcasters: Option<&Upcasters>,
) -> runnel::catalog::Catalog {
    let mut registry = CatalogRegistry::new();
    registry.describe_events::<E>(Some("Order")).unwrap();
    if let Some(u) = upcasters {
        registry.describe_upcasters(u);
    }
    registry.build(&[], &[])
}

fn problems(report: &runnel::catalog::CompatReport) -> Vec<(String, String, IncompatibilityKind)> {
    report
        .problems
        .iter()
        .map(|p| (p.event_type.clone(), p.path.clone(), p.kind.clone()))
        .collect()
}

#[test]
fn schema_check_rejects_removed_field() {
    mod v2 {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Ev {
            OrderPlaced {
                customer_id: String,
                items: Vec<Line>,
                note: Option<String>,
            },
            OrderShipped {
                carrier: String,
            },
            OrderCancelled,
        }
        events!(Ev, 1, [OrderPlaced, OrderShipped, OrderCancelled]);
    }
    // Through the committed file, as CI runs it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema-snapshot.json");
    snapshot_of::<v1::Ev>().write(&path).unwrap();
    let report = check(&catalog_of::<v2::Ev>(None), &path).unwrap();
    assert!(!report.is_compatible());
    assert_eq!(
        problems(&report),
        [(
            "OrderPlaced".to_string(),
            "$.total_cents".to_string(),
            IncompatibilityKind::FieldRemoved
        )]
    );
    assert!(
        report
            .to_string()
            .contains("incompatible: OrderPlaced $.total_cents: field removed"),
        "{report}"
    );
    // The unchanged contract passes.
    assert!(check(&catalog_of::<v1::Ev>(None), &path)
        .unwrap()
        .is_compatible());
}

#[test]
fn schema_check_rejects_renamed_nested_field() {
    mod v2 {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Line2 {
            sku: String,
            unit_price_cents: i64,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Ev {
            OrderPlaced {
                customer_id: String,
                total_cents: i64,
                items: Vec<Line2>,
                note: Option<String>,
            },
            OrderShipped {
                carrier: String,
            },
            OrderCancelled,
        }
        events!(Ev, 1, [OrderPlaced, OrderShipped, OrderCancelled]);
    }
    let report = compare(&snapshot_of::<v1::Ev>(), &snapshot_of::<v2::Ev>());
    assert_eq!(
        problems(&report),
        [
            (
                "OrderPlaced".to_string(),
                "$.items[].price".to_string(),
                IncompatibilityKind::FieldRemoved
            ),
            (
                "OrderPlaced".to_string(),
                "$.items[].unit_price_cents".to_string(),
                IncompatibilityKind::RequiredFieldAdded
            ),
        ]
    );
}

#[test]
fn schema_check_rejects_changed_type() {
    mod v2 {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Ev {
            OrderPlaced {
                customer_id: String,
                total_cents: String,
                items: Vec<Line>,
                note: Option<String>,
            },
            OrderShipped {
                carrier: Vec<String>,
            },
            OrderCancelled,
        }
        events!(Ev, 1, [OrderPlaced, OrderShipped, OrderCancelled]);
    }
    let report = compare(&snapshot_of::<v1::Ev>(), &snapshot_of::<v2::Ev>());
    assert_eq!(
        problems(&report),
        [
            (
                "OrderPlaced".to_string(),
                "$.total_cents".to_string(),
                IncompatibilityKind::TypeChanged {
                    was: "integer".into(),
                    now: "string".into()
                }
            ),
            (
                "OrderShipped".to_string(),
                "$.carrier".to_string(),
                IncompatibilityKind::TypeChanged {
                    was: "string".into(),
                    now: "array".into()
                }
            ),
        ]
    );
}

#[test]
fn schema_check_rejects_added_required_field_and_accepts_added_optional_field() {
    mod v2 {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Ev {
            OrderPlaced {
                customer_id: String,
                total_cents: i64,
                items: Vec<Line>,
                note: Option<String>,
                currency: String,
                coupon: Option<String>,
            },
            OrderShipped {
                carrier: String,
            },
            OrderCancelled,
        }
        events!(Ev, 1, [OrderPlaced, OrderShipped, OrderCancelled]);
    }
    let report = compare(&snapshot_of::<v1::Ev>(), &snapshot_of::<v2::Ev>());
    assert_eq!(
        problems(&report),
        [(
            "OrderPlaced".to_string(),
            "$.currency".to_string(),
            IncompatibilityKind::RequiredFieldAdded
        )]
    );
    assert_eq!(report.changes.len(), 1, "{report}");
    assert_eq!(report.changes[0].path, "$.coupon");
    assert_eq!(report.changes[0].kind, ChangeKind::OptionalFieldAdded);
}

#[test]
fn schema_check_rejects_removed_event_type_and_accepts_new_one() {
    mod v2 {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Ev {
            OrderPlaced {
                customer_id: String,
                total_cents: i64,
                items: Vec<Line>,
                note: Option<String>,
            },
            OrderShipped {
                carrier: String,
            },
            OrderDelivered,
        }
        events!(Ev, 1, [OrderPlaced, OrderShipped, OrderDelivered]);
    }
    let report = compare(&snapshot_of::<v1::Ev>(), &snapshot_of::<v2::Ev>());
    assert_eq!(
        problems(&report),
        [(
            "OrderCancelled".to_string(),
            "$".to_string(),
            IncompatibilityKind::EventTypeRemoved
        )]
    );
    assert_eq!(report.changes.len(), 1);
    assert_eq!(report.changes[0].event_type, "OrderDelivered");
    assert_eq!(report.changes[0].kind, ChangeKind::EventTypeAdded);
}

/// Version 2 of `OrderPlaced` dropped `total_cents` and renamed `price`: only acceptable
/// when an upcaster brings version 1 payloads to version 2.
mod v2_upcast {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Ev {
        OrderPlaced {
            customer_id: String,
            items: Vec<Line>,
            note: Option<String>,
            currency: String,
        },
        OrderShipped {
            carrier: String,
        },
        OrderCancelled,
    }
    events!(Ev, 2, [OrderPlaced, OrderShipped, OrderCancelled]);
}

#[test]
fn schema_check_accepts_a_new_version_an_upcaster_covers() {
    let mut upcasters = Upcasters::new();
    upcasters
        .register("OrderPlaced", 1, |mut v: serde_json::Value| {
            let obj = v.as_object_mut().unwrap();
            obj.remove("total_cents");
            obj.insert("currency".into(), "EUR".into());
            Ok(v)
        })
        .unwrap();
    let catalog = catalog_of::<v2_upcast::Ev>(Some(&upcasters));
    assert_eq!(catalog.event("OrderPlaced").unwrap().upcast_from, Some(1));
    let report = compare(&snapshot_of::<v1::Ev>(), &catalog.schema_snapshot());
    assert!(report.is_compatible(), "{report}");
    assert_eq!(
        report.changes[0].kind,
        ChangeKind::UpcastVersion { was: 1, now: 2 }
    );
}

#[test]
fn schema_check_rejects_a_new_version_without_upcaster_and_a_lowered_one() {
    let report = compare(&snapshot_of::<v1::Ev>(), &snapshot_of::<v2_upcast::Ev>());
    assert_eq!(
        problems(&report),
        [(
            "OrderPlaced".to_string(),
            "$".to_string(),
            IncompatibilityKind::VersionRaisedWithoutUpcaster { was: 1, now: 2 }
        )]
    );
    let report = compare(&snapshot_of::<v2_upcast::Ev>(), &snapshot_of::<v1::Ev>());
    assert_eq!(
        problems(&report)[0].2,
        IncompatibilityKind::SchemaVersionLowered { was: 2, now: 1 }
    );
}

#[test]
fn schema_check_rejects_removed_enum_value() {
    #[derive(Serialize, Deserialize, JsonSchema)]
    enum Carrier {
        Post,
        Courier,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    enum Carrier2 {
        Post,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    enum A {
        Shipped { carrier: Carrier },
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    enum B {
        Shipped { carrier: Carrier2 },
    }
    events!(A, 1, [Shipped]);
    events!(B, 1, [Shipped]);
    let report = compare(&snapshot_of::<A>(), &snapshot_of::<B>());
    assert_eq!(
        problems(&report),
        [(
            "Shipped".to_string(),
            "$.carrier".to_string(),
            IncompatibilityKind::EnumValueRemoved {
                value: "Courier".into()
            }
        )]
    );
}

#[test]
fn snapshot_files_round_trip_and_bad_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.json");
    let snapshot = snapshot_of::<v1::Ev>();
    snapshot.write(&path).unwrap();
    assert_eq!(SchemaSnapshot::read(&path).unwrap(), snapshot);
    // A catalog file (the body of GET /catalog) reads as its snapshot.
    let catalog_path = dir.path().join("catalog.json");
    std::fs::write(
        &catalog_path,
        serde_json::to_vec(&catalog_of::<v1::Ev>(None)).unwrap(),
    )
    .unwrap();
    assert_eq!(SchemaSnapshot::read(&catalog_path).unwrap(), snapshot);

    std::fs::write(&path, b"{nope").unwrap();
    let e = SchemaSnapshot::read(&path).unwrap_err();
    assert!(
        matches!(e, SnapshotError::Malformed { .. }) && e.is_bad_input(),
        "{e}"
    );
    std::fs::write(
        &path,
        br#"{"format": "runnel-schema-snapshot/9", "events": {}}"#,
    )
    .unwrap();
    let e = SchemaSnapshot::read(&path).unwrap_err();
    assert!(matches!(e, SnapshotError::UnsupportedFormat { .. }), "{e}");
    let e = SchemaSnapshot::read(&dir.path().join("missing.json")).unwrap_err();
    assert!(
        matches!(e, SnapshotError::Read { .. }) && !e.is_bad_input(),
        "{e}"
    );
}

#[test]
fn a_struct_is_refused_as_an_event_enum_and_two_types_may_not_share_an_event_type() {
    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Pinged {
        at: u64,
    }
    impl DomainEvent for Pinged {
        fn event_type(&self) -> &'static str {
            "Pinged"
        }
    }
    let mut registry = CatalogRegistry::new();
    let e = registry.describe_events::<Pinged>(None).unwrap_err();
    assert!(matches!(e, CatalogError::NotAnEventEnum { .. }), "{e}");
    registry.describe_event::<Pinged>("Pinged", None).unwrap();
    let catalog = registry.build(&[], &[]);
    assert_eq!(
        catalog.event("Pinged").unwrap().schema["required"],
        json!(["at"])
    );

    registry.describe_events::<v1::Ev>(None).unwrap();
    mod other {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Ev {
            OrderCancelled,
        }
        events!(Ev, 1, [OrderCancelled]);
    }
    let e = registry.describe_events::<other::Ev>(None).unwrap_err();
    assert!(
        matches!(e, CatalogError::ConflictingEventType { ref event_type, .. } if event_type == "OrderCancelled"),
        "{e}"
    );
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Cancel {
    order_id: String,
}

impl Command for Cancel {
    const NAME: &'static str = "Cancel";
    type Output = ();
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Count {}

impl Query for Count {
    const NAME: &'static str = "Count";
    type Response = u64;
}

#[derive(Serialize, Deserialize)]
struct Undescribed {}

impl Command for Undescribed {
    const NAME: &'static str = "Undescribed";
    type Output = ();
}

#[tokio::test]
async fn an_app_catalog_lists_events_requests_topics_receivers_and_publishers() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::gather(dir.path())
        .unwrap()
        .db("--db", Some(dir.path().join("app.db")))
        .bus("--bus", Some("embedded".into()))
        .resolve()
        .unwrap();
    let mut app = App::connect(&settings).await.unwrap();
    app.describe_events::<v1::Ev>().unwrap();
    app.describe_command::<Cancel>().unwrap();
    app.describe_query::<Count>().unwrap();
    app.commands()
        .register_fn(|_: CommandEnvelope<Cancel>| async { Ok::<_, std::convert::Infallible>(()) })
        .unwrap();
    app.commands()
        .register_fn(|_: CommandEnvelope<Undescribed>| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    // Events without a category reach a fixed topic only.
    app.event_store_relay(EventStoreRelayOptions {
        checkpoint: "catalog-relay".into(),
        routing: TopicRouting::Fixed(TopicName::new("orders").unwrap()),
        filter: EventFilter::all(),
        ..EventStoreRelayOptions::default()
    });
    app.consumer(
        TopicName::new("orders").unwrap(),
        GroupName::new("billing").unwrap(),
        |c| c.handler(|_: HandlerContext| async { Ok::<_, HandlerError>(()) }),
    );
    app.describe_publisher(&TopicName::new("audit").unwrap(), "auditor")
        .unwrap();
    let catalog = app.catalog();
    let types: Vec<&str> = catalog
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(types, ["OrderCancelled", "OrderPlaced", "OrderShipped"]);
    let commands: Vec<(&str, bool)> = catalog
        .commands
        .iter()
        .map(|c| (c.name.as_str(), c.schema.is_some()))
        .collect();
    assert_eq!(commands, [("Cancel", true), ("Undescribed", false)]);
    assert_eq!(catalog.queries[0].name, "Count");
    let orders = catalog.topic("orders").unwrap();
    assert_eq!(orders.event_types, types);
    assert_eq!(orders.receivers[0].group, "billing");
    assert_eq!(orders.receivers[0].kind, ReceiverKind::Consumer);
    assert_eq!(orders.publishers[0].name, "event-store-relay:catalog-relay");
    assert_eq!(orders.publishers[0].kind, PublisherKind::EventStoreRelay);
    assert_eq!(
        catalog.topic("audit").unwrap().publishers[0].kind,
        PublisherKind::Application
    );
    // The running application has the same catalog.
    let running = app.start().await.unwrap();
    assert_eq!(running.catalog(), catalog);
    let report = running.shutdown(std::time::Duration::from_secs(20)).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}

#[test]
fn category_routing_puts_each_aggregates_events_on_its_topic() {
    let mut registry = CatalogRegistry::new();
    registry.describe_events::<v1::Ev>(Some("Order")).unwrap();
    registry
        .relay(
            "event-store-relay:r",
            &TopicRouting::AggregateEvent,
            &EventFilter::categories(["Order"]),
        )
        .unwrap();
    let catalog = registry.build(&[], &[]);
    let topics: Vec<(&str, &Vec<String>)> = catalog
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), &t.event_types))
        .collect();
    assert_eq!(
        topics,
        [
            ("Order.OrderCancelled", &vec!["OrderCancelled".to_string()]),
            ("Order.OrderPlaced", &vec!["OrderPlaced".to_string()]),
            ("Order.OrderShipped", &vec!["OrderShipped".to_string()]),
        ]
    );
    let doc = catalog.asyncapi("Orders", "1.0.0");
    assert_eq!(
        doc["channels"]["Order.OrderPlaced"]["address"],
        "Order.OrderPlaced"
    );
    assert_eq!(
        doc["components"]["messages"]["OrderPlaced"]["payload"]["schema"]["required"],
        json!(["customer_id", "items", "total_cents"]),
        "required fields are listed sorted"
    );
    let send = &doc["operations"]["send.Order.OrderPlaced.event-store-relay_r"];
    assert_eq!(send["action"], "send");
    assert_eq!(send["channel"]["$ref"], "#/channels/Order.OrderPlaced");
}
