//! The application runtime: one place that connects the stores and the bus from
//! configuration, holds the command and query buses, registers the long-running parts
//! (consumers, the outbox relay or the event store as outbox, projections, stream jobs,
//! sagas, and any task of the application's own), starts and supervises them, and shuts them down gracefully.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use runnel::app::App;
//! use runnel::connect::SettingsInputs;
//! use runnel::consumer::{HandlerContext, HandlerError};
//! use runnel::core::{GroupName, TopicName};
//! use runnel::outbox::EventStoreRelayOptions;
//!
//! let dir = tempfile::tempdir()?;
//! // `--store` / `--bus` flags, else $RUNNEL_STORE / $RUNNEL_BUS, else runnel.toml, else
//! // the embedded default.
//! let settings = SettingsInputs::gather(dir.path())?
//!     .db("--db", Some(dir.path().join("app.db")))
//!     .resolve()?;
//! let mut app = App::connect(&settings).await?;
//! // The event store is the outbox: every appended event is published on the bus.
//! app.event_store_relay(EventStoreRelayOptions::default());
//! // A consumer of those events, dead-lettering into the store after its retries.
//! app.consumer(TopicName::new("Order.OrderPlaced")?, GroupName::new("billing")?, |c| {
//!     c.handler(|ctx: HandlerContext| async move {
//!         tracing::info!(id = %ctx.message().id, "bill the order");
//!         Ok::<_, HandlerError>(())
//!     })
//! });
//! let running = app.start().await?;
//! // ... `running.wait_for_signal().await` in a service; here, stop at once:
//! let report = running.shutdown(Duration::from_secs(10)).await;
//! assert!(report.all_stopped_in_time());
//! # Ok(()) }
//! ```
//!
//! Every task runs on its own tokio task. One that fails — returns an error or panics —
//! is restarted after an exponential backoff with jitter ([`RestartPolicy`]), logged at
//! `error` and counted in the `runnel_app_task_restarts_total{task}` metric. Shutdown
//! (SIGTERM or Ctrl-C in [`RunningApp::wait_for_signal`], or [`RunningApp::shutdown`])
//! asks every task to stop, waits up to the deadline, aborts what is left and says so in
//! the [`AppReport`].

mod catalog;
mod restart;
mod shutdown;
mod supervisor;
mod topic_projection;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runnel_core::{GroupName, TopicName};

use crate::aggregate::{Aggregate, Repository};
use crate::bus::BoxError;
use crate::catalog::{CatalogRegistry, PublisherKind, ReceiverKind};
use crate::connect::{open_bus, open_stores, Bus, ConnectError, OpenMode, Settings, Stores};
use crate::consumer::{Consumer, ConsumerBuilder};
use crate::outbox::{EventStoreRelay, EventStoreRelayOptions, Relay, RelayOptions};
use crate::projection::{Projection, ProjectionRunner, RunnerOptions};
use crate::saga::{reply_handler, SagaData, SagaDefinition, SagaOptions, SagaRuntime};
use crate::{CommandBus, QueryBus};

pub use restart::{
    RestartPolicy, RESTART_BASE_DELAY_DEFAULT, RESTART_HEALTHY_AFTER_DEFAULT,
    RESTART_MAX_DELAY_DEFAULT,
};
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use supervisor::{AppReport, TaskReport, METRIC_TASKS_RUNNING, METRIC_TASK_RESTARTS};
use supervisor::{Supervisor, TaskFn, TaskSpec};

/// Default time shutdown waits for every task before aborting the rest.
pub const SHUTDOWN_DEADLINE_DEFAULT: Duration = Duration::from_secs(30);
/// Default time a consumer's in-flight handlers get to finish at shutdown.
pub const CONSUMER_GRACE_DEFAULT: Duration = Duration::from_secs(10);
/// Ack timeout of the consumers the application registers for itself (a saga's reply
/// consumer): how long the deliveries a killed process held wait before they come back to
/// the group. Their leases are kept alive while they are handled
/// ([`ConsumerBuilder::keep_lease_alive`]), so it can be short; with the other leases
/// below it keeps a killed process's work taken over within 10 s.
pub const TAKEOVER_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Lease of each claim of the outbox relay the application starts for itself: how long a
/// killed relay's rows (and their keys) stay blocked before another process publishes
/// them. A claim is published in well under a second; one that outlasts its lease is
/// published again by another relay (consumers deduplicate by message id).
pub const OUTBOX_RELAY_LEASE: Duration = Duration::from_secs(5);

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The store or the bus could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Two tasks share a name; each needs its own (logs and metrics are by name).
    #[error("a task named {0:?} is already registered; give each task its own name")]
    DuplicateTask(String),
}

