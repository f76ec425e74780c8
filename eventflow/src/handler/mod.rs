//! The bottom layer shared by the bus and the store: what a handler is, what a subscription is,
//! where failures without a caller go, and the one place that runs a handler.
//!
//! Everything here depends only on [`error`](crate::error) and [`event`](crate::event), so the
//! bus, the store, the relay, projections and sagas can all build on it without importing each
//! other. The [`bus`](crate::bus) module re-exports these types under their historical paths
//! (`eventflow::bus::Handler`, ...).

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::BoxError;
use crate::event::Event;

pub mod delivery;
mod errors;
mod subscription;
pub(crate) mod sync;

pub use errors::{BusError, BusErrorKind, ErrorReceiver, ErrorSender, ErrorStream};
pub use subscription::Subscription;

/// What a handler returns: `Ok(())` when the event was handled.
pub type HandlerResult = std::result::Result<(), BoxError>;

/// Handles events delivered by a bus or a store subscription.
///
/// Any `Fn(Arc<Event>) -> impl Future<Output = HandlerResult>` closure is a handler; wrap a
/// synchronous closure with [`sync_handler`]. The event is shared (`Arc`) between every
/// subscriber, never deep-cloned. An `Arc` of a handler (including `Arc<dyn Handler>`) is a
/// handler too.
///
/// A handler that returns an error or panics never takes the bus down: the bus reports it on its
/// error stream, or, where the backend can redeliver (JetStream, Redis Streams), redelivers it.
pub trait Handler: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(event))
    }
}

impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        (**self).handle(event)
    }
}

/// A handler made from a synchronous closure (see [`sync_handler`]).
pub struct SyncHandler<F>(F);

impl<F> Handler for SyncHandler<F>
where
    F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
{
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        Box::pin(std::future::ready((self.0)(&event)))
    }
}

/// Wraps a synchronous closure as a [`Handler`].
///
/// ```
/// use eventflow::bus::{sync_handler, Handler};
/// let handler = sync_handler(|event| {
///     tracing::info!(id = %event.id, "got {}", event.event_type);
///     Ok(())
/// });
/// # fn is_handler(_: impl Handler) {}
/// # is_handler(handler);
/// ```
pub fn sync_handler<F>(f: F) -> SyncHandler<F>
where
    F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
{
    SyncHandler(f)
}
