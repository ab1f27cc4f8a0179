//! What the demo's clients do: each order gets a fate (a fixed script of commands), some
//! of which race two clients on the same order at the same moment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use order_fulfillment::{
    CancelOrder, ConfirmOrder, DeliverOrder, OrderError, OrderEvent, OrderLine, OrderStatus,
    PlaceOrder, ShipOrder,
};
use runnel::{
    Command, CommandBus, CommandEnvelope, DispatchError, ExecuteOutcome, RepositoryError,
};

/// Largest latency the histograms track, in microseconds (longer ones are clamped).
const LATENCY_MICROS_MAX: u64 = 60_000_000;

/// The script one order follows. Every fate ends in a known final state, which the demo
/// checks afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Place, confirm, ship.
    Shipped,
    /// Place, confirm, ship, deliver.
    Delivered,
    /// Place, cancel, then try to ship: refused (a cancelled order cannot ship).
    CancelledThenShip,
    /// Place, confirm, then one client ships while another cancels, at the same moment:
    /// one wins, the other conflicts, reloads and is refused.
    RaceShipVsCancel,
    /// Place, then one client confirms while another cancels: if the confirmation lands
    /// first, the cancellation is retried and succeeds; otherwise the confirmation is
    /// refused. Either way the order ends cancelled.
    RaceConfirmVsCancel,
    /// Place, two clients confirm at once (one is refused after its retry), then ship.
    DoubleConfirm,
}

impl Fate {
    /// The fate of order number `i`: a fixed mix, so every run does the same work.
    pub fn of(i: u64) -> Fate {
        match i % 20 {
            0..=9 => Fate::Shipped,
            10 | 11 => Fate::Delivered,
            12 | 13 => Fate::CancelledThenShip,
            14..=16 => Fate::RaceShipVsCancel,
            17 | 18 => Fate::RaceConfirmVsCancel,
            _ => Fate::DoubleConfirm,
        }
    }

    /// The final states this fate allows.
    pub fn allows(self, status: OrderStatus) -> bool {
        match self {
            Fate::Shipped | Fate::DoubleConfirm => status == OrderStatus::Shipped,
            Fate::Delivered => status == OrderStatus::Delivered,
            Fate::CancelledThenShip | Fate::RaceConfirmVsCancel => status == OrderStatus::Cancelled,
            Fate::RaceShipVsCancel => {
                matches!(status, OrderStatus::Shipped | OrderStatus::Cancelled)
            }
        }
    }
}

/// What one client did.
pub struct ClientStats {
    pub commands: u64,
    pub accepted: u64,
    pub events: u64,
    /// Commands that lost every retry to concurrent writers.
    pub gave_up: u64,
    /// Commands the Order aggregate refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Command latency in microseconds, retries included.
    pub latency_micros: Histogram<u64>,
    /// Orders (by number) where a command gave up, so their final state is not checked.
    pub unsettled_orders: Vec<u64>,
}

impl ClientStats {
    pub fn new() -> anyhow::Result<Self> {
        Ok(ClientStats {
            commands: 0,
            accepted: 0,
            events: 0,
            gave_up: 0,
            rejected: BTreeMap::new(),
            latency_micros: Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3)?,
            unsettled_orders: Vec::new(),
        })
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: ClientStats) -> anyhow::Result<()> {
        self.commands += other.commands;
        self.accepted += other.accepted;
        self.events += other.events;
        self.gave_up += other.gave_up;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        self.latency_micros.add(&other.latency_micros)?;
        self.unsettled_orders.extend(other.unsettled_orders);
        Ok(())
    }

    /// Counts one command's result; any failure other than a refusal or a lost race is an
    /// error that ends the demo.
    fn record(
        &mut self,
        order: u64,
        (elapsed, result): (Duration, Result<ExecuteOutcome<OrderEvent>, DispatchError>),
    ) -> anyhow::Result<()> {
        self.commands += 1;
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros
            .saturating_record(micros.clamp(1, LATENCY_MICROS_MAX));
        let error = match result {
            Ok(outcome) => {
                self.accepted += 1;
                self.events += outcome.events.len() as u64;
                return Ok(());
            }
            Err(e) => e,
        };
        match error.downcast_handler_error::<RepositoryError<OrderError>>() {
            Some(RepositoryError::Domain(refusal)) => {
                *self.rejected.entry(refusal.to_string()).or_default() += 1;
                Ok(())
            }
            Some(RepositoryError::ConflictRetriesExhausted { .. }) => {
                self.gave_up += 1;
                self.unsettled_orders.push(order);
                Ok(())
            }
            _ => {
                Err(anyhow::Error::new(error).context(format!("a command on order {order} failed")))
            }
        }
    }
}