/// An application being wired: its stores, its bus, its command and query buses, and the
/// tasks it will run. See the [module documentation](self).
pub struct App {
    stores: Stores,
    bus: Bus,
    commands: CommandBus,
    queries: QueryBus,
    tasks: Vec<TaskSpec>,
    restart: RestartPolicy,
    consumer_grace: Duration,
    /// A part that sends through the outbox is registered (a saga): start the outbox
    /// relay unless the application registered one.
    wants_outbox_relay: bool,
    /// What the registered parts receive and publish, and the described schemas.
    catalog: CatalogRegistry,
}

impl App {
    /// Opens the store and the bus that `settings` name (creating the store if missing).
    pub async fn connect(settings: &Settings) -> Result<App, AppError> {
        let stores = open_stores(&settings.store, OpenMode::CreateIfMissing).await?;
        let bus = open_bus(&settings.bus, &stores).await?;
        tracing::info!(
            store = %settings.store,
            store_from = %settings.store_origin,
            bus = %settings.bus,
            bus_from = %settings.bus_origin,
            "application connected"
        );
        Ok(App::with(stores, bus))
    }

    /// An application over stores and a bus opened by the caller.
    pub fn with(stores: Stores, bus: Bus) -> App {
        // Outbox rows built anywhere in the application capture the current trace.
        crate::trace::install();
        App {
            stores,
            bus,
            commands: CommandBus::new(),
            queries: QueryBus::new(),
            tasks: Vec::new(),
            restart: RestartPolicy::default(),
            consumer_grace: CONSUMER_GRACE_DEFAULT,
            wants_outbox_relay: false,
            catalog: CatalogRegistry::new(),
        }
    }

    /// The stores.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The command bus (cloning it is cheap and shares the registrations).
    pub fn commands(&self) -> &CommandBus {
        &self.commands
    }

    /// The query bus.
    pub fn queries(&self) -> &QueryBus {
        &self.queries
    }

    /// A repository of `A` over the event store, with snapshots in the snapshot store
    /// (taken when the repository's snapshot policy says so).
    pub fn repository<A: Aggregate>(&self) -> Repository<A> {
        Repository::new(Arc::clone(&self.stores.events))
            .with_snapshot_store(Arc::clone(&self.stores.snapshots))
    }

    /// How failed tasks are restarted.
    pub fn restart_policy(&mut self, policy: RestartPolicy) -> &mut Self {
        self.restart = policy;
        self
    }

    /// How long a consumer's in-flight handlers may finish at shutdown (within the
    /// overall shutdown deadline).
    pub fn consumer_grace(&mut self, grace: Duration) -> &mut Self {
        self.consumer_grace = grace;
        self
    }

    /// Registers a task of the application's own. `run` is called at each (re)start with
    /// the shutdown signal; it returns `Ok` when shutdown is asked (or its work is done),
    /// or an error to be restarted after a backoff.
    ///
    /// Panics if the name is taken; [`App::try_task`] returns the error instead.
    pub fn task<F, Fut>(&mut self, name: impl Into<String>, run: F) -> &mut Self
    where
        F: Fn(Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        if let Err(e) = self.try_task(name, run) {
            panic!("{e}");
        }
        self
    }

    /// Like [`App::task`], returning an error for a name that is taken.
    pub fn try_task<F, Fut>(&mut self, name: impl Into<String>, run: F) -> Result<(), AppError>
    where
        F: Fn(Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let name = name.into();
        if self.tasks.iter().any(|t| t.name == name) {
            return Err(AppError::DuplicateTask(name));
        }
        let run: TaskFn = Arc::new(move |shutdown| Box::pin(run(shutdown)));
        self.tasks.push(TaskSpec { name, run });
        Ok(())
    }

