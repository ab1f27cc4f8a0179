//! What every side of `runnel-bench saga` runs: the three-step order saga with local
//! no-op steps, the rows one transition writes (for the hand-written baselines), the
//! instance ids, and the per-instance latency record.

use std::time::Duration;

use runnel::saga::{DefinitionError, Phase, Progress, SagaDefinition, StepContext, StepError};
use runnel_core::Message;
use serde::{Deserialize, Serialize};

/// The saga's name; its instances are stored under the kind `saga:{name}`.
pub const SAGA_NAME: &str = "bench-order";
/// The steps, in order. Each does nothing and has a compensation that does nothing.
pub const STEPS: [&str; 3] = ["reserve-stock", "charge-payment", "ship-order"];
/// Transitions (commits) one instance takes from start to completion: the start, then one
/// per step outcome.
pub const TRANSITIONS_PER_INSTANCE: usize = STEPS.len() + 1;
/// Longest one instance may take from start to completion before the run gives up (a
/// stuck instance is a bug, not a slow run).
pub const INSTANCE_DEADLINE: Duration = Duration::from_secs(120);
/// The lease owner the baselines write on their run timers (Runnel writes its own).
pub const RAW_OWNER: &str = "runnel-bench-baseline";
/// How long the baselines' run timers are leased for (Runnel's default lease).
pub const RAW_LEASE: Duration = runnel::saga::LEASE_DEFAULT;

/// The saga's data: an order, about 120 bytes of JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    pub order: u64,
    pub customer: String,
    pub sku: String,
    pub quantity: u32,
    pub total_cents: u64,
}

impl Order {
    pub fn new(n: u64) -> Self {
        Order {
            order: n,
            customer: format!("customer-{}", n % 1000),
            sku: format!("sku-{:05}", n % 50_000),
            quantity: 1 + (n % 5) as u32,
            total_cents: 1_000 + (n % 9_000),
        }
    }
}

/// A step or compensation that does nothing: the data goes on unchanged.
async fn no_op(ctx: StepContext<Order>) -> Result<Order, StepError> {
    Ok(ctx.data)
}

/// The order saga: three local no-op steps, each with a no-op compensation.
pub fn definition() -> Result<SagaDefinition<Order>, DefinitionError> {
    let mut builder = SagaDefinition::<Order>::builder(SAGA_NAME, 1);
    for step in STEPS {
        builder = builder.local(step, no_op).compensate_local(no_op);
    }
    builder.build()
}

/// The processor kind the saga's instances are stored under.
pub fn kind() -> String {
    format!("saga:{SAGA_NAME}")
}

/// Instance `n` of the run whose ids start with `prefix` (one prefix per round and side,
/// so no two rounds share an id).
pub fn instance_id(prefix: &str, n: u64) -> String {
    format!("{prefix}-{n}")
}

/// One history line of the baseline: step, what, detail.
pub type RawLine = (Option<&'static str>, &'static str, Option<&'static str>);

/// What the hand-written baseline writes in transition `k` of an instance (0: the start;
/// `k` in 1..=3: the outcome of step `k - 1`), mirroring what Runnel's commit writes: the
/// instance row's new columns, a run timer for the next step (after deleting the previous
/// one), two history lines, and on the last transition one outbox row.
pub struct RawTransition {
    /// The instance's version after this transition (1 after the start).
    pub version: i64,
    pub state: String,
    pub status: &'static str,
    pub progress: Vec<u8>,
    /// Whether the instance finishes here (`finished_at` is set).
    pub finished: bool,
    /// Whether the previous run timer is deleted first (every transition but the start).
    pub deletes_timer: bool,
    /// The run timer's payload, if this transition schedules the next step.
    pub timer: Option<Vec<u8>>,
    pub history: [RawLine; 2],
    /// `(message id, envelope, payload)` of the `SagaCompleted` row, on the last one.
    pub outbox: Option<(String, String, Vec<u8>)>,
}

/// The outbox topic the baselines write the completion event to (Runnel's own for the
/// saga).
pub fn events_topic() -> String {
    format!("sagas.{SAGA_NAME}.events")
}

/// The rows of transition `k` of instance `id` (see [`RawTransition`]).
pub fn raw_transition(id: &str, k: usize) -> anyhow::Result<RawTransition> {
    anyhow::ensure!(
        k <= STEPS.len(),
        "an instance has {TRANSITIONS_PER_INSTANCE} transitions"
    );
    let completed: Vec<usize> = (0..k).collect();
    let token = k as u64 + 1;
    let (phase, state, status) = if k < STEPS.len() {
        (
            Phase::Running {
                step: k,
                attempt: 1,
            },
            format!("running {} (attempt 1)", STEPS[k]),
            "running",
        )
    } else {
        (Phase::Completed, "completed".to_string(), "completed")
    };
    let progress = serde_json::to_vec(&Progress {
        phase,
        completed,
        token: if k < STEPS.len() { token } else { token - 1 },
        failure: None,
    })?;
    let timer = (k < STEPS.len()).then(|| {
        format!(r#"{{"timer":"run","step":{k},"token":{token},"attempt":1,"compensating":false}}"#)
            .into_bytes()
    });
    let history = match k {
        0 => [
            (None, "started", None),
            (Some(STEPS[0]), "running", Some("attempt 1")),
        ],
        k if k < STEPS.len() => [
            (Some(STEPS[k - 1]), "step-succeeded", None),
            (Some(STEPS[k]), "running", Some("attempt 1")),
        ],
        _ => [
            (Some(STEPS[STEPS.len() - 1]), "step-succeeded", None),
            (None, "finished-completed", None),
        ],
    };
    let outbox = if k == STEPS.len() {
        let mut m = Message::json(
            "SagaCompleted",
            &serde_json::json!({ "saga": SAGA_NAME, "instance": id, "status": "completed" }),
        );
        m.source = format!("urn:runnel:saga:{SAGA_NAME}");
        m.key = Some(id.to_string());
        m.subject = Some(id.to_string());
        m.correlation_id = Some(id.to_string());
        m.headers.insert(runnel::saga::SAGA_HEADER.into(), kind());
        m.headers
            .insert(runnel::saga::INSTANCE_HEADER.into(), id.to_string());
        let envelope = runnel_core::outbox::encode_envelope(&m)?;
        Some((m.id.clone(), envelope, m.payload))
    } else {
        None
    };
    Ok(RawTransition {
        version: k as i64 + 1,
        state,
        status,
        progress,
        finished: k == STEPS.len(),
        deletes_timer: k > 0,
        timer,
        history,
        outbox,
    })
}

/// Start-to-completion latencies, in microseconds.
pub struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Latencies(hdrhistogram::Histogram::new(3)?))
    }

    pub fn record(&mut self, latency: Duration) -> anyhow::Result<()> {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0.record(micros)?;
        Ok(())
    }

    pub fn add(&mut self, other: &Latencies) -> anyhow::Result<()> {
        self.0.add(&other.0)?;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(q))
    }
}

