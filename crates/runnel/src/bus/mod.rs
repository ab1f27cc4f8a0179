//! What the command and query buses share: their error type and the name → handler
//! registry behind both.

mod error;
pub(crate) mod registry;

pub use error::{BoxError, DispatchError};
