//! One AMQP connection per publisher or subscriber, reopened with back-off after it is
//! lost (lapin does not reconnect by itself).

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use runnel_core::BusError;
use tokio::sync::Mutex;

use crate::config::RabbitOptions;
use crate::error::from_lapin;

/// Longest a single connection attempt may take.
pub(crate) const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that is opened again when it was lost.
pub(crate) struct Link {
    options: Arc<RabbitOptions>,
    name: String,
    current: Mutex<Option<Arc<Connection>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Link {
    pub(crate) fn new(options: Arc<RabbitOptions>, name: &str) -> Self {
        Link {
            options,
            name: name.to_string(),
            current: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn options(&self) -> &Arc<RabbitOptions> {
        &self.options
    }

    /// The open connection, or a new one (one attempt).
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, BusError> {
        let mut current = self.current.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BusError::Closed);
        }
        if let Some(c) = current.as_ref() {
            if c.status().connected() {
                return Ok(c.clone());
            }
        }
        *current = None;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("runnel {}", self.name).into());
        let connect = Connection::connect(&self.options.client_url, properties);
        let connection = match tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, connect).await {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => return Err(from_lapin(e)),
            Err(_) => {
                return Err(BusError::Unavailable(format!(
                    "connecting to {} took over {CONNECT_ATTEMPT_TIMEOUT:?}",
                    self.options.redacted_url()
                )))
            }
        };
        tracing::debug!(url = %self.options.redacted_url(), name = %self.name, "connected");
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Closes the connection for good: later calls get `BusError::Closed`.
    pub(crate) async fn close(&self) {
        let mut current = self.current.lock().await;
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(c) = current.take() {
            let _ = c.close(200, "closed by runnel").await;
        }
    }
}

/// Exponential back-off with jitter between the configured bounds.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(options: &RabbitOptions) -> Self {
        Backoff {
            next: options.reconnect_delay_min,
            max: options.reconnect_delay_max,
        }
    }

    /// The next pause: the current step plus up to half of it at random, then doubled.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = step.mul_f64(f64::from(nanos % 1000) / 2000.0);
        (step + jitter).min(self.max)
    }
}
