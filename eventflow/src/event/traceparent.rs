//! W3C trace context in an event's metadata, so the span that handles an event, in another
//! task, process or service, continues the trace of the span that produced it.
//!
//! [`Event::new`](super::Event::new) and [`Event::from_domain`](super::Event::from_domain)
//! record the `traceparent` of the current span (`00-<trace id>-<span id>-<flags>`) in
//! `metadata.custom["traceparent"]` when the feature `otel` is on and the span belongs to an
//! OpenTelemetry trace (a `tracing-opentelemetry` layer is installed). The metadata is part of
//! the event everywhere it goes — the PostgreSQL `metadata` column, the relay, the JSON body
//! of a NATS message or a Redis entry — so nothing else carries it. On the other side the
//! delivery core (`handler::delivery::run`) makes the `handle` span a child of that context.
//! Without the feature the key is neither written nor read.

use super::Event;

/// The metadata key (in [`Metadata::custom`](super::Metadata::custom)) holding the W3C
/// `traceparent` of the span that produced the event.
pub const TRACEPARENT: &str = "traceparent";

impl Event {
    /// The W3C `traceparent` recorded when the event was created (feature `otel`), if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.metadata.custom.get(TRACEPARENT)?.as_str()
    }
}

/// Records the current span's trace context in `event`'s metadata (no-op without `otel`, or
/// outside an OpenTelemetry trace).
#[cfg_attr(not(feature = "otel"), allow(unused_variables))]
pub(crate) fn inject(event: &mut Event) {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::propagation::TextMapPropagator as _;
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return;
        }
        let mut carrier = std::collections::HashMap::new();
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(&context, &mut carrier);
        if let Some(value) = carrier.remove(TRACEPARENT) {
            event
                .metadata
                .custom
                .insert(TRACEPARENT.to_owned(), value.into());
        }
    }
}

/// Makes `span` a child of the trace context recorded in `event` (no-op without `otel`, or
/// when the event carries none).
#[cfg_attr(not(feature = "otel"), allow(unused_variables))]
pub(crate) fn continue_trace(span: &tracing::Span, event: &Event) {
    #[cfg(feature = "otel")]
    if let Some(traceparent) = event.traceparent() {
        use opentelemetry::propagation::TextMapPropagator as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let carrier =
            std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
        let parent =
            opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        span.set_parent(parent);
    }
}
