//! Trace propagation (feature `otel`): the span that handles an event is a child of the span
//! that produced it, across the in-memory bus, the PostgreSQL relay and NATS, and Redis Streams.
//! Spans are collected by OpenTelemetry's `InMemorySpanExporter` behind a
//! `tracing-opentelemetry` layer, installed once for this test binary.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::postgres::{PgPoolOptions, PostgresEventStore};
use eventflow::{
    Event, EventBus, EventStore, ExpectedVersion, InMemoryBus, SubscriptionOptions, WithBus,
    sync_handler,
};
use eventflow_tests::{database_url, nats_url, redis_url, service_unavailable, unique};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

const WAIT: Duration = Duration::from_secs(20);

fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("eventflow-tests")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        exporter
    })
}

/// An event created inside a `produce` span, and that span's context.
fn produce(event_type: &str) -> (Event, SpanContext) {
    exporter();
    let span = tracing::info_span!("produce");
    let _entered = span.enter();
    let event = Event::new(event_type, json!({ "n": 1 })).unwrap();
    let context = span.context().span().span_context().clone();
    assert!(
        context.is_valid(),
        "the produce span has no OpenTelemetry context"
    );
    assert!(event.traceparent().is_some(), "no traceparent recorded");
    (event, context)
}

/// A handler that forwards what it handles.
fn forward() -> (Arc<dyn eventflow::Handler>, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = sync_handler(move |e: &Event| {
        let _ = tx.send(e.clone());
        Ok(())
    });
    (Arc::new(handler), rx)
}

/// Waits for `event` to be handled, then for its `handle` span to be exported, and checks that
/// span's parent is `producer`.
async fn assert_child_of(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    event: &Event,
    producer: &SpanContext,
) {
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, event.id);
    let id = event.id.to_string();
    let is_handle = |s: &SpanData| {
        s.name == "handle"
            && s.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "event_id" && kv.value.as_str() == id)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let span = loop {
        if let Some(span) = exporter()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(is_handle)
        {
            break span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no handle span for {id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        span.span_context.trace_id(),
        producer.trace_id(),
        "another trace"
    );
    assert_eq!(
        span.parent_span_id,
        producer.span_id(),
        "not a child of the producer"
    );
    for field in ["event_type", "pattern"] {
        assert!(
            span.attributes.iter().any(|kv| kv.key.as_str() == field),
            "{field} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_span_continues_the_producer_across_the_in_memory_bus() {
    let bus = InMemoryBus::new();
    let (handler, mut rx) = forward();
    let _sub = bus.subscribe("trace.memory", handler).await.unwrap();
    let (event, producer) = produce("trace.memory");
    bus.publish(event.clone()).await.unwrap();
    assert_child_of(&mut rx, &event, &producer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_span_continues_the_producer_across_postgres_relay_and_nats() {
    let mut config = NatsConfig::new(nats_url());
    config.subject_prefix = unique("trace");
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| service_unavailable("NATS", &nats_url(), e));
    let (handler, mut rx) = forward();
    let _sub = bus.subscribe("trace.nats", handler).await.unwrap();
    bus.flush().await.unwrap();
    let url = database_url();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e));
    let store = PostgresEventStore::builder(pool)
        .schema(unique("trace"))
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let store = store.with_bus(bus.clone());
    let (event, producer) = produce("trace.nats");
    store
        .append("trace-1", ExpectedVersion::NoStream, event.clone())
        .await
        .unwrap();
    assert_child_of(&mut rx, &event, &producer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_span_continues_the_producer_across_redis_streams() {
    let mut config = RedisConfig::new(redis_url());
    config.use_streams = true;
    config.key_prefix = unique("trace");
    config.block = Duration::from_millis(200);
    let bus = RedisBus::connect(config)
        .await
        .unwrap_or_else(|e| service_unavailable("Redis", &redis_url(), e));
    let (handler, mut rx) = forward();
    let _sub = bus
        .subscribe_with(
            &["trace.redis"],
            SubscriptionOptions::named("tracer"),
            handler,
        )
        .await
        .unwrap();
    let (event, producer) = produce("trace.redis");
    bus.publish(event.clone()).await.unwrap();
    assert_child_of(&mut rx, &event, &producer).await;
}
