//! `runnel serve`: the event store over HTTP, live subscriptions over SSE, API keys with
//! roles. Routes, limits and semantics are in `docs/server.md`; every route and the role
//! it needs is in [`routes::ROUTES`].
//!
//! ```no_run
//! # async fn demo(events: std::sync::Arc<dyn runnel_core::EventStore>) -> Result<(), runnel_server::ServerError> {
//! use runnel::app::ShutdownTrigger;
//! use runnel_server::{Server, ServerConfig};
//!
//! let (trigger, shutdown) = ShutdownTrigger::new();
//! let server = Server::bind(ServerConfig::local(), events).await?;
//! println!("listening on http://{}", server.local_addr());
//! // Or, in an application: `app.task("http", server.into_task())`.
//! let running = tokio::spawn(server.run(shutdown));
//! // ... later:
//! trigger.fire();
//! running.await.expect("the server task")?;
//! # Ok(()) }
//! ```

pub mod admin;
mod application;
pub mod auth;
pub mod catalog;
pub mod commands;
pub mod dashboard;
pub mod events;
mod extract;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod operations;
pub mod problem;
pub mod queries;
pub mod routes;
pub mod sampler;
mod server;
pub mod sse;
mod state;
pub mod trace;

pub use application::Application;
pub use auth::{ApiKey, ApiKeys, Caller, KeysError, Role};
pub use catalog::ServedCatalog;
pub use limits::HttpLimits;
pub use problem::Problem;
pub use routes::{router, router_with, Access, AppRoute, AppRouteError, AppRoutes, Route, ROUTES};
pub use server::{Server, ServerConfig, ServerError, ServerTask, BIND_DEFAULT, HEARTBEAT_DEFAULT};
pub use state::AppState;
