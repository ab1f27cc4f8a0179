//! `run`'s failure flags (the same failures `PUT /faults` changes while it runs) and its
//! API keys.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use order_fulfillment::fulfillment::{Failures, Faults, FulfillmentConfig};
use runnel::core::config::parse_duration;
use runnel_server::auth::{ENV_API_KEYS, ENV_API_KEYS_FILE};
use runnel_server::ApiKeys;

use crate::demo::BadInput;

/// Failures to inject, and the saga's reply deadline.
#[derive(clap::Args, Debug, Default)]
pub struct FaultArgs {
    /// The inventory has none of this product: its orders are compensated (repeatable).
    #[arg(long, value_name = "PRODUCT")]
    out_of_stock: Vec<String>,
    /// Payments above this many cents are declined: the reservation is released and the
    /// order cancelled.
    #[arg(long, value_name = "CENTS")]
    decline_above: Option<i64>,
    /// A poison message: CreateShipment for an address containing TEXT fails permanently
    /// and is dead-lettered at once. Clear it (PUT /faults) and replay the dead letter.
    #[arg(long, value_name = "TEXT")]
    poison_address: Option<String>,
    /// The shipping handler panics for addresses containing TEXT (retried, then
    /// dead-lettered; the saga waits for an operator).
    #[arg(long, value_name = "TEXT")]
    crash_shipping_for: Option<String>,
    /// No carrier serves addresses containing TEXT: the order is compensated.
    #[arg(long, value_name = "TEXT")]
    unshippable: Option<String>,
    /// A slow service, SERVICE=DURATION (e.g. payments=45s): it waits that long before
    /// answering, past the saga's reply deadline (repeatable).
    #[arg(long, value_name = "SERVICE=DURATION")]
    slow: Vec<String>,
    /// Every service waits this long per command (handler-bound load, e.g. 5ms).
    #[arg(long, value_name = "DURATION")]
    service_delay: Option<String>,
    /// Handlers each service consumer (inventory, payments, shipping) runs at once in this
    /// process (default: the consumer default, 16). With 1 and --service-delay, a service
    /// is bound by its handler: processes add capacity only by sharing its work.
    #[arg(long, value_name = "N")]
    service_concurrency: Option<usize>,
    /// How long a service may take to answer the saga before the step's outcome counts
    /// as unknown and the command is sent again.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    reply_deadline: String,
}

fn millis(text: &str, flag: &str) -> anyhow::Result<u64> {
    let d: Duration =
        parse_duration(text).map_err(|e| BadInput(format!("{flag} {text:?}: {e}")))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl FaultArgs {
    /// The fulfillment configuration the flags describe (checked: a bad value is refused
    /// before anything runs).
    pub fn config(&self) -> anyhow::Result<FulfillmentConfig> {
        let mut slow = std::collections::BTreeMap::new();
        for entry in &self.slow {
            let (service, duration) = entry.split_once('=').ok_or_else(|| {
                BadInput(format!(
                    "--slow {entry:?}: expected SERVICE=DURATION, e.g. payments=45s"
                ))
            })?;
            slow.insert(
                service.trim().to_string(),
                millis(duration.trim(), "--slow")?,
            );
        }
        let failures = Failures {
            out_of_stock: self.out_of_stock.iter().cloned().collect::<BTreeSet<_>>(),
            decline_above_cents: self.decline_above,
            crash_shipping_for: self.crash_shipping_for.clone(),
            unshippable: self.unshippable.clone(),
            poison_address: self.poison_address.clone(),
            slow,
            service_delay_ms: match &self.service_delay {
                Some(text) => millis(text, "--service-delay")?,
                None => 0,
            },
        };
        failures.validate().map_err(|e| BadInput(e.to_string()))?;
        let reply_deadline = parse_duration(&self.reply_deadline)
            .map_err(|e| BadInput(format!("--reply-deadline {:?}: {e}", self.reply_deadline)))?;
        if reply_deadline.is_zero() {
            return Err(BadInput("--reply-deadline must be more than 0".into()).into());
        }
        if let Some(n) = self.service_concurrency {
            if n == 0 || n > runnel::consumer::MAX_CONCURRENCY_MAX {
                return Err(BadInput(format!(
                    "--service-concurrency {n}: expected 1..={}",
                    runnel::consumer::MAX_CONCURRENCY_MAX
                ))
                .into());
            }
        }
        Ok(FulfillmentConfig {
            faults: Faults::new(failures),
            reply_deadline,
            service_concurrency: self.service_concurrency,
            ..FulfillmentConfig::default()
        })
    }
}

/// The API keys for `--http` (the file, else $RUNNEL_API_KEYS_FILE, plus $RUNNEL_API_KEYS),
/// refusing an open server on a public address before anything is opened.
pub fn api_keys(file: Option<PathBuf>, bind: SocketAddr) -> anyhow::Result<ApiKeys> {
    let mut keys = ApiKeys::none();
    let file = file.or_else(|| std::env::var_os(ENV_API_KEYS_FILE).map(Into::into));
    if let Some(path) = file {
        keys = ApiKeys::from_file(&path).map_err(|e| BadInput(e.to_string()))?;
    }
    if let Ok(inline) = std::env::var(ENV_API_KEYS) {
        let more = ApiKeys::from_inline(&inline).map_err(|e| BadInput(e.to_string()))?;
        keys = keys.merged(more).map_err(|e| BadInput(e.to_string()))?;
    }
    if keys.is_empty() && !bind.ip().is_loopback() {
        return Err(BadInput(format!(
            "refusing to serve {bind} without API keys: only a loopback address may be served \
             open; give --api-keys FILE or bind 127.0.0.1"
        ))
        .into());
    }
    Ok(keys)
}