    /// Registers a consumer of `topic` in `group` on the application's bus, with the
    /// application's publisher (for effects) and dead-letter store already set.
    /// `configure` adds the handler and any other layer; it runs again at each restart.
    /// The task is named `consumer:{topic}/{group}`.
    pub fn consumer<F>(&mut self, topic: TopicName, group: GroupName, configure: F) -> &mut Self
    where
        F: Fn(ConsumerBuilder) -> ConsumerBuilder + Send + Sync + 'static,
    {
        let name = format!("consumer:{topic}/{group}");
        self.record(|c| c.receiver(&topic, &group, ReceiverKind::Consumer).map(drop));
        let subscriber = Arc::clone(&self.bus.subscriber);
        let publisher = Arc::clone(&self.bus.publisher);
        let dead_letters = Arc::clone(&self.stores.dead_letters);
        let lag_probe = self.bus.lag_probe.clone();
        let grace = self.consumer_grace;
        let configure = Arc::new(configure);
        self.task(name, move |shutdown| {
            let mut builder =
                Consumer::builder(Arc::clone(&subscriber), topic.clone(), group.clone())
                    .publisher(Arc::clone(&publisher))
                    .dead_letters(Arc::clone(&dead_letters));
            if let Some(probe) = &lag_probe {
                builder = builder.lag_probe(Arc::clone(probe), None);
            }
            let builder = configure(builder);
            async move {
                let mut handle = builder.start().await?;
                tokio::select! {
                    _ = shutdown.requested() => {
                        let report = handle.shutdown(grace).await?;
                        tracing::debug!(?report, "consumer stopped");
                        Ok(())
                    }
                    stopped = handle.stopped() => Err(stopped_by_itself(stopped)),
                }
            }
        })
    }

    /// Registers the event store as the outbox: an [`EventStoreRelay`] publishing `$all`
    /// on the application's bus from its checkpoint (task `event-store-relay:{checkpoint}`).
    pub fn event_store_relay(&mut self, options: EventStoreRelayOptions) -> &mut Self {
        let name = format!("event-store-relay:{}", options.checkpoint);
        self.record(|c| c.relay(&name, &options.routing, &options.filter).map(drop));
        let events = Arc::clone(&self.stores.events);
        let checkpoints = Arc::clone(&self.stores.checkpoints);
        let publisher = Arc::clone(&self.bus.publisher);
        self.task(name, move |shutdown| {
            let relay = EventStoreRelay::new(
                Arc::clone(&events),
                Arc::clone(&checkpoints),
                Arc::clone(&publisher),
                options.clone(),
            );
            async move {
                let mut handle = relay?.start();
                tokio::select! {
                    _ = shutdown.requested() => {
                        let published = handle.shutdown().await?;
                        tracing::debug!(published, "event store relay stopped");
                        Ok(())
                    }
                    stopped = handle.stopped() => Err(stopped_by_itself(stopped)),
                }
            }
        })
    }

    /// Registers the outbox [`Relay`] publishing the store's outbox table on the
    /// application's bus (task `outbox-relay:{name}`).
    pub fn outbox_relay(&mut self, options: RelayOptions) -> &mut Self {
        let name = format!("outbox-relay:{}", options.name);
        let stores = self.stores.clone();
        let bus = self.bus.clone();
        self.task(name, move |shutdown| {
            let stores = stores.clone();
            let bus = bus.clone();
            let options = options.clone();
            async move {
                let outbox = stores.relay_outbox(&bus).await?;
                let publisher = Arc::clone(&bus.publisher);
                let mut handle = Relay::new(outbox, publisher, options)?.start();
                tokio::select! {
                    _ = shutdown.requested() => {
                        let report = handle.shutdown().await?;
                        tracing::debug!(?report, "outbox relay stopped");
                        Ok(())
                    }
                    stopped = handle.stopped() => Err(stopped_by_itself(stopped)),
                }
            }
        })
    }