/// One client: who it is and the bus it sends through.
pub struct Client {
    pub name: String,
    pub bus: CommandBus,
}

impl Client {
    /// Sends one command and times it.
    async fn send<C>(
        &self,
        order_id: &str,
        command: C,
    ) -> (Duration, Result<ExecuteOutcome<OrderEvent>, DispatchError>)
    where
        C: Command<Output = ExecuteOutcome<OrderEvent>>,
    {
        let envelope = CommandEnvelope::new(command)
            .with_correlation_id(format!("demo-{order_id}"))
            .with_user_id(self.name.clone());
        let start = Instant::now();
        let result = self.bus.dispatch(envelope).await;
        (start.elapsed(), result)
    }

    /// Runs order `i`'s fate to the end.
    pub async fn run_order(
        &self,
        stats: &mut ClientStats,
        i: u64,
        order_id: &str,
    ) -> anyhow::Result<()> {
        let fate = Fate::of(i);
        let id = || order_id.to_string();
        stats.record(i, self.send(order_id, place(i, order_id)).await)?;
        match fate {
            Fate::Shipped | Fate::Delivered => {
                stats.record(
                    i,
                    self.send(order_id, ConfirmOrder { order_id: id() }).await,
                )?;
                stats.record(i, self.send(order_id, ship(order_id)).await)?;
                if fate == Fate::Delivered {
                    stats.record(
                        i,
                        self.send(order_id, DeliverOrder { order_id: id() }).await,
                    )?;
                }
            }
            Fate::CancelledThenShip => {
                stats.record(
                    i,
                    self.send(order_id, cancel(order_id, "customer changed their mind"))
                        .await,
                )?;
                stats.record(i, self.send(order_id, ship(order_id)).await)?;
            }
            Fate::RaceShipVsCancel => {
                stats.record(
                    i,
                    self.send(order_id, ConfirmOrder { order_id: id() }).await,
                )?;
                let (shipped, cancelled) = tokio::join!(
                    self.send(order_id, ship(order_id)),
                    self.send(order_id, cancel(order_id, "fraud check failed")),
                );
                stats.record(i, shipped)?;
                stats.record(i, cancelled)?;
            }
            Fate::RaceConfirmVsCancel => {
                let (confirmed, cancelled) = tokio::join!(
                    self.send(order_id, ConfirmOrder { order_id: id() }),
                    self.send(order_id, cancel(order_id, "out of stock")),
                );
                stats.record(i, confirmed)?;
                stats.record(i, cancelled)?;
            }
            Fate::DoubleConfirm => {
                let (first, second) = tokio::join!(
                    self.send(order_id, ConfirmOrder { order_id: id() }),
                    self.send(order_id, ConfirmOrder { order_id: id() }),
                );
                stats.record(i, first)?;
                stats.record(i, second)?;
                stats.record(i, self.send(order_id, ship(order_id)).await)?;
            }
        }
        Ok(())
    }
}

fn place(i: u64, order_id: &str) -> PlaceOrder {
    let lines = (0..1 + i % 3)
        .map(|k| {
            OrderLine::new(
                format!("p-{}", (i + k * 7) % 50),
                1 + (k as u32 % 3),
                499 + (k as i64) * 250,
            )
        })
        .collect();
    PlaceOrder {
        order_id: order_id.to_string(),
        customer_id: format!("c-{}", i % 97),
        items: lines,
        shipping_address: format!("{} Demo Street", 1 + i % 200),
        billing_address: None,
    }
}

fn ship(order_id: &str) -> ShipOrder {
    ShipOrder {
        order_id: order_id.to_string(),
        tracking_number: Some(format!("TRK-{order_id}")),
    }
}

fn cancel(order_id: &str, reason: &str) -> CancelOrder {
    CancelOrder {
        order_id: order_id.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fate_occurs_in_twenty_orders() {
        let fates: Vec<Fate> = (0..20).map(Fate::of).collect();
        for fate in [
            Fate::Shipped,
            Fate::Delivered,
            Fate::CancelledThenShip,
            Fate::RaceShipVsCancel,
            Fate::RaceConfirmVsCancel,
            Fate::DoubleConfirm,
        ] {
            assert!(fates.contains(&fate), "{fate:?} never happens");
        }
    }

    #[test]
    fn races_allow_either_winner_only_where_both_are_legal() {
        assert!(Fate::RaceShipVsCancel.allows(OrderStatus::Shipped));
        assert!(Fate::RaceShipVsCancel.allows(OrderStatus::Cancelled));
        assert!(!Fate::RaceConfirmVsCancel.allows(OrderStatus::Confirmed));
        assert!(!Fate::CancelledThenShip.allows(OrderStatus::Shipped));
    }
}