/// One side's run: instances completed, the time and CPU time they took, their latencies
/// and the process's peak RSS while it ran.
pub struct SideRun {
    pub instances: u64,
    pub elapsed: Duration,
    /// CPU time of the whole process while it ran (every thread; not a database server's).
    pub cpu: Duration,
    /// CPU time of the local PostgreSQL server's processes while it ran (`None` when there
    /// are none to read).
    pub server_cpu: Option<Duration>,
    pub latencies: Latencies,
    pub peak_rss_bytes: Option<u64>,
}

impl SideRun {
    pub fn empty() -> anyhow::Result<Self> {
        Ok(SideRun {
            instances: 0,
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
            server_cpu: None,
            latencies: Latencies::new()?,
            peak_rss_bytes: None,
        })
    }

    /// Completed instances per second.
    pub fn per_second(&self) -> f64 {
        self.instances as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU time per completed instance.
    pub fn cpu_per_instance(&self) -> Duration {
        self.cpu / u32::try_from(self.instances.max(1)).unwrap_or(u32::MAX)
    }

    /// The local PostgreSQL server's CPU time per completed instance.
    pub fn server_cpu_per_instance(&self) -> Option<Duration> {
        let n = u32::try_from(self.instances.max(1)).unwrap_or(u32::MAX);
        self.server_cpu.map(|cpu| cpu / n)
    }

    /// This run and a later round of the same side, as one.
    pub fn add(&mut self, round: SideRun) -> anyhow::Result<()> {
        self.instances += round.instances;
        self.elapsed += round.elapsed;
        self.cpu += round.cpu;
        self.server_cpu = match (self.server_cpu, round.server_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.latencies.add(&round.latencies)?;
        self.peak_rss_bytes = match (self.peak_rss_bytes, round.peak_rss_bytes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_has_three_compensated_local_steps() {
        let def = definition().unwrap();
        assert_eq!(def.step_names(), STEPS.to_vec());
        assert_eq!(def.kind(), kind());
    }

    #[test]
    fn the_baseline_writes_what_a_runnel_transition_writes() {
        let start = raw_transition("o-1", 0).unwrap();
        assert_eq!(start.version, 1);
        assert!(!start.deletes_timer && start.timer.is_some() && start.outbox.is_none());
        let middle = raw_transition("o-1", 1).unwrap();
        assert!(middle.deletes_timer && middle.timer.is_some() && middle.outbox.is_none());
        assert_eq!(middle.state, "running charge-payment (attempt 1)");
        let last = raw_transition("o-1", STEPS.len()).unwrap();
        assert_eq!((last.version, last.status), (4, "completed"));
        assert!(last.finished && last.deletes_timer && last.timer.is_none());
        let (_, envelope, _) = last.outbox.unwrap();
        assert!(envelope.contains("SagaCompleted"), "{envelope}");
        assert!(raw_transition("o-1", STEPS.len() + 1).is_err());
    }
}
