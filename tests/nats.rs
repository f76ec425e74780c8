//! Integration tests: `NatsBus` against real nats-server processes, core and JetStream.
//!
//! The shared server (`NATS_URL`, default `nats://127.0.0.1:4222`, JetStream enabled) serves
//! most tests, each with its own subject prefix and stream (deleted at the end). Fault tests
//! start a private server (`support::nats_server`) that they kill with SIGKILL and restart.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::Info as ConsumerInfo;
use eventflow::bus::nats::{NatsBus, NatsConfig, NatsStatus};
use eventflow::bus::{BusError, BusErrorKind, ErrorReceiver, SubscriptionOptions};
use eventflow::testing::conformance::{self, Scope, bus::Capabilities};
use eventflow::{Error, Event, EventBus, EventBusExt, sync_handler};
use eventflow_tests::child::{self, ChildProcess};
use eventflow_tests::nats_server::NatsServer;
use eventflow_tests::tls::TestCertificates;
use eventflow_tests::{nats_url, service_unavailable, unique};
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// helpers

fn core_config(url: &str) -> NatsConfig {
    let mut c = NatsConfig::new(url);
    c.subject_prefix = unique("t");
    c.reconnect_wait = Duration::from_millis(50);
    c.max_reconnects = None;
    c.connect_timeout = Duration::from_secs(3);
    c
}

fn js_config(url: &str) -> NatsConfig {
    let mut c = core_config(url);
    c.enable_jetstream = true;
    c.stream_name = unique("S");
    c.ack_wait = Duration::from_secs(2);
    c.retry_backoff = Duration::from_millis(20);
    c.max_retry_backoff = Duration::from_millis(200);
    c.request_timeout = Duration::from_secs(3);
    c
}

async fn connect(config: NatsConfig) -> NatsBus {
    let url = config.url.clone();
    match NatsBus::connect(config).await {
        Ok(bus) => bus,
        Err(e @ Error::Connect { .. }) => service_unavailable("NATS", &url, e),
        Err(e) => panic!("cannot set up the NATS bus at {url}: {e}"),
    }
}

/// Deletes a test's JetStream stream when dropped, even when the test panicked (best effort).
struct StreamGuard {
    url: String,
    stream: String,
}

impl StreamGuard {
    fn new(config: &NatsConfig) -> Self {
        StreamGuard {
            url: config.url.clone(),
            stream: config.stream_name.clone(),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let (url, stream) = (self.url.clone(), self.stream.clone());
        // A runtime of its own: Drop cannot await, and the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(url);
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), connect).await
                {
                    let js = async_nats::jetstream::new(client);
                    let _ = tokio::time::timeout(Duration::from_secs(3), js.delete_stream(&stream))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn raw_client(url: &str) -> async_nats::Client {
    async_nats::connect(url)
        .await
        .unwrap_or_else(|e| service_unavailable("NATS", url, e))
}

/// `Client::flush` only empties the socket buffer; a request answered by the server ("no
/// responders") proves it processed the SUB sent before.
async fn server_has_processed(client: &async_nats::Client) {
    let reply = client.request(client.new_inbox(), "".into()).await;
    assert!(
        matches!(&reply, Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders),
        "round trip failed: {reply:?}"
    );
}

async fn stream_messages(url: &str, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(raw_client(url).await);
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

fn event(event_type: &str, n: u64) -> Event {
    Event::new(event_type, json!({ "n": n })).unwrap()
}

/// A handler that forwards every event it sees.
fn collector() -> (
    impl Fn(&Event) -> eventflow::HandlerResult + Send + Sync + 'static,
    mpsc::UnboundedReceiver<Event>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |e: &Event| {
            let _ = tx.send(e.clone());
            Ok(())
        },
        rx,
    )
}

async fn recv_n(rx: &mut mpsc::UnboundedReceiver<Event>, n: usize, what: &str) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("{what}: handler dropped after {} of {n} events", got.len()),
            Err(_) => panic!("{what}: only {} of {n} events within {WAIT:?}", got.len()),
        }
    }
    got
}

/// Waits for a reported error matching `pred`.
async fn wait_error(
    rx: &mut ErrorReceiver,
    what: &str,
    pred: impl Fn(&BusError) -> bool,
) -> BusError {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Ok(e)) if pred(&e) => return e,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("error stream ended while waiting for {what}: {e}"),
            Err(_) => panic!("no {what} reported within {WAIT:?}"),
        }
    }
}

