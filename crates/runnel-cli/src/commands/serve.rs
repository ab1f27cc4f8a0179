//! `runnel serve`: the HTTP server on the configured store and bus, until SIGTERM or
//! Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use runnel::app::ShutdownTrigger;
use runnel::connect::{Bus, Stores};
use runnel_server::auth::{ENV_API_KEYS, ENV_API_KEYS_FILE};
use runnel_server::{ApiKeys, Server, ServerConfig, ServerError};

use crate::cli::ServeArgs;
use crate::exit::BadInput;
use crate::time_args::parse_duration;

/// The configuration `serve` checks before opening anything: refused input opens no store.
pub struct Prepared {
    config: ServerConfig,
    grace: Duration,
}

/// Reads the flags and the keys (file and `$RUNNEL_API_KEYS`).
pub fn prepare(args: &ServeArgs) -> anyhow::Result<Prepared> {
    let bind: SocketAddr = args.bind.parse().map_err(|_| {
        BadInput(format!(
            "--bind {:?} is not an address like 127.0.0.1:7411 or [::1]:7411",
            args.bind
        ))
    })?;
    let heartbeat = parse_duration(&args.heartbeat)?;
    let grace = parse_duration(&args.shutdown_grace)?;
    let mut keys = ApiKeys::none();
    let file = args
        .api_keys
        .clone()
        .or_else(|| std::env::var_os(ENV_API_KEYS_FILE).map(Into::into));
    if let Some(path) = file {
        keys = ApiKeys::from_file(&path).map_err(|e| BadInput(e.to_string()))?;
    }
    if let Ok(inline) = std::env::var(ENV_API_KEYS) {
        let more = ApiKeys::from_inline(&inline).map_err(|e| BadInput(e.to_string()))?;
        keys = keys.merged(more).map_err(|e| BadInput(e.to_string()))?;
    }
    let config = ServerConfig {
        bind,
        keys,
        limits: None,
        heartbeat,
    };
    // Refuse an open public bind before any store is opened.
    if config.keys.is_empty() && !bind.ip().is_loopback() {
        return Err(BadInput(ServerError::OpenPublicBind { bind }.to_string()).into());
    }
    if heartbeat.is_zero() {
        return Err(BadInput(ServerError::ZeroHeartbeat.to_string()).into());
    }
    Ok(Prepared { config, grace })
}

/// Serves until SIGTERM or Ctrl-C, then drains for at most the grace period.
pub async fn serve(stores: Stores, bus: Bus, prepared: Prepared) -> anyhow::Result<()> {
    // Listen for signals before binding: a SIGTERM sent as soon as the address is printed
    // must stop the server gracefully, not kill it.
    let signals = Signals::install()?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    let keys = prepared.config.keys.len();
    let server = Server::bind(prepared.config, stores.events.clone(), shutdown)
        .await
        .map_err(|e| match e {
            ServerError::OpenPublicBind { .. } | ServerError::ZeroHeartbeat => {
                anyhow::Error::new(BadInput(e.to_string()))
            }
            other => anyhow::Error::new(other),
        })?;
    let addr = server.local_addr();
    tracing::info!(%addr, store = %stores.url(), bus = %bus.url(), keys, "serving");
    // The one line tests and scripts read the address from (the actual port for :0).
    println!(
        "runnel serve: listening on http://{addr} (store {}, bus {}, {})",
        stores.location(),
        bus.url(),
        if keys == 0 {
            "no API keys: open on loopback".to_string()
        } else {
            format!("{keys} API keys")
        }
    );
    let mut running = tokio::spawn(server.run());
    tokio::select! {
        done = &mut running => return Ok(done??),
        _ = signals.received() => {}
    }
    trigger.fire();
    drain(running, prepared.grace).await
}

/// Waits for in-flight requests up to `grace`, then gives up on them.
async fn drain(
    running: tokio::task::JoinHandle<Result<(), ServerError>>,
    grace: Duration,
) -> anyhow::Result<()> {
    match tokio::time::timeout(grace, running).await {
        Ok(done) => {
            done??;
            eprintln!("runnel serve: stopped");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "requests still running after the shutdown grace period; stopping anyway"
            );
            eprintln!("runnel serve: stopped (requests cut off after the grace period)");
            Ok(())
        }
    }
}

/// SIGTERM and SIGINT, registered at once (so none is missed between registration and
/// the first wait).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn received(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("Ctrl-C received"),
        }
        #[cfg(not(unix))]
        runnel::app::wait_for_signal().await;
    }
}
