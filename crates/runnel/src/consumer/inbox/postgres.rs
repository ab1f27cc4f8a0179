//! The router's [`Inbox`] on PostgreSQL: [`PostgresInbox`], whose scope is the backend's
//! open [`InboxTransaction`]. `begin` opens the transaction and inserts the processed mark
//! in it; the handler runs its own SQL on `scope.connection()`; `commit` commits both.
//!
//! ```
//! use runnel::consumer::{HandlerContext, HandlerError};
//! use runnel::postgres::{sqlx, InboxTransaction};
//!
//! async fn bill(ctx: HandlerContext) -> Result<(), HandlerError> {
//!     let mut tx = ctx.scope::<InboxTransaction>().await?;
//!     sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
//!         .bind(&ctx.message().id)
//!         .execute(tx.connection())
//!         .await
//!         .map_err(HandlerError::retryable)?;
//!     Ok(())
//! }
//! # fn assert_handler(_: impl runnel::consumer::Handler) {}
//! # assert_handler(bill);
//! ```
//!
//! Each attempt holds one pooled connection from `begin` to `commit`: size the store's pool
//! above the consumer's `max_concurrency` (plus what the bus and other work need), or
//! attempts wait for a connection.
//!
//! A concurrent duplicate blocks in `begin` on the uncommitted mark until the first
//! attempt ends, then sees it (committed) or takes over (rolled back), so `commit` never
//! reports [`InboxCommit::AlreadyProcessed`] here.

use async_trait::async_trait;
use runnel_core::StoreError;
use runnel_postgres::{InboxTransaction, PostgresInbox};

use super::{Inbox, InboxBegin, InboxCommit, InboxError, InboxKey};

#[async_trait]
impl Inbox for PostgresInbox {
    type Scope = InboxTransaction;

    async fn begin(&self, key: &InboxKey) -> Result<InboxBegin<InboxTransaction>, InboxError> {
        // The inherent `begin` (not this trait method): open a transaction, insert the mark.
        match PostgresInbox::begin(self, &key.handler, &key.message_id).await {
            Ok(Some(tx)) => Ok(InboxBegin::Started(tx)),
            Ok(None) => Ok(InboxBegin::AlreadyProcessed),
            Err(e) => Err(InboxError::Store(e)),
        }
    }

    async fn commit(
        &self,
        _key: &InboxKey,
        scope: InboxTransaction,
    ) -> Result<InboxCommit, InboxError> {
        match scope.commit().await {
            Ok(()) => Ok(InboxCommit::Committed),
            // The connection or the server failed: not the message's fault; it comes back
            // and finds the mark or not.
            Err(e) if e.is_transient() || matches!(e, StoreError::Closed) => {
                Err(InboxError::Store(e))
            }
            // Anything else is the handler's SQL (a statement failed and aborted the
            // transaction, a deferred constraint): a failed attempt, retried and in the
            // end dead-lettered rather than redelivered forever.
            Err(e) => Err(InboxError::Writes(Box::new(e))),
        }
    }

    async fn rollback(&self, _key: &InboxKey, scope: InboxTransaction) -> Result<(), InboxError> {
        // Returns the connection to the pool at once (dropping would roll back as well).
        scope.rollback().await;
        Ok(())
    }
}