async fn wait_status(bus: &NatsBus, what: &str, pred: impl Fn(NatsStatus) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred(bus.status()) {
        assert!(
            Instant::now() < deadline,
            "status never became {what} (now {})",
            bus.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// the shared bus conformance kit, in both modes (patterns, ordering, invalid input, handler
// failures, redelivery, dead letters, durable and competing subscribers: see
// `eventflow::testing::conformance::bus`)

/// The kit's buses for `scope`: their subject prefix, and in JetStream their stream, come from
/// the scope, so buses of one scope share them.
fn scoped(config: &mut NatsConfig, scope: &Scope) {
    config.subject_prefix = scope.name().to_owned();
    if config.enable_jetstream {
        config.stream_name = scope.name().to_owned();
    }
}

#[tokio::test]
async fn conformance_kit_core() {
    let url = nats_url();
    let report = conformance::bus::run(Capabilities::at_most_once(), |scope| {
        let mut config = core_config(&url);
        scoped(&mut config, &scope);
        async move { Arc::new(connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    assert!(report.has_run("handler_failures_reported"), "{report}");
}

/// Max deliveries of the kit's JetStream buses.
const KIT_MAX_DELIVER: u32 = 3;

#[tokio::test]
async fn conformance_kit_jetstream() {
    let url = nats_url();
    let guards = Arc::new(Mutex::new(Vec::new()));
    let caps = Capabilities::at_least_once(KIT_MAX_DELIVER);
    let report = conformance::bus::run(caps, |scope| {
        let mut config = js_config(&url);
        scoped(&mut config, &scope);
        config.max_deliver = i64::from(KIT_MAX_DELIVER);
        guards.lock().unwrap().push(StreamGuard::new(&config));
        async move { Arc::new(connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    for check in [
        "redelivery_after_error_and_panic",
        "dead_letter_after_max_deliveries",
        "durable_subscriber_resumes",
        "unnamed_subscribers_each_get_every_event",
        "unnamed_subscriptions_do_not_resume",
        // Issue 11: one ordered, named subscription per saga and projection.
        "saga_follow_ups_after_slow_start",
        "projection_patterns_in_order",
        "at_most_once_refused_without_opt_in",
        "different_names_each_get_every_event",
        "same_name_shares_work",
        "saga_follow_up_before_start_is_redelivered",
    ] {
        assert!(report.has_run(check), "{check}: {report}");
    }
}

// ---------------------------------------------------------------------------------------------
// core and JetStream basics

#[tokio::test]
async fn envelope_travels_as_json_with_the_id_in_nats_msg_id() {
    let url = nats_url();
    let config = core_config(&url);
    let bus = connect(config.clone()).await;
    let raw = raw_client(&url).await;
    let mut sub = raw
        .subscribe(format!("{}.>", config.subject_prefix))
        .await
        .unwrap();
    server_has_processed(&raw).await;
    let sent = event("order.created", 7).with_correlation("c-1");
    bus.publish(sent.clone()).await.unwrap();
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        msg.subject.as_str(),
        format!("{}.order.created", config.subject_prefix)
    );
    let header = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .unwrap();
    assert_eq!(header.as_str(), sent.id.to_string());
    assert_eq!(Event::from_json(&msg.payload).unwrap(), sent);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn core_slow_consumer_drops_are_reported() {
    let mut config = core_config(&nats_url());
    config.subscription_capacity = 8;
    let bus = connect(config).await;
    let mut errors = bus.errors();
    // Every call waits for a permit, none given until the drop was reported, so the client's
    // buffer overflows.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    bus.on("flood.*", move |_e: Arc<Event>| {
        let g = g.clone();
        async move {
            if let Ok(permit) = g.acquire().await {
                permit.forget();
            }
            Ok(())
        }
    })
    .await
    .unwrap()
    .detach();
    let flood: Vec<Event> = (0..2_000).map(|n| event("flood.tick", n)).collect();
    bus.publish_batch(flood).await.unwrap();
    bus.flush().await.unwrap();
    let e = wait_error(&mut errors, "Dropped", |e| e.kind == BusErrorKind::Dropped).await;
    assert!(e.message.contains("slow consumer"), "{}", e.message);
    gate.add_permits(2_000);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn oversized_events_are_a_typed_error_before_sending() {
    let url = nats_url();
    for config in [core_config(&url), js_config(&url)] {
        let _guard = StreamGuard::new(&config);
        let js = config.enable_jetstream;
        let stream = config.stream_name.clone();
        let bus = connect(config).await;
        let limit = raw_client(&url).await.server_info().max_payload;
        let big = Event::new("blob.stored", json!({ "data": "x".repeat(limit) })).unwrap();
        let id = big.id;
        match bus.publish(big.clone()).await {
            Err(Error::EventTooLarge {
                id: got,
                size,
                limit: l,
            }) => {
                assert_eq!(got, id);
                assert!(size > l && l == limit, "size {size}, limit {l}");
            }
            other => panic!("expected EventTooLarge, got {other:?}"),
        }
        // A batch is checked whole before anything is sent.
        assert!(matches!(
            bus.publish_batch(vec![event("blob.small", 1), big]).await,
            Err(Error::EventTooLarge { .. })
        ));
        if js {
            assert_eq!(
                stream_messages(&url, &stream).await,
                0,
                "part of a rejected batch was sent"
            );
        }
        bus.close().await.unwrap();
    }
}

#[tokio::test]
async fn unreachable_server_is_a_typed_error_within_the_timeout() {
    let port = eventflow_tests::free_port();
    let mut config = NatsConfig::new(format!("nats://user:secret@127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    match NatsBus::connect(config).await {
        Err(e @ Error::Connect { .. }) => {
            let Error::Connect {
                backend, target, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*backend, "nats");
            assert!(!target.contains("secret"), "credentials leaked: {target}");
            assert!(
                !format!("{e} {e:?}").contains("secret"),
                "credentials leaked: {e:?}"
            );
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    // A bound, not a speed claim: the configured timeout plus a margin.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn user_password_and_token_auth_are_used_and_bad_credentials_are_a_connect_error() {
    let server = NatsServer::start_with(&["--user", "alice", "--pass", "s3cret"]);
    let mut config = core_config(&server.url());
    config.user = Some("alice".into());
    config.password = Some("s3cret".into());
    let bus = connect(config.clone()).await;
    assert!(bus.is_connected());
    bus.close().await.unwrap();
    config.password = Some("wrong".into());
    assert!(matches!(
        NatsBus::connect(config).await,
        Err(Error::Connect { .. })
    ));

    let server = NatsServer::start_with(&["--auth", "t0ken"]);
    let mut config = core_config(&server.url());
    config.token = Some("t0ken".into());
    let bus = connect(config.clone()).await;
    assert!(bus.is_connected());
    bus.close().await.unwrap();
    config.token = None;
    assert!(matches!(
        NatsBus::connect(config).await,
        Err(Error::Connect { .. })
    ));
}

/// Subscribes to `<type>` on `bus`, publishes one event and waits for it to come back.
async fn round_trip(bus: &NatsBus, event_type: &str, what: &str) {
    let (h, mut rx) = collector();
    bus.on(event_type, sync_handler(h)).await.unwrap().detach();
    let e = event(event_type, 1);
    bus.publish(e.clone()).await.unwrap();
    assert_eq!(recv_n(&mut rx, 1, what).await[0].id, e.id, "{what}");
}

/// A private server that only speaks TLS, with a certificate from a throw-away CA.
fn tls_server(certs: &TestCertificates) -> NatsServer {
    let (cert, key) = (certs.server_cert(), certs.server_key());
    NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &cert.display().to_string(),
        "--tlskey",
        &key.display().to_string(),
    ])
}

/// Asserts that connecting fails with `Error::Connect` within the connect timeout (plus a
/// margin: a bound, not a speed claim).
async fn assert_connect_error(config: NatsConfig, what: &str) {
    let limit = config.connect_timeout + Duration::from_secs(2);
    let started = Instant::now();
    match NatsBus::connect(config).await {
        Err(Error::Connect { backend, .. }) => assert_eq!(backend, "nats", "{what}"),
        Err(e) => panic!("{what}: expected Error::Connect, got {e:?}"),
        Ok(bus) => {
            let status = bus.status();
            bus.close().await.unwrap();
            panic!("{what}: expected Error::Connect, but connected ({status})");
        }
    }
    assert!(
        started.elapsed() < limit,
        "{what}: took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tls_with_a_private_ca_connects_and_round_trips_in_both_modes() {
    let certs = TestCertificates::new();
    let server = tls_server(&certs);
    for mut config in [core_config(&server.url()), js_config(&server.url())] {
        config.tls_required = true;
        config.tls_ca_file = Some(certs.ca_cert());
        let mode = if config.enable_jetstream {
            "jetstream"
        } else {
            "core"
        };
        let bus = match NatsBus::connect(config).await {
            Ok(bus) => bus,
            Err(e) => panic!("{mode}: TLS connection with the private CA failed: {e:?}"),
        };
        assert!(bus.is_connected());
        round_trip(&bus, "tls.checked", mode).await;
        bus.close().await.unwrap();
    }
}

#[tokio::test]
async fn tls_required_against_a_plain_server_is_a_connect_error() {
    let server = NatsServer::start();
    let mut config = core_config(&server.url());
    config.connect_timeout = Duration::from_secs(2);
    config.max_reconnects = Some(1);
    // The same server accepts the connection without TLS, so only `tls_required` refuses it.
    let plain = connect(config.clone()).await;
    plain.close().await.unwrap();
    config.tls_required = true;
    assert_connect_error(config, "tls_required against a plain server").await;
}

#[tokio::test]
async fn tls_server_signed_by_an_untrusted_ca_is_a_connect_error() {
    let certs = TestCertificates::new();
    let server = tls_server(&certs);
    let mut config = core_config(&server.url());
    config.connect_timeout = Duration::from_secs(2);
    config.max_reconnects = Some(1);
    config.tls_required = true;
    assert_connect_error(config.clone(), "no CA given").await;
    // Another CA than the one that signed the certificate.
    let other = TestCertificates::new();
    config.tls_ca_file = Some(other.ca_cert());
    assert_connect_error(config, "a different CA given").await;
}

// ---------------------------------------------------------------------------------------------
// JWT `.creds` authentication (operator mode)

/// Base64url without padding, as JWTs use it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A NATS JWT (v2) for `subject`, signed by `issuer`'s nkey.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": unique("jti").to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64url(&signature))
}

/// The standard `.creds` file layout: the user JWT and the user's nkey seed.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

#[test]
fn base64url_matches_known_vectors() {
    for (input, expected) in [
        (&b""[..], ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"\xfb\xff", "-_8"),
    ] {
        assert_eq!(base64url(input), expected);
    }
}

#[tokio::test]
async fn credentials_file_authenticates_in_operator_mode_and_a_wrong_seed_is_a_connect_error() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "eventflow-test-operator",
        json!({ "type": "operator", "version": 2 }),
    );
    let account_claims = json!({
        "type": "account",
        "version": 2,
        "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        },
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "eventflow-test-account",
        account_claims.clone(),
    );
    // The server (with JetStream, as every private server runs) needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(&operator, &system.public_key(), "SYS", account_claims);
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "eventflow-test-user",
        json!({
            "type": "user",
            "version": 2,
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        }),
    );

    let dir = tempfile::tempdir().unwrap();
    let operator_file = dir.path().join("operator.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let server_conf = dir.path().join("server.conf");
    std::fs::write(
        &server_conf,
        format!(
            "operator: {:?}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {:?}\n  {}: {:?}\n}}\n",
            operator_file.display().to_string(),
            system.public_key(),
            account.public_key(),
            account_jwt,
            system.public_key(),
            system_jwt,
        ),
    )
    .unwrap();
    let server = NatsServer::start_with(&["-c", &server_conf.display().to_string()]);

    let good = dir.path().join("user.creds");
    std::fs::write(&good, creds_file(&user_jwt, &user.seed().unwrap())).unwrap();
    let mut config = core_config(&server.url());
    config.credentials_file = Some(good);
    let bus = match NatsBus::connect(config.clone()).await {
        Ok(bus) => bus,
        Err(e) => panic!("connecting with the .creds file failed: {e:?}"),
    };
    round_trip(&bus, "creds.checked", "credentials_file").await;
    bus.close().await.unwrap();

    // The same JWT with another user's seed: the server rejects the nonce signature.
    let wrong = dir.path().join("wrong.creds");
    let other = nkeys::KeyPair::new_user();
    std::fs::write(&wrong, creds_file(&user_jwt, &other.seed().unwrap())).unwrap();
    config.credentials_file = Some(wrong);
    config.connect_timeout = Duration::from_secs(2);
    config.max_reconnects = Some(1);
    assert_connect_error(config.clone(), "a .creds file with a wrong seed").await;

    // And without credentials at all, operator mode refuses the connection.
    config.credentials_file = None;
    assert_connect_error(config, "no credentials in operator mode").await;
}

#[tokio::test]
async fn jetstream_stores_a_duplicate_event_id_once() {
    let url = nats_url();
    let config = js_config(&url);
    let _guard = StreamGuard::new(&config);
    let stream = config.stream_name.clone();
    let bus = connect(config.clone()).await;
    let e = event("order.created", 1);
    bus.publish(e.clone()).await.unwrap();
    bus.publish(e.clone()).await.unwrap();
    bus.publish_batch(vec![e.clone(), event("order.created", 2), e])
        .await
        .unwrap();
    assert_eq!(stream_messages(&url, &stream).await, 2);
    // Connecting again updates the same stream idempotently.
    let again = connect(config).await;
    again.close().await.unwrap();
    bus.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// JetStream delivery

/// The kit checks the dead-lettering itself (attempts, report, later events flowing); this
/// checks what only JetStream has: the copy on `dead_letter_subject` and its headers.
#[tokio::test]
async fn dead_letter_subject_carries_the_event_and_its_failure() {
    let url = nats_url();
    let mut config = js_config(&url);
    config.max_deliver = 3;
    let dead_letters = unique("dlq");
    config.dead_letter_subject = Some(dead_letters.clone());
    let _guard = StreamGuard::new(&config);
    let _dlq_guard = StreamGuard {
        url: url.clone(),
        stream: format!("{}-DLQ", config.stream_name),
    };
    let bus = connect(config).await;
    let mut errors = bus.errors();

    let raw = raw_client(&url).await;
    let mut dlq = raw.subscribe(dead_letters).await.unwrap();
    server_has_processed(&raw).await;
    bus.on(
        "poison.*",
        sync_handler(|_e: &Event| Err("cannot digest".into())),
    )
    .await
    .unwrap()
    .detach();

    let poison = event("poison.pill", 0);
    bus.publish(poison.clone()).await.unwrap();
    let e = wait_error(&mut errors, "DeadLettered", |e| {
        e.kind == BusErrorKind::DeadLettered
    })
    .await;
    assert_eq!(e.event_id, Some(poison.id));
    let msg = tokio::time::timeout(WAIT, dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Event::from_json(&msg.payload).unwrap().id, poison.id);
    let headers = msg.headers.unwrap();
    assert_eq!(headers.get("Eventflow-Deliveries").unwrap().as_str(), "3");
    assert!(
        headers
            .get("Eventflow-Error")
            .unwrap()
            .as_str()
            .contains("cannot digest")
    );
    bus.close().await.unwrap();
}

/// The one durable consumer of a test's stream, as the server sees it.
async fn only_consumer(url: &str, stream: &str) -> async_nats::jetstream::consumer::Info {
    let js = async_nats::jetstream::new(raw_client(url).await);
    let stream = js.get_stream(stream).await.unwrap();
    let names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    assert_eq!(names.len(), 1, "{names:?}");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&names[0]).await.unwrap();
    consumer.info().await.unwrap().clone()
}

/// The names of `stream`'s consumers, as the server lists them, sorted.
async fn consumer_names(url: &str, stream: &str) -> Vec<String> {
    let js = async_nats::jetstream::new(raw_client(url).await);
    let stream = js.get_stream(stream).await.unwrap();
    let mut names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    names.sort();
    names
}

/// An unnamed subscription reads through an ephemeral consumer of its own, deleted once the
/// subscription stops (unsubscribe, close); a named one stays (it is durable).
#[tokio::test]
async fn jetstream_unnamed_subscription_leaves_no_consumer_behind() {
    let url = nats_url();
    let config = js_config(&url);
    let _guard = StreamGuard::new(&config);
    let stream = config.stream_name.clone();
    let bus = connect(config).await;
    let ((h1, mut rx1), (h2, mut rx2)) = (collector(), collector());
    let first = bus.on("e.*", sync_handler(h1)).await.unwrap();
    let _second = bus.on("e.*", sync_handler(h2)).await.unwrap();
    let _named = bus
        .subscribe_durable("e.*", "e-svc", Arc::new(sync_handler(|_e: &Event| Ok(()))))
        .await
        .unwrap();
    bus.publish(event("e.one", 1)).await.unwrap();
    recv_n(&mut rx1, 1, "first unnamed").await;
    recv_n(&mut rx2, 1, "second unnamed").await;
    let names = consumer_names(&url, &stream).await;
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"e-svc".to_owned()), "{names:?}");

    first.unsubscribe();
    let deadline = Instant::now() + WAIT;
    while consumer_names(&url, &stream).await.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the consumer of an unsubscribed unnamed subscription is still there: {:?}",
            consumer_names(&url, &stream).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.close().await.unwrap();
    assert_eq!(
        consumer_names(&url, &stream).await,
        ["e-svc"],
        "after close"
    );
}

#[tokio::test]
async fn jetstream_handlers_slower_than_ack_wait_are_not_redelivered_while_working() {
    const EVENTS: usize = 3;
    let url = nats_url();
    let mut config = js_config(&url);
    config.ack_wait = Duration::from_millis(500);
    let _guard = StreamGuard::new(&config);
    let stream = config.stream_name.clone();
    let bus = connect(config).await;
    let calls: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let c = calls.clone();
    bus.subscribe(
        "slow.*",
        Arc::new(move |e: Arc<Event>| {
            let c = c.clone();
            async move {
                c.lock().unwrap().push(e.id);
                // Well past ack_wait: without in-progress acks the server redelivers it, and
                // the events waiting behind it, while it works.
                tokio::time::sleep(Duration::from_millis(1_300)).await;
                Ok(())
            }
        }),
    )
    .await
    .unwrap()
    .detach();
    // All pulled at once, so two of them wait (longer than ack_wait) behind a slow one.
    bus.publish_batch((0..EVENTS as u64).map(|n| event("slow.work", n)).collect())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let info = only_consumer(&url, &stream).await;
        if info.ack_floor.stream_sequence >= EVENTS as u64 && info.num_ack_pending == 0 {
            assert_eq!(
                info.num_redelivered, 0,
                "redelivered while handled: {info:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not all acked: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), EVENTS, "one handler call per event: {calls:?}");
    assert_eq!(calls.iter().collect::<HashSet<_>>().len(), EVENTS);
    bus.close().await.unwrap();
}

/// The dead letter is stored by JetStream (PubAck received) before the original is
/// terminated: a crash between the two leaves the original, never neither. Checked from a
/// separate connection that sees the bus's `+TERM` ack: by then the dead letter was sent
/// (before the Term, on the same connection) and the dead-letter stream holds it.
#[tokio::test]
async fn jetstream_dead_letter_is_stored_before_the_original_is_terminated() {
    let url = nats_url();
    let mut config = js_config(&url);
    config.max_deliver = 2;
    let dead_letters = unique("dlq");
    config.dead_letter_subject = Some(dead_letters.clone());
    let _guard = StreamGuard::new(&config);
    let _dlq_guard = StreamGuard {
        url: url.clone(),
        stream: format!("{}-DLQ", config.stream_name),
    };
    let stream = config.stream_name.clone();
    let bus = connect(config).await;
    let mut errors = bus.errors();

    let raw = raw_client(&url).await;
    let js = async_nats::jetstream::new(raw.clone());
    let dlq_stream = js.stream_by_subject(dead_letters.clone()).await.unwrap();
    let mut acks = raw.subscribe(format!("$JS.ACK.{stream}.>")).await.unwrap();
    let mut dlq = raw.subscribe(dead_letters.clone()).await.unwrap();
    server_has_processed(&raw).await;
    bus.on(
        "poison.*",
        sync_handler(|_e: &Event| Err("cannot digest".into())),
    )
    .await
    .unwrap()
    .detach();
    let poison = event("poison.pill", 0);
    bus.publish(poison.clone()).await.unwrap();

    let term = tokio::time::timeout(WAIT, async {
        loop {
            let ack = acks.next().await.unwrap();
            if ack.payload.starts_with(b"+TERM") {
                return ack;
            }
        }
    })
    .await
    .expect("the poison message is terminated");
    drop(term);
    // At the moment of the Term: the dead letter was already sent, and it is stored.
    let copy = dlq.next().now_or_never();
    assert!(
        matches!(copy, Some(Some(_))),
        "the dead letter was not sent before the Term"
    );
    let mut dlq_stream = js.get_stream(&dlq_stream).await.unwrap();
    assert_eq!(dlq_stream.info().await.unwrap().state.messages, 1);
    let stored = dlq_stream.get_raw_message(1).await.unwrap();
    assert_eq!(Event::from_json(&stored.payload).unwrap().id, poison.id);
    let e = wait_error(&mut errors, "DeadLettered", |e| {
        e.kind == BusErrorKind::DeadLettered
    })
    .await;
    assert_eq!(e.event_id, Some(poison.id));
    bus.close().await.unwrap();
}

/// A message waiting in a stopping subscription's buffer on its last allowed delivery is not
/// nak'd into oblivion (the server would never deliver it again): it is dead-lettered,
/// terminated and reported.
#[tokio::test]
async fn jetstream_last_delivery_handed_back_on_stop_is_dead_lettered() {
    let url = nats_url();
    let mut config = js_config(&url);
    config.max_deliver = 1;
    let dead_letters = unique("dlq");
    config.dead_letter_subject = Some(dead_letters.clone());
    let _guard = StreamGuard::new(&config);
    let _dlq_guard = StreamGuard {
        url: url.clone(),
        stream: format!("{}-DLQ", config.stream_name),
    };
    let bus = connect(config).await;
    let mut errors = bus.errors();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let (g, st) = (gate.clone(), started.clone());
    bus.subscribe(
        "held.*",
        Arc::new(move |_e: Arc<Event>| {
            let (g, st) = (g.clone(), st.clone());
            async move {
                st.notify_one();
                g.acquire().await.unwrap().forget();
                Ok(())
            }
        }),
    )
    .await
    .unwrap()
    .detach();
    let (first, second) = (event("held.first", 1), event("held.second", 2));
    bus.publish_batch(vec![first.clone(), second.clone()])
        .await
        .unwrap();
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the first handler started");
    // Stop while the first is handled and the second waits in the buffer.
    let closing = tokio::spawn({
        let bus = bus.clone();
        async move { bus.close().await }
    });
    gate.add_permits(1);
    let e = wait_error(&mut errors, "DeadLettered", |e| {
        e.kind == BusErrorKind::DeadLettered
    })
    .await;
    assert_eq!(e.event_id, Some(second.id), "{e}");
    assert!(e.message.contains("handed back"), "{e}");
    tokio::time::timeout(WAIT, closing)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let js = async_nats::jetstream::new(raw_client(&url).await);
    let dlq = js.stream_by_subject(dead_letters).await.unwrap();
    let dlq = js.get_stream(&dlq).await.unwrap();
    let stored = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(Event::from_json(&stored.payload).unwrap().id, second.id);
}

/// A message the server gives up on by itself (its handler's process died on the last
/// delivery) is announced by a MaxDeliveries advisory; another subscriber of the consumer
/// dead-letters and reports it.
#[tokio::test]
async fn jetstream_max_deliveries_advisory_is_dead_lettered_and_reported() {
    let url = nats_url();
    let mut config = js_config(&url);
    config.max_deliver = 1;
    config.ack_wait = Duration::from_millis(500);
    let dead_letters = unique("dlq");
    config.dead_letter_subject = Some(dead_letters.clone());
    let _guard = StreamGuard::new(&config);
    let _dlq_guard = StreamGuard {
        url: url.clone(),
        stream: format!("{}-DLQ", config.stream_name),
    };
    let mut dying_config = config.clone();
    // Its close gives up on the stuck handler quickly.
    dying_config.request_timeout = Duration::from_millis(500);
    let dying = connect(dying_config).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let st = started.clone();
    let _stuck = dying
        .subscribe_durable(
            "adv.*",
            "adv",
            Arc::new(move |_e: Arc<Event>| {
                let st = st.clone();
                async move {
                    st.notify_one();
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let doomed = event("adv.doomed", 1);
    dying.publish(doomed.clone()).await.unwrap();
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the handler started");

    let survivor = connect(config).await;
    let mut errors = survivor.errors();
    let (handler, _rx) = collector();
    let _sub = survivor
        .subscribe_durable("adv.*", "adv", Arc::new(sync_handler(handler)))
        .await
        .unwrap();
    // The process "dies" mid-handler: no ack, no nak, no term. Its close gives up on the
    // stuck handler after the drain bound and says so.
    let mut dying_errors = dying.errors();
    tokio::time::timeout(WAIT, dying.close())
        .await
        .expect("close is bounded")
        .unwrap();
    wait_error(&mut dying_errors, "Cancelled", |e| {
        e.kind == BusErrorKind::Cancelled
    })
    .await;

    let e = wait_error(&mut errors, "DeadLettered", |e| {
        e.kind == BusErrorKind::DeadLettered
    })
    .await;
    assert_eq!(e.event_id, Some(doomed.id), "{e}");
    let js = async_nats::jetstream::new(raw_client(&url).await);
    let dlq = js.stream_by_subject(dead_letters).await.unwrap();
    let dlq = js.get_stream(&dlq).await.unwrap();
    let stored = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(Event::from_json(&stored.payload).unwrap().id, doomed.id);
    survivor.close().await.unwrap();
}

/// The helper test the child process runs for [`kill_between_dead_letter_and_term`].
const POISON_CHILD: &str = "poison_subscriber_child_process";
/// The durable subscription's name (its consumer), in the child and in the parent.
const POISON_NAME: &str = "poison-service";
/// The library's test-only fail point between the dead letter's PubAck and the Term.
const AFTER_DEAD_LETTER: &str = "jetstream.after_dead_letter";

/// A JetStream configuration for the poison test: two deliveries, then a dead letter.
fn poison_config(mut config: NatsConfig, dead_letters: String) -> NatsConfig {
    config.max_deliver = 2;
    config.dead_letter_subject = Some(dead_letters);
    config
}

/// A handler that never digests anything, counting its calls.
fn always_fails(calls: Arc<AtomicUsize>) -> Arc<dyn eventflow::Handler> {
    Arc::new(sync_handler(move |_e: &Event| {
        calls.fetch_add(1, Ordering::SeqCst);
        Err("cannot digest".into())
    }))
}

#[tokio::test]
#[ignore = "the child process of the jetstream_*_killed_between_dead_letter_and_term_* tests"]
async fn poison_subscriber_child_process() {
    let Some(out) = child::child_out() else {
        return;
    };
    let mut config = js_config(&nats_url());
    config.subject_prefix = std::env::var("EF_POISON_PREFIX").unwrap();
    config.stream_name = std::env::var("EF_POISON_STREAM").unwrap();
    let config = poison_config(config, std::env::var("EF_POISON_DLQ").unwrap());
    let bus = connect(config).await;
    let _sub = bus
        .subscribe_with(
            &["poison.*"],
            SubscriptionOptions::named(POISON_NAME),
            always_fails(Arc::new(AtomicUsize::new(0))),
        )
        .await
        .unwrap();
    child::report(&out, child::READY);
    tokio::time::sleep(child::CHILD_LIFETIME).await;
}

/// The consumer of `stream` named [`POISON_NAME`], as the server sees it.
async fn poison_consumer(js: &async_nats::jetstream::Context, stream: &str) -> ConsumerInfo {
    let stream = js.get_stream(stream).await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(POISON_NAME).await.unwrap();
    consumer.info().await.unwrap().clone()
}

/// What the poison is in [`kill_between_dead_letter_and_term`].
#[derive(Clone, Copy, PartialEq)]
enum Poison {
    /// An event whose handler always fails: given up on at its last delivery (`max_deliver`),
    /// so the server never delivers it again; a takeover hears of it by the MaxDeliveries
    /// advisory.
    HandlerFails,
    /// Bytes that are no event: given up on at its first delivery, so the server redelivers
    /// it to a takeover after `ack_wait`, which dead-letters and terminates it.
    Undecodable,
}

/// A poison message whose process is killed (SIGKILL) after its dead letter was stored and
/// before the Term: the dead letter exists, with the message and why it was given up on; the
/// original was never terminated; a new subscriber of the same name dead-letters it again
/// (stored once: `Nats-Msg-Id` dedup), reports it, and nothing is left pending.
///
/// The child stops at the library's `jetstream.after_dead_letter` fail point (feature
/// `testing`, variable `EVENTFLOW_FAILPOINT`), which it announces on stderr.
async fn kill_between_dead_letter_and_term(poison: Poison) {
    let url = nats_url();
    let dead_letters = unique("dlq");
    let config = poison_config(js_config(&url), dead_letters.clone());
    let _guard = StreamGuard::new(&config);
    let _dlq_guard = StreamGuard {
        url: url.clone(),
        stream: format!("{}-DLQ", config.stream_name),
    };
    let stream = config.stream_name.clone();
    // Connected before the child runs, so that it takes over at once.
    let takeover = connect(config.clone()).await;
    let mut errors = takeover.errors();
    let js = async_nats::jetstream::new(raw_client(&url).await);
    let dlq_name = js.stream_by_subject(dead_letters.clone()).await.unwrap();

    let mut child = ChildProcess::spawn(
        POISON_CHILD,
        &[
            ("EF_POISON_PREFIX", config.subject_prefix.clone()),
            ("EF_POISON_STREAM", stream.clone()),
            ("EF_POISON_DLQ", dead_letters.clone()),
            ("EVENTFLOW_FAILPOINT", AFTER_DEAD_LETTER.to_owned()),
        ],
    );
    child.wait_ready(WAIT).await;
    let pill = event("poison.pill", 0);
    let garbage: &[u8] = b"{ not an event";
    match poison {
        Poison::HandlerFails => takeover.publish(pill.clone()).await.unwrap(),
        Poison::Undecodable => {
            let subject = takeover.subject_for("poison.pill");
            js.publish(subject, garbage.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    child
        .wait_stderr(&format!("fail point {AFTER_DEAD_LETTER} reached"), WAIT)
        .await;
    child.kill();

    // The dead letter is stored, with the message and why it was given up on.
    let mut dlq = js.get_stream(&dlq_name).await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().state.messages,
        1,
        "the dead letter"
    );
    let stored = dlq.get_raw_message(1).await.unwrap();
    let header = |name: &str| {
        stored
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("the dead letter has no {name} header"))
            .as_str()
            .to_owned()
    };
    let deliveries = match poison {
        Poison::HandlerFails => {
            assert_eq!(Event::from_json(&stored.payload).unwrap().id, pill.id);
            assert!(header("Eventflow-Error").contains("cannot digest"));
            2
        }
        Poison::Undecodable => {
            assert_eq!(&stored.payload[..], garbage);
            assert!(header("Eventflow-Error").contains("undecodable"));
            1
        }
    };
    assert_eq!(header("Eventflow-Deliveries"), deliveries.to_string());
    assert_eq!(
        header("Eventflow-Subject"),
        takeover.subject_for("poison.pill")
    );
    assert_eq!(header("Eventflow-Consumer"), POISON_NAME);
    assert_eq!(header("Eventflow-Stream-Sequence"), "1");
    assert_eq!(header("Nats-Msg-Id"), format!("{POISON_NAME}:1"));
    // The original was delivered and never terminated: still pending, nothing acknowledged.
    let info = poison_consumer(&js, &stream).await;
    assert_eq!(info.delivered.stream_sequence, 1, "{info:?}");
    assert_eq!(info.num_redelivered, deliveries - 1, "{info:?}");
    assert_eq!(info.num_ack_pending, 1, "not pending: terminated? {info:?}");
    assert_eq!(info.ack_floor.stream_sequence, 0, "acknowledged? {info:?}");

    // A new subscriber of the same name takes over and dead-letters the message again.
    let calls = Arc::new(AtomicUsize::new(0));
    let _sub = takeover
        .subscribe_with(
            &["poison.*"],
            SubscriptionOptions::named(POISON_NAME),
            always_fails(calls.clone()),
        )
        .await
        .unwrap();
    let e = match poison {
        // Its deliveries are used up: the server gives up on it and says so.
        Poison::HandlerFails => {
            let e = wait_error(&mut errors, "DeadLettered", |e| {
                e.kind == BusErrorKind::DeadLettered
            })
            .await;
            assert_eq!(e.event_id, Some(pill.id), "{e}");
            e
        }
        // Redelivered after ack_wait, dead-lettered and terminated.
        Poison::Undecodable => {
            wait_error(&mut errors, "Decode", |e| e.kind == BusErrorKind::Decode).await
        }
    };
    // Reported after its PubAck: the second dead letter was a duplicate, stored once.
    assert_eq!(
        dlq.info().await.unwrap().state.messages,
        1,
        "a duplicate dead letter ({e})"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let info = poison_consumer(&js, &stream).await;
        // Terminated: acknowledged. Given up on by the server: out of pending, yet not
        // acknowledged (nats-server 2.9 leaves its ack floor behind it).
        let settled = match poison {
            Poison::HandlerFails => true,
            Poison::Undecodable => info.ack_floor.stream_sequence == 1,
        };
        if settled && info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {info:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "delivered to a handler again"
    );
    takeover.close().await.unwrap();
}

/// [`kill_between_dead_letter_and_term`] with a handler that always fails.
#[tokio::test]
async fn jetstream_poison_killed_between_dead_letter_and_term_keeps_the_dead_letter() {
    kill_between_dead_letter_and_term(Poison::HandlerFails).await;
}

/// [`kill_between_dead_letter_and_term`] with bytes that are no event: the takeover gets the
/// redelivery and terminates it.
#[tokio::test]
async fn jetstream_undecodable_killed_between_dead_letter_and_term_is_terminated_on_redelivery() {
    kill_between_dead_letter_and_term(Poison::Undecodable).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_a_new_subscription_starts_at_new_events() {
    let url = nats_url();
    for config in [core_config(&url), js_config(&url)] {
        let _guard = StreamGuard::new(&config);
        let bus = connect(config).await;
        let (h, mut rx) = collector();
        let sub = bus.on("a.*", sync_handler(h)).await.unwrap();
        bus.publish(event("a.one", 1)).await.unwrap();
        recv_n(&mut rx, 1, "before unsubscribe").await;
        sub.unsubscribe();
        bus.publish(event("a.two", 2)).await.unwrap();

        let (h, mut rx2) = collector();
        let _sub2 = bus.on("a.*", sync_handler(h)).await.unwrap();
        let third = event("a.three", 3);
        bus.publish(third.clone()).await.unwrap();
        assert_eq!(
            recv_n(&mut rx2, 1, "new subscription").await[0].id,
            third.id
        );
        // The first handler saw nothing after unsubscribe returned.
        assert!(rx.try_recv().is_err());
        bus.close().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// faults (private servers)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_reconnects_after_server_restart_and_reports_status_transitions() {
    let mut server = NatsServer::start();
    let bus = connect(core_config(&server.url())).await;
    let mut errors = bus.errors();
    assert_eq!(bus.status(), NatsStatus::Connected);
    let (h, mut rx) = collector();
    bus.on("ping.*", sync_handler(h)).await.unwrap().detach();

    server.kill();
    wait_status(&bus, "not connected", |s| s != NatsStatus::Connected).await;
    assert!(!bus.is_connected());
    wait_error(&mut errors, "Disconnected", |e| {
        e.kind == BusErrorKind::Disconnected
    })
    .await;

    tokio::task::block_in_place(|| server.restart());
    wait_status(&bus, "connected", |s| s == NatsStatus::Connected).await;
    wait_error(&mut errors, "Reconnected", |e| {
        e.kind == BusErrorKind::Reconnected
    })
    .await;

    // The subscription was restored with the connection.
    let ping = event("ping.sent", 1);
    bus.publish(ping.clone()).await.unwrap();
    assert_eq!(recv_n(&mut rx, 1, "after reconnect").await[0].id, ping.id);
    bus.close().await.unwrap();
    assert_eq!(bus.status(), NatsStatus::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_after_max_reconnects_is_reported_and_status_is_closed() {
    let mut server = NatsServer::start();
    let mut config = core_config(&server.url());
    config.max_reconnects = Some(2);
    config.reconnect_wait = Duration::from_millis(20);
    let bus = connect(config).await;
    let mut errors = bus.errors();
    server.kill();
    wait_error(&mut errors, "giving up", |e| {
        e.kind == BusErrorKind::Disconnected && e.message.contains("gave up")
    })
    .await;
    wait_status(&bus, "closed", |s| s == NatsStatus::Closed).await;
    assert!(bus.publish(event("a.b", 1)).await.is_err());
}

/// 10,000 events to JetStream while the server is killed with SIGKILL (twice) and restarted:
/// every event whose publish was acknowledged is delivered (duplicates allowed, loss not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_kill_9_loses_no_acknowledged_event() {
    const TOTAL: usize = 10_000;
    const CHUNK: usize = 50;
    let mut server = NatsServer::start();
    let mut config = js_config(&server.url());
    config.request_timeout = Duration::from_secs(2);
    config.ack_wait = Duration::from_secs(2);

    let subscriber = connect(config.clone()).await;
    let received = Arc::new(Mutex::new(HashSet::<Uuid>::new()));
    let deliveries = Arc::new(AtomicUsize::new(0));
    {
        let received = received.clone();
        let deliveries = deliveries.clone();
        subscriber
            .on(
                "load.*",
                sync_handler(move |e: &Event| {
                    deliveries.fetch_add(1, Ordering::Relaxed);
                    received.lock().unwrap().insert(e.id);
                    Ok(())
                }),
            )
            .await
            .unwrap()
            .detach();
    }

    let publisher = connect(config).await;
    let acked = Arc::new(Mutex::new(Vec::<Uuid>::with_capacity(TOTAL)));
    let failures = Arc::new(AtomicUsize::new(0));
    let publishing = {
        let acked = acked.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            for chunk in 0..TOTAL / CHUNK {
                let batch: Vec<Event> = (0..CHUNK)
                    .map(|i| event("load.tick", (chunk * CHUNK + i) as u64))
                    .collect();
                // Retry the same events (same ids: the duplicate window stores them once)
                // until acknowledged.
                loop {
                    match publisher.publish_batch(batch.clone()).await {
                        Ok(()) => break,
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            assert!(Instant::now() < deadline, "publishing never recovered");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acked.lock().unwrap().extend(batch.iter().map(|e| e.id));
            }
            publisher
        })
    };

    for kill_at in [TOTAL / 4, TOTAL * 2 / 3] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < kill_at {
            assert!(Instant::now() < deadline, "publisher stalled before kill");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| server.restart());
    }
    let publisher = tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("publisher did not finish")
        .unwrap();

    let acked: Vec<Uuid> = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), TOTAL);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let got = received.lock().unwrap();
            acked.iter().filter(|id| !got.contains(id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged events never delivered ({} publish retries)",
            failures.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "kill -9 test: {TOTAL} acknowledged, {} deliveries ({} duplicates), {} publish retries",
        deliveries.load(Ordering::Relaxed),
        deliveries.load(Ordering::Relaxed) - TOTAL,
        failures.load(Ordering::Relaxed)
    );
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_publish_while_server_down_is_an_error_not_a_silent_drop() {
    let mut server = NatsServer::start();
    let mut config = js_config(&server.url());
    config.request_timeout = Duration::from_millis(500);
    let bus = connect(config).await;
    bus.publish(event("x.y", 1)).await.unwrap();
    server.kill();
    wait_status(&bus, "not connected", |s| s != NatsStatus::Connected).await;
    match bus.publish(event("x.y", 2)).await {
        Err(Error::Timeout { .. }) | Err(Error::Backend { .. }) => {}
        other => panic!("publish with the server down must fail, got {other:?}"),
    }
    tokio::task::block_in_place(|| server.restart());
    wait_status(&bus, "connected", |s| s == NatsStatus::Connected).await;
    let deadline = Instant::now() + WAIT;
    // JetStream may need a moment after the restart before it answers.
    while bus.publish(event("x.y", 3)).await.is_err() {
        assert!(Instant::now() < deadline, "publish never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Named subscriptions across processes (issue 11): the name is the durable consumer, the
// pattern only a filter

/// The helper test a second process runs for [`one_name_in_two_processes_splits_the_events`].
const SPLIT_CHILD: &str = "named_subscription_second_process";

#[tokio::test]
#[ignore = "the second process of one_name_in_two_processes_splits_the_events"]
async fn named_subscription_second_process() {
    let Some(out) = child::child_out() else {
        return;
    };
    let mut config = js_config(&nats_url());
    config.subject_prefix = std::env::var("EF_SPLIT_PREFIX").unwrap();
    config.stream_name = std::env::var("EF_SPLIT_STREAM").unwrap();
    let bus = connect(config).await;
    let o = out.clone();
    let _sub = bus
        .subscribe_with(
            &["split.*"],
            SubscriptionOptions::named("split-service"),
            Arc::new(sync_handler(move |e| {
                child::report(&o, &e.id.to_string());
                Ok(())
            })),
        )
        .await
        .unwrap();
    child::report(&out, child::READY);
    tokio::time::sleep(child::CHILD_LIFETIME).await;
}

/// A set of event ids, filled by a handler.
#[tokio::test]
async fn one_name_in_two_processes_splits_the_events() {
    let config = js_config(&nats_url());
    let _guard = StreamGuard::new(&config);
    let bus = connect(config.clone()).await;
    let (mine, handler) = child::id_collector();
    let _shared = bus
        .subscribe_with(
            &["split.*"],
            SubscriptionOptions::named("split-service"),
            handler,
        )
        .await
        .unwrap();
    // Another service on the same pattern, with the same configuration: its own consumer,
    // every event.
    let other_bus = connect(config.clone()).await;
    let (other, handler) = child::id_collector();
    let _other = other_bus
        .subscribe_with(
            &["split.*"],
            SubscriptionOptions::named("other-service"),
            handler,
        )
        .await
        .unwrap();
    let mut second = ChildProcess::spawn(
        SPLIT_CHILD,
        &[
            ("EF_SPLIT_PREFIX", config.subject_prefix.clone()),
            ("EF_SPLIT_STREAM", config.stream_name.clone()),
        ],
    );
    second.wait_ready(WAIT).await;
    child::publish_and_check_split(&bus, &mine, &second, &other, WAIT).await;
}

#[tokio::test]
async fn a_name_bound_to_other_patterns_is_refused() {
    let config = js_config(&nats_url());
    let _guard = StreamGuard::new(&config);
    let bus = connect(config).await;
    let (_, handler) = child::id_collector();
    let _first = bus
        .subscribe_with(
            &["name.a.*"],
            SubscriptionOptions::named("bound"),
            handler.clone(),
        )
        .await
        .unwrap();
    // Binding the same durable consumer to other patterns would miss their events in silence.
    let refused = bus
        .subscribe_with(&["name.b.*"], SubscriptionOptions::named("bound"), handler)
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(ref m)) if m.contains("bound")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn core_subscribers_with_one_name_split_the_events() {
    let config = core_config(&nats_url());
    let (a, b) = (connect(config.clone()).await, connect(config.clone()).await);
    let (seen_a, handler_a) = child::id_collector();
    let (seen_b, handler_b) = child::id_collector();
    let _a = a
        .subscribe_with(&["q.*"], SubscriptionOptions::named("workers"), handler_a)
        .await
        .unwrap();
    let _b = b
        .subscribe_with(&["q.*"], SubscriptionOptions::named("workers"), handler_b)
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for i in 0..100 {
        let event = Event::new("q.job", json!({ "n": i })).unwrap();
        ids.insert(event.id.to_string());
        a.publish(event).await.unwrap();
    }
    a.flush().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (x, y) = (
            seen_a.lock().unwrap().clone(),
            seen_b.lock().unwrap().clone(),
        );
        let all: HashSet<String> = x.union(&y).cloned().collect();
        if ids.is_subset(&all) {
            assert_eq!(x.intersection(&y).count(), 0, "an event went to both");
            assert!(
                !x.is_empty() && !y.is_empty(),
                "the queue group did not split"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{} of 100 arrived", all.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
