//! The one delivery core: run a handler on an event, catch its panic, classify the outcome and
//! report it.
//!
//! Every place that runs user handlers calls this module: the in-memory, NATS and Redis buses,
//! and the store follower ([`store::follow`](crate::store::follow)). A bus reports a failure on
//! its error stream with [`deliver`] (or [`run`] and [`Outcome::to_bus_error`] when it adds
//! backend detail, such as a redelivery delay); code that wraps its own future (a projection's
//! or a saga's handler) uses [`catch`] and [`Outcome::into_result`].

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;
use tracing::Instrument as _;

use super::{BusError, BusErrorKind, ErrorSender, Handler, HandlerResult};
use crate::error::BoxError;
use crate::event::Event;

/// What came of running a handler on one event.
#[derive(Debug)]
#[must_use = "an outcome says whether the handler failed"]
pub enum Outcome {
    /// The handler returned `Ok(())`.
    Handled,
    /// The handler returned an error.
    Failed(BoxError),
    /// The handler panicked; the panic message, or a placeholder for a non-string payload.
    Panicked(String),
}

impl Outcome {
    /// True for [`Outcome::Handled`].
    #[inline]
    pub fn is_handled(&self) -> bool {
        matches!(self, Outcome::Handled)
    }

    /// The kind of failure, `None` when handled.
    #[inline]
    pub fn kind(&self) -> Option<BusErrorKind> {
        match self {
            Outcome::Handled => None,
            Outcome::Failed(_) => Some(BusErrorKind::HandlerFailed),
            Outcome::Panicked(_) => Some(BusErrorKind::HandlerPanicked),
        }
    }

    /// `handler failed: <error>` or `handler panicked: <message>`; `None` when handled.
    #[inline]
    pub fn failure(&self) -> Option<String> {
        match self {
            Outcome::Handled => None,
            Outcome::Failed(e) => Some(format!("handler failed: {e}")),
            Outcome::Panicked(m) => Some(format!("handler panicked: {m}")),
        }
    }

    /// The failure as a [`BusError`] for `event` and the subscription `pattern`; `None` when
    /// handled.
    #[inline]
    pub fn to_bus_error(&self, event: &Event, pattern: &str) -> Option<BusError> {
        let (kind, message) = (self.kind()?, self.failure()?);
        Some(
            BusError::new(kind, message)
                .for_event(event)
                .for_pattern(pattern),
        )
    }

    /// Back to a [`HandlerResult`]: a panic becomes an error `handler panicked: <message>`.
    pub fn into_result(self) -> HandlerResult {
        match self {
            Outcome::Handled => Ok(()),
            Outcome::Failed(e) => Err(e),
            Outcome::Panicked(m) => Err(format!("handler panicked: {m}").into()),
        }
    }
}

/// Awaits `future`, turning a panic while it is polled into [`Outcome::Panicked`].
///
/// For handlers that are not a [`Handler`] (a projection's or a saga's `handle`); to run a
/// [`Handler`] use [`run`], which also catches a panic raised before its future exists.
pub async fn catch<F>(future: F) -> Outcome
where
    F: Future<Output = HandlerResult>,
{
    classify(AssertUnwindSafe(future).catch_unwind().await)
}

/// Runs `handler` on `event`, catching an error or a panic (also one raised while the handler
/// builds its future, as a synchronous handler does), inside a `handle` span that carries the
/// event's id, type and correlation id and `subscription` (a pattern or a description).
#[inline]
pub async fn run(handler: &dyn Handler, event: Arc<Event>, subscription: &str) -> Outcome {
    let span = tracing::debug_span!(
        "handle",
        event_id = %event.id,
        event_type = %event.event_type,
        correlation_id = event.correlation_id.as_deref(),
        stream_id = event.stream_id.as_deref(),
        pattern = subscription,
    );
    crate::event::traceparent::continue_trace(&span, &event);
    // Entered only while the handler builds its future (a guard, not `in_scope`, so this hot
    // path stays inlined); the future itself runs instrumented below.
    let built = {
        let _entered = span.enter();
        std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(event)))
    };
    let outcome = match built {
        Ok(future) => {
            AssertUnwindSafe(future)
                .catch_unwind()
                .instrument(span)
                .await
        }
        Err(panic) => Err(panic),
    };
    classify(outcome)
}