    /// Registers a saga with default [`SagaOptions`]; see [`App::saga_with`].
    pub fn saga<D: SagaData>(&mut self, definition: SagaDefinition<D>) -> SagaRuntime<D> {
        self.saga_with(definition, SagaOptions::default())
    }

    /// Registers a saga: its runtime on the application's processor store (task
    /// `saga:{name}`: local steps, timers, work taken over from dead processes), a consumer
    /// of its reply topic in group `saga-{name}` (task `consumer:{topic}/saga-{name}`), and
    /// — unless the application registers one — the outbox relay that sends its commands
    /// and lifecycle events. Returns the runtime, to start instances with.
    pub fn saga_with<D: SagaData>(
        &mut self,
        definition: SagaDefinition<D>,
        options: SagaOptions,
    ) -> SagaRuntime<D> {
        let runtime = SagaRuntime::with_options(
            definition,
            Arc::clone(&self.stores.processors),
            Arc::new(runnel_core::SystemClock),
            options,
        );
        let name = runtime.definition().name().to_string();
        let publisher = format!("saga:{name}");
        let mut sends: Vec<TopicName> = runtime
            .definition()
            .command_topics()
            .into_iter()
            .cloned()
            .collect();
        sends.push(runtime.definition().events_topic().clone());
        for topic in &sends {
            self.record(|c| {
                c.publisher(topic, &publisher, PublisherKind::Saga)
                    .map(drop)
            });
        }
        let r = runtime.clone();
        self.task(format!("saga:{name}"), move |shutdown| {
            let r = r.clone();
            async move { r.run(shutdown).await.map_err(BoxError::from) }
        });
        let topic = runtime.definition().reply_topic().clone();
        let group =
            GroupName::new(format!("saga-{name}")).expect("a saga name is a valid group name");
        let r = runtime.clone();
        // A reply must never be missed because the group was created after it was sent.
        self.consumer(topic, group, move |c| {
            c.subscribe_options(runnel_core::bus::SubscribeOptions {
                start: runnel_core::bus::StartPosition::Earliest,
                ack_timeout: TAKEOVER_ACK_TIMEOUT,
                ..runnel_core::bus::SubscribeOptions::default()
            })
            .keep_lease_alive()
            .handler(reply_handler(r.clone()))
        });
        self.wants_outbox_relay = true;
        runtime
    }

    /// Registers a projection with default [`RunnerOptions`]; see [`App::projection_with`].
    pub fn projection(&mut self, projection: Arc<dyn Projection>) -> &mut Self {
        self.projection_with(projection, RunnerOptions::default())
    }

    /// Registers a projection's runner (task `projection:{name}:v{version}`), and for an
    /// inline projection ([`Projection::inline`](crate::projection::Projection::inline))
    /// installs it in the event store's appends (panics if it is partitioned). The runner registers
    /// the version's tables, then applies `$all` to every partition this process can
    /// lease, parking failed events in the application's dead letters when
    /// `options.on_failure` says so. Several processes may register the same projection:
    /// the leases let one apply each partition at a time.
    pub fn projection_with(
        &mut self,
        projection: Arc<dyn Projection>,
        options: RunnerOptions,
    ) -> &mut Self {
        let name = format!("projection:{}:v{}", projection.name(), projection.version());
        if projection.inline() {
            // A partitioned inline projection is a programming error, refused here like a
            // task name registered twice.
            if let Err(e) = crate::projection::install_inline(&self.stores, Arc::clone(&projection))
            {
                panic!("{e}");
            }
        }
        let runner = Arc::new(
            ProjectionRunner::new(
                projection,
                Arc::clone(&self.stores.projections),
                Arc::clone(&self.stores.events),
                options,
            )
            .with_dead_letters(Arc::clone(&self.stores.dead_letters)),
        );
        self.task(name, move |shutdown| {
            let runner = Arc::clone(&runner);
            async move { runner.run(shutdown).await.map_err(BoxError::from) }
        })
    }

    /// Registers a stream job with default [`RunOptions`](crate::stream::RunOptions); see
    /// [`App::stream_job_with`].
    pub fn stream_job(&mut self, job: crate::stream::Job) -> &mut Self {
        self.stream_job_with(job, crate::stream::RunOptions::default())
    }

