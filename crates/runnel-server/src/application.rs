//! [`Application`]: what the server serves beyond the event store — the application's
//! stores, its bus, and its command and query buses. Commands, queries and the admin API
//! need it; a server over a bare event store ([`Server::bind`](crate::Server::bind))
//! answers those routes with 404 `no-application`.

use runnel::app::{App, RunningApp};
use runnel::connect::{Bus, Stores};
use runnel::{CommandBus, QueryBus};

use crate::problem::Problem;
use crate::state::AppState;

/// The parts of an application the server reaches. Cloning is cheap: every part is
/// shared, so handlers registered on the buses after the server was built are served too.
#[derive(Clone)]
pub struct Application {
    pub stores: Stores,
    pub bus: Bus,
    pub commands: CommandBus,
    pub queries: QueryBus,
}

impl Application {
    /// The parts of an application being wired (serve it with
    /// `app.task("http", server.into_task())`).
    pub fn of(app: &App) -> Application {
        Application {
            stores: app.stores().clone(),
            bus: app.bus().clone(),
            commands: app.commands().clone(),
            queries: app.queries().clone(),
        }
    }

    /// The parts of a running application.
    pub fn of_running(app: &RunningApp) -> Application {
        Application {
            stores: app.stores().clone(),
            bus: app.bus().clone(),
            commands: app.commands().clone(),
            queries: app.queries().clone(),
        }
    }

    /// Stores and bus without any command or query handler (what `runnel serve` serves).
    pub fn bare(stores: Stores, bus: Bus) -> Application {
        Application {
            stores,
            bus,
            commands: CommandBus::new(),
            queries: QueryBus::new(),
        }
    }
}

impl AppState {
    /// The application, or 404 `no-application` when the server serves a bare event store.
    pub(crate) fn app(&self) -> Result<&Application, Problem> {
        self.inner.app.as_ref().ok_or_else(|| {
            Problem::not_found(
                "no-application",
                "this server serves an event store only; commands, queries and the admin API \
                 need an application (Server::bind_app, or `runnel serve`)",
            )
        })
    }
}
