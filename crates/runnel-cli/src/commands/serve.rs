//! `runnel serve`: the HTTP server on the configured store and bus, until SIGTERM or
//! Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use runnel::app::App;
use runnel::connect::{Bus, Stores};
use runnel_server::auth::{ENV_API_KEYS, ENV_API_KEYS_FILE};
use runnel_server::{ApiKeys, Application, ServedCatalog, Server, ServerConfig, ServerError};

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
        // `/metrics` always: the process-wide recorder, rendered on the API's port.
        metrics: Some(runnel_server::metrics::install_recorder()?),
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

/// Serves until SIGTERM or Ctrl-C, then drains for at most the grace period. The server
/// is a task of an application runtime ([`App`]), as in any Runnel service: supervised,
/// restarted after a failure, stopped on the signal.
pub async fn serve(stores: Stores, bus: Bus, prepared: Prepared) -> anyhow::Result<()> {
    let keys = prepared.config.keys.len();
    let application = Application::bare(stores.clone(), bus.clone());
    let server = Server::bind_app(prepared.config, application)
        .await
        .map_err(|e| match e {
            ServerError::OpenPublicBind { .. } | ServerError::ZeroHeartbeat => {
                anyhow::Error::new(BadInput(e.to_string()))
            }
            other => anyhow::Error::new(other),
        })?;
    let addr = server.local_addr();
    let location = stores.location();
    let bus_url = bus.url().to_string();
    let mut app = App::with(stores, bus);
    // `GET /catalog` and `/asyncapi.json`: what this process registered (an application
    // built on the runtime serves its own, with its described schemas).
    let server = server.with_catalog(ServedCatalog::new(
        &app.catalog(),
        "runnel serve",
        env!("CARGO_PKG_VERSION"),
    ));
    app.task("http", server.into_task());
    // Signals are listened for from here on: the address is printed after, so a SIGTERM
    // sent as soon as it is read stops the server gracefully instead of killing it.
    let running = app.start().await?;
    tracing::info!(%addr, store = %location, bus = %bus_url, keys, "serving");
    // The one line tests and scripts read the address from (the actual port for :0).
    println!(
        "runnel serve: listening on http://{addr} (store {location}, bus {bus_url}, {})",
        if keys == 0 {
            "no API keys: open on loopback".to_string()
        } else {
            format!("{keys} API keys")
        }
    );
    running.wait_for_signal().await;
    let report = running.shutdown(prepared.grace).await;
    if report.all_stopped_in_time() {
        eprintln!("runnel serve: stopped");
    } else {
        tracing::warn!(
            grace_ms = prepared.grace.as_millis() as u64,
            "requests still running after the shutdown grace period; stopping anyway"
        );
        eprintln!("runnel serve: stopped (requests cut off after the grace period)");
    }
    Ok(())
}