    /// Registers a stream job (task `stream-job:{name}:v{version}`) on the application's
    /// stores: at each (re)start it registers the job's tables, then processes `$all`
    /// under the job's lease until shutdown, when it commits nothing half done and gives
    /// the lease up. Several processes may register the same job: the lease lets one run
    /// it at a time, and another takes over within [`RunOptions::lease`] of a killed
    /// holder's last batch. A job that publishes to a topic ([`Sink::Topic`], or
    /// [`LateOutput::Topic`]) sends through the outbox, so the outbox relay is started
    /// unless the application registers one, and the topic is recorded in the catalog.
    ///
    /// Where the job stands (position, watermark, lag, late records) is read from the
    /// store, as for projections: [`crate::stream::job_status`].
    ///
    /// [`RunOptions::lease`]: crate::stream::RunOptions::lease
    /// [`Sink::Topic`]: crate::stream::Sink::Topic
    /// [`LateOutput::Topic`]: crate::stream::LateOutput::Topic
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use runnel::app::App;
    /// use runnel::connect::{open_bus, open_stores, BusUrl, OpenMode, StoreUrl};
    /// use runnel::core::EventFilter;
    /// use runnel::stream::{Agg, JobBuilder, Sink};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let stores = open_stores(&StoreUrl::sqlite(dir.path().join("app.db")), OpenMode::default()).await?;
    /// let bus = open_bus(&BusUrl::parse("embedded")?, &stores).await?;
    /// let mut app = App::with(stores, bus);
    /// let mut visits = JobBuilder::new("visits");
    /// visits
    ///     .events(EventFilter::categories(["Page"]))
    ///     .key_by(|e| e.stream.id().to_string())
    ///     .aggregate(Agg::count())
    ///     .to(Sink::table());
    /// app.stream_job(visits.build()?);
    /// assert_eq!(app.task_names(), ["stream-job:visits:v1"]);
    /// let running = app.start().await?;
    /// assert!(running.shutdown(Duration::from_secs(10)).await.all_stopped_in_time());
    /// # Ok(()) }
    /// ```
    pub fn stream_job_with(
        &mut self,
        job: crate::stream::Job,
        options: crate::stream::RunOptions,
    ) -> &mut Self {
        let name = format!("stream-job:{}:v{}", job.name(), job.version());
        let publisher = format!("stream-job:{}", job.name());
        let mut topics: Vec<TopicName> = job
            .ops
            .iter()
            .filter_map(|op| match &op.sink {
                crate::stream::Sink::Topic(topic) => Some(topic.clone()),
                _ => None,
            })
            .collect();
        if let crate::stream::LateOutput::Topic(topic) = &job.late {
            topics.push(topic.clone());
        }
        for topic in &topics {
            self.record(|c| {
                c.publisher(topic, &publisher, PublisherKind::StreamJob)
                    .map(drop)
            });
        }
        if !topics.is_empty() {
            self.wants_outbox_relay = true;
        }
        let job = Arc::new(crate::stream::StreamJob::on(&self.stores, job, options));
        self.task(name, move |shutdown| {
            let job = Arc::clone(&job);
            async move { job.run(shutdown).await.map_err(BoxError::from) }
        })
    }

    /// The names of the registered tasks, in registration order.
    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.name.as_str()).collect()
    }

    /// Starts every registered task.
    pub async fn start(mut self) -> Result<RunningApp, AppError> {
        if self.wants_outbox_relay
            && !self
                .tasks
                .iter()
                .any(|t| t.name.starts_with("outbox-relay:"))
        {
            self.outbox_relay(RelayOptions::default().lease(OUTBOX_RELAY_LEASE));
        }
        // Listen before any task runs: a SIGTERM that arrives while the application is
        // starting must stop it, not kill it (or be lost).
        let signals = SignalListener::install();
        let supervisor = Supervisor::start(self.tasks, self.restart);
        Ok(RunningApp {
            stores: self.stores,
            bus: self.bus,
            commands: self.commands,
            queries: self.queries,
            catalog: self.catalog,
            supervisor,
            signals,
        })
    }

    /// Starts every task, runs until SIGTERM or Ctrl-C, then shuts down within
    /// [`SHUTDOWN_DEADLINE_DEFAULT`].
    pub async fn run(self) -> Result<AppReport, AppError> {
        let running = self.start().await?;
        running.wait_for_signal().await;
        Ok(running.shutdown(SHUTDOWN_DEADLINE_DEFAULT).await)
    }
}