/// [`run`], then reports a failure on `errors` (as a [`BusError`] naming the event and
/// `pattern`). Returns the outcome for backends that also act on it.
#[inline]
pub async fn deliver(
    handler: &dyn Handler,
    event: &Arc<Event>,
    pattern: &str,
    errors: &ErrorSender,
) -> Outcome {
    let outcome = run(handler, event.clone(), pattern).await;
    if outcome.is_handled() {
        return outcome;
    }
    if let Some(error) = outcome.to_bus_error(event, pattern) {
        errors.report(error);
    }
    outcome
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

#[inline]
fn classify(caught: std::thread::Result<HandlerResult>) -> Outcome {
    match caught {
        Ok(Ok(())) => Outcome::Handled,
        Ok(Err(e)) => {
            crate::metrics::handler_failed(false);
            Outcome::Failed(e)
        }
        Err(panic) => {
            crate::metrics::handler_failed(true);
            Outcome::Panicked(panic_message(&*panic).to_owned())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures_util::future::BoxFuture;
    use serde_json::json;

    use super::*;
    use crate::handler::sync_handler;

    fn event() -> Arc<Event> {
        Arc::new(Event::new("test.happened", json!({})).unwrap())
    }

    /// Panics in `handle` itself, before any future exists.
    struct PanicsEarly;
    impl Handler for PanicsEarly {
        fn handle(&self, _: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
            panic!("early")
        }
    }

    #[test]
    fn panic_messages_are_readable() {
        let p: Box<dyn Any + Send> = Box::new("boom");
        assert_eq!(panic_message(p.as_ref()), "boom");
        let p: Box<dyn Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(p.as_ref()), "bang");
        let p: Box<dyn Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(p.as_ref()), "(non-string panic payload)");
    }

    #[tokio::test]
    async fn run_classifies_every_outcome() {
        let ok = sync_handler(|_| Ok(()));
        assert!(run(&ok, event(), "*").await.is_handled());

        let failing = sync_handler(|_| Err("nope".into()));
        let outcome = run(&failing, event(), "*").await;
        assert_eq!(outcome.kind(), Some(BusErrorKind::HandlerFailed));
        assert_eq!(outcome.failure().as_deref(), Some("handler failed: nope"));

        let panicking = |_: Arc<Event>| async { panic!("late") };
        let outcome = run(&panicking, event(), "*").await;
        assert!(matches!(&outcome, Outcome::Panicked(m) if m == "late"));

        let outcome = run(&PanicsEarly, event(), "*").await;
        assert_eq!(outcome.kind(), Some(BusErrorKind::HandlerPanicked));
        assert_eq!(
            outcome.into_result().unwrap_err().to_string(),
            "handler panicked: early"
        );
    }

    #[tokio::test]
    async fn deliver_reports_failures_with_the_event_and_pattern() {
        let errors = ErrorSender::new(4);
        let mut rx = errors.subscribe();
        let e = event();
        let ok = sync_handler(|_| Ok(()));
        assert!(deliver(&ok, &e, "test.*", &errors).await.is_handled());
        assert!(rx.try_recv().is_err());

        let failing = sync_handler(|_| Err("nope".into()));
        let outcome = deliver(&failing, &e, "test.*", &errors).await;
        assert!(!outcome.is_handled());
        let reported = rx.try_recv().unwrap();
        assert_eq!(reported.kind, BusErrorKind::HandlerFailed);
        assert_eq!(reported.event_id, Some(e.id));
        assert_eq!(reported.pattern.as_deref(), Some("test.*"));
        assert_eq!(reported.message, "handler failed: nope");
    }

    #[tokio::test]
    async fn a_shared_handler_is_a_handler() {
        fn is_handler<H: Handler>(_: &H) {}
        let shared: Arc<dyn Handler> = Arc::new(sync_handler(|_| Err("shared".into())));
        is_handler(&shared);
        let outcome = run(&shared, event(), "*").await;
        assert_eq!(outcome.failure().as_deref(), Some("handler failed: shared"));
    }

    #[tokio::test]
    async fn catch_guards_any_future() {
        assert!(catch(async { Ok(()) }).await.is_handled());
        let outcome = catch(async { panic!("inside") }).await;
        assert_eq!(
            outcome.into_result().unwrap_err().to_string(),
            "handler panicked: inside"
        );
    }
}