/// A long-running part that ended although nobody asked it to.
fn stopped_by_itself<T: std::fmt::Debug, E: std::error::Error + Send + Sync + 'static>(
    stopped: Result<T, E>,
) -> BoxError {
    match stopped {
        Ok(report) => format!("stopped by itself ({report:?})").into(),
        Err(e) => Box::new(e),
    }
}

/// A running application.
pub struct RunningApp {
    stores: Stores,
    bus: Bus,
    commands: CommandBus,
    queries: QueryBus,
    catalog: CatalogRegistry,
    supervisor: Supervisor,
    signals: SignalListener,
}

impl RunningApp {
    /// The stores.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The command bus.
    pub fn commands(&self) -> &CommandBus {
        &self.commands
    }

    /// The query bus.
    pub fn queries(&self) -> &QueryBus {
        &self.queries
    }

    /// The catalog: described event types, the commands and queries on the buses, and
    /// the topics the registered parts receive from and publish to.
    pub fn catalog(&self) -> crate::catalog::Catalog {
        self.catalog
            .build(&self.commands.names(), &self.queries.names())
    }

    /// The signal every task watches (fires when shutdown begins).
    pub fn shutdown_signal(&self) -> Shutdown {
        self.supervisor.shutdown_signal()
    }

    /// Resolves on SIGTERM or Ctrl-C (SIGINT) received since [`App::start`]; a signal that
    /// arrived before this call is not lost.
    pub async fn wait_for_signal(&self) {
        self.signals.received().await
    }

    /// Asks every task to stop, waits up to `deadline`, aborts the rest.
    pub async fn shutdown(self, deadline: Duration) -> AppReport {
        tracing::info!(deadline_ms = deadline.as_millis() as u64, "shutting down");
        let report = self.supervisor.shutdown(deadline).await;
        tracing::info!(
            tasks = report.tasks.len(),
            restarts = report.restarts(),
            all_in_time = report.all_stopped_in_time(),
            "application stopped"
        );
        report
    }
}

/// SIGTERM and Ctrl-C, listened for from the moment it is installed: the process-wide
/// handlers are registered synchronously, so a signal sent right after `install` returns
/// is seen by every later [`SignalListener::received`].
struct SignalListener {
    received: tokio::sync::watch::Receiver<bool>,
    listener: tokio::task::JoinHandle<()>,
}

impl SignalListener {
    fn install() -> Self {
        let (tx, received) = tokio::sync::watch::channel(false);
        let listener = tokio::spawn(Self::listen(Self::register(), tx));
        SignalListener { received, listener }
    }

    #[cfg(unix)]
    fn register() -> Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; falling back to Ctrl-C");
                None
            }
        }
    }

    #[cfg(not(unix))]
    fn register() -> Option<()> {
        None
    }

    #[cfg(unix)]
    async fn listen(
        registered: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
        tx: tokio::sync::watch::Sender<bool>,
    ) {
        match registered {
            Some((mut term, mut int)) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("Ctrl-C received"),
            },
            None => wait_for_signal().await,
        }
        let _ = tx.send(true);
    }

    #[cfg(not(unix))]
    async fn listen(_: Option<()>, tx: tokio::sync::watch::Sender<bool>) {
        wait_for_signal().await;
        let _ = tx.send(true);
    }

    async fn received(&self) {
        let mut received = self.received.clone();
        if received.wait_for(|got| *got).await.is_err() {
            // The listener ended without a signal (its runtime is shutting down).
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for SignalListener {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Resolves on SIGTERM or Ctrl-C received from the first poll on.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only"),
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for Ctrl-C; running until killed");
        std::future::pending::<()>().await;
    }
}
